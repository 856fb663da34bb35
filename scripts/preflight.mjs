#!/usr/bin/env node
// What the test suite needs from the machine, checked before any test runs:
// - headless Chromium for the browser tests ($CHROMIUM_PATH when set, else
//   /usr/bin/chromium, else chromium on PATH);
// - the sqlite3 CLI, which test/demo.test.ts writes with "from another tool";
// - PostgreSQL answering on 127.0.0.1:5432 (or $RHTMX_TEST_PG_URL).
// A missing Chromium or sqlite3 is installed with apt-get when running as root
// on a machine that has it (RHTMX_NO_INSTALL=1 forbids that); otherwise the
// check stops with one line saying what to install and exit code 1. PostgreSQL
// is a service, not installed here: when it does not answer, one warning line
// is printed and the PostgreSQL tests fail with the same message.
// Usage: node scripts/preflight.mjs (scripts/test.mjs runs it first).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const PREFIX = 'rhtmx-sync tests:';
const DEFAULT_CHROMIUM = '/usr/bin/chromium';
const DEFAULT_PG_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

function isExecutableFile(path) {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** First executable `name` on $PATH, or null. */
function onPath(name, env) {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return null;
}

/** Where the browser tests will find Chromium, and where we looked. */
function findChromium(env) {
  const configured = env.CHROMIUM_PATH;
  if (configured) {
    // The browser tests launch exactly this path, so it is the only place that counts.
    const path = isAbsolute(configured) ? configured : resolve(configured);
    return { path: isExecutableFile(path) ? path : null, looked: `$CHROMIUM_PATH=${configured}`, configured: true };
  }
  const path = isExecutableFile(DEFAULT_CHROMIUM) ? DEFAULT_CHROMIUM : (onPath('chromium', env) ?? onPath('chromium-browser', env));
  return { path, looked: `$CHROMIUM_PATH (unset), ${DEFAULT_CHROMIUM}, chromium on PATH`, configured: false };
}

function findTools(env) {
  return { chromium: findChromium(env), sqlite3: onPath('sqlite3', env) };
}

/** Debian packages that would provide what is missing (a wrong $CHROMIUM_PATH is not fixed by installing). */
function missingPackages(tools) {
  const packages = [];
  if (!tools.chromium.path && !tools.chromium.configured) packages.push('chromium');
  if (!tools.sqlite3) packages.push('sqlite3');
  return packages;
}

/** Why an install is not attempted, or null when it may be. */
function whyNoInstall(env) {
  const why =
    env.RHTMX_NO_INSTALL === '1'
      ? 'RHTMX_NO_INSTALL=1'
      : typeof process.getuid !== 'function' || process.getuid() !== 0
        ? 'not running as root'
        : !onPath('apt-get', env)
          ? 'no apt-get on PATH'
          : null;
  return why && `not installed automatically: ${why}`;
}

function apt(args, env) {
  const result = spawnSync(onPath('apt-get', env) ?? 'apt-get', args, {
    env: { ...env, DEBIAN_FRONTEND: 'noninteractive' },
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  return { ok: result.status === 0, error: (result.stderr || result.error?.message || `exit ${result.status}`).trim() };
}

/** apt-get update + install; returns an error text or null. */
function install(packages, env) {
  console.error(`${PREFIX} installing ${packages.join(' ')} with apt-get (set RHTMX_NO_INSTALL=1 to forbid this)`);
  const update = apt(['update', '-qq'], env);
  // A failed update (offline mirror) may still leave usable package lists: try the install anyway.
  const installed = apt(['install', '-y', '-qq', ...packages], env);
  if (installed.ok) return null;
  const last = (text) => text.split('\n').filter(Boolean).pop() ?? '';
  return update.ok ? last(installed.error) : `${last(update.error)}; ${last(installed.error)}`;
}

/** The one line saying what is missing and how to get it. */
function missingLine(tools, note) {
  const problems = [];
  const packages = [];
  if (!tools.chromium.path) {
    problems.push(`Chromium not found (looked at ${tools.chromium.looked})`);
    packages.push('chromium');
  }
  if (!tools.sqlite3) {
    problems.push('the sqlite3 CLI not found (looked at sqlite3 on PATH)');
    packages.push('sqlite3');
  }
  let line = `${PREFIX} ${problems.join('; ')}; install ${packages.length > 1 ? 'them' : 'it'} with: apt-get install ${packages.join(' ')}`;
  if (tools.chromium.configured && !tools.chromium.path) line += ' (and unset CHROMIUM_PATH, or point it at a Chromium binary)';
  if (note) line += ` [${note}]`;
  return line;
}

function pgTarget(env) {
  try {
    const url = new URL(env.RHTMX_TEST_PG_URL || DEFAULT_PG_URL);
    if (!url.hostname) return null; // a Unix socket: nothing to dial here
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 5432) };
  } catch {
    return null;
  }
}

function canConnect(host, port, timeoutMs = 2000) {
  return new Promise((done) => {
    const socket = net.connect({ host, port });
    const finish = (ok) => {
      socket.destroy();
      done(ok);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/** The Debian command that starts the local cluster. */
export function pgStartHint() {
  let versions = [];
  try {
    versions = readdirSync('/etc/postgresql').sort((a, b) => Number(b) - Number(a));
  } catch {}
  return versions.length
    ? `pg_ctlcluster ${versions[0]} main start`
    : 'apt-get install postgresql, then pg_ctlcluster <version> main start';
}

/**
 * Check (and where allowed install) what the tests need. Prints only problems.
 * Returns ok=false when the suite cannot run; env holds variables for the test runner.
 */
export async function preflight(env = process.env) {
  let tools = findTools(env);
  let packages = missingPackages(tools);
  let note = null;
  if (packages.length) {
    note = whyNoInstall(env);
    if (!note) {
      const error = install(packages, env);
      tools = findTools(env);
      packages = missingPackages(tools);
      if (error) note = `apt-get install ${packages.join(' ')} failed: ${error}`;
    }
  }
  if (!tools.chromium.path || !tools.sqlite3) {
    console.error(missingLine(tools, note));
    return { ok: false, env: {} };
  }

  const target = pgTarget(env);
  if (target && !(await canConnect(target.host, target.port))) {
    console.error(
      `${PREFIX} warning: PostgreSQL is not answering on ${target.host}:${target.port}: start it (Debian: ${pgStartHint()}); the PostgreSQL tests will fail`,
    );
  }
  // Every browser test (and the soak) launches $CHROMIUM_PATH when set: hand it the one found.
  return { ok: true, env: { CHROMIUM_PATH: tools.chromium.path } };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { ok } = await preflight();
  process.exit(ok ? 0 : 1);
}
