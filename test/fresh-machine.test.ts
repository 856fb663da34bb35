/**
 * Issue 13: the README's test command on a fresh machine. scripts/preflight.mjs
 * (run by scripts/test.mjs before any test file) must stop at once with one
 * clear line when Chromium or the sqlite3 CLI is missing and cannot be
 * installed, instead of a wall of browser test failures; on this machine it
 * passes. Chromium is hidden with CHROMIUM_PATH=/nonexistent and a PATH that
 * holds only `node`; RHTMX_NO_INSTALL=1 keeps apt-get out of it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PREFLIGHT = join(ROOT, 'scripts/preflight.mjs');
const TEST_RUNNER = join(ROOT, 'scripts/test.mjs');

interface Run {
  status: number | null;
  output: string;
  lines: string[];
}

function run(script: string, args: string[], env: Record<string, string | undefined>): Run {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env };
  // Inherited from this test's runner, it would turn a nested `node --test` into a silent child.
  delete childEnv.NODE_TEST_CONTEXT;
  for (const [key, value] of Object.entries(childEnv)) if (value === undefined) delete childEnv[key];
  const result = spawnSync(process.execPath, [script, ...args], { cwd: ROOT, env: childEnv, encoding: 'utf8', timeout: 30_000 });
  const output = `${result.stdout}${result.stderr}`;
  return { status: result.status, output, lines: output.split('\n').filter((line) => line.trim()) };
}

describe('a fresh machine (no Chromium, no sqlite3 CLI)', () => {
  // A PATH with only node on it: no chromium, no sqlite3, no apt-get.
  const bin = mkdtempSync(join(tmpdir(), 'rhtmx-fresh-'));
  symlinkSync(process.execPath, join(bin, 'node'));
  const fresh = { PATH: bin, CHROMIUM_PATH: '/nonexistent', RHTMX_NO_INSTALL: '1' };
  after(() => rmSync(bin, { recursive: true, force: true }));

  test('the preflight stops with one line naming chromium and sqlite3 and how to install them', () => {
    const { status, output, lines } = run(PREFLIGHT, [], fresh);
    assert.notEqual(status, 0, output);
    assert.equal(lines.length, 1, `expected exactly one line:\n${output}`);
    const [line] = lines as [string];
    assert.match(line, /^rhtmx-sync tests: Chromium not found \(looked at \$CHROMIUM_PATH=\/nonexistent\)/);
    assert.match(line, /sqlite3 CLI not found/);
    assert.match(line, /install them with: apt-get install chromium sqlite3/);
    assert.match(line, /RHTMX_NO_INSTALL=1/, 'says why nothing was installed');
  });

  test('the test command runs no test file: one line, exit 1, no wall of browser failures', () => {
    const { status, output, lines } = run(TEST_RUNNER, ['browser-htmx'], fresh);
    assert.equal(status, 1, output);
    assert.equal(lines.length, 1, `expected exactly one line:\n${output}`);
    assert.match(output, /Chromium not found .*install them with: apt-get install chromium sqlite3/);
    assert.doesNotMatch(output, /not ok|ℹ tests|✖|browserType\.launch/);
  });

  test('only the sqlite3 CLI missing: the line names sqlite3 alone', () => {
    // Something executable where CHROMIUM_PATH points: the preflight checks presence, it does not launch it.
    const fakeChromium = join(bin, 'fake-chromium');
    writeFileSync(fakeChromium, '#!/bin/sh\nexit 0\n');
    chmodSync(fakeChromium, 0o755);
    const { status, output, lines } = run(PREFLIGHT, [], { ...fresh, CHROMIUM_PATH: fakeChromium });
    assert.equal(status, 1, output);
    assert.equal(lines.length, 1, output);
    assert.match(output, /the sqlite3 CLI not found \(looked at sqlite3 on PATH\); install it with: apt-get install sqlite3/);
    assert.doesNotMatch(output, /Chromium/);
  });

  describe('as root with apt-get (a fake one on PATH: nothing is really installed)', () => {
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    const skip = !root && 'the preflight installs only as root';

    function fakeMachine(installs: boolean): { env: Record<string, string | undefined>; log: string; dir: string } {
      const dir = mkdtempSync(join(tmpdir(), 'rhtmx-apt-'));
      symlinkSync(process.execPath, join(dir, 'node'));
      const chromium = join(dir, 'fake-chromium');
      writeFileSync(chromium, '#!/bin/sh\nexit 0\n');
      chmodSync(chromium, 0o755);
      const log = join(dir, 'apt.log');
      // Logs its calls; `install` puts an executable sqlite3 on PATH (or fails like an offline mirror).
      const install = installs
        ? `printf '#!/bin/sh\\n' > "${dir}/sqlite3" && /bin/chmod 755 "${dir}/sqlite3"`
        : `echo "E: Unable to locate package sqlite3" >&2; exit 100`;
      writeFileSync(
        join(dir, 'apt-get'),
        `#!/bin/sh\necho "$DEBIAN_FRONTEND $*" >> "${log}"\nif [ "$1" = install ]; then ${install}; fi\nexit 0\n`,
      );
      chmodSync(join(dir, 'apt-get'), 0o755);
      return { env: { PATH: dir, CHROMIUM_PATH: chromium, RHTMX_NO_INSTALL: undefined }, log, dir };
    }

    test('installs what is missing: apt-get update -qq, then install -y -qq, non-interactive', { skip }, () => {
      const machine = fakeMachine(true);
      try {
        const { status, output } = run(PREFLIGHT, [], machine.env);
        assert.equal(status, 0, output);
        assert.match(output, /installing sqlite3 with apt-get/);
        assert.deepEqual(readFileSync(machine.log, 'utf8').trim().split('\n'), [
          'noninteractive update -qq',
          'noninteractive install -y -qq sqlite3',
        ]);
      } finally {
        rmSync(machine.dir, { recursive: true, force: true });
      }
    });

    test('a failed install: one line with the error of apt-get and what to install', { skip }, () => {
      const machine = fakeMachine(false);
      try {
        const { status, output } = run(PREFLIGHT, [], machine.env);
        assert.equal(status, 1, output);
        const lines = output.split('\n').filter((line) => line.trim() && !line.includes('installing sqlite3'));
        assert.equal(lines.length, 1, output);
        assert.match(
          lines[0] ?? '',
          /sqlite3 CLI not found .*apt-get install sqlite3 \[apt-get install sqlite3 failed: E: Unable to locate package sqlite3\]/,
        );
      } finally {
        rmSync(machine.dir, { recursive: true, force: true });
      }
    });

    test('RHTMX_NO_INSTALL=1 forbids it', { skip }, () => {
      const machine = fakeMachine(true);
      try {
        const { status, output } = run(PREFLIGHT, [], { ...machine.env, RHTMX_NO_INSTALL: '1' });
        assert.equal(status, 1, output);
        assert.throws(() => readFileSync(machine.log), /ENOENT/, 'apt-get was not called');
      } finally {
        rmSync(machine.dir, { recursive: true, force: true });
      }
    });
  });
});

describe('this machine', () => {
  test('the preflight passes with the real environment', () => {
    // Chromium and sqlite3 are installed (npm test's own preflight made sure); nothing is installed here.
    const { status, output } = run(PREFLIGHT, [], { RHTMX_NO_INSTALL: '1' });
    assert.equal(status, 0, output);
    assert.doesNotMatch(output, /not found/);
  });

  test('PostgreSQL not answering: a warning line once, and the preflight still passes', () => {
    const { status, output } = run(PREFLIGHT, [], { RHTMX_NO_INSTALL: '1', RHTMX_TEST_PG_URL: 'postgres://postgres@127.0.0.1:1/postgres' });
    assert.equal(status, 0, output);
    const warnings = output.split('\n').filter((line) => line.includes('PostgreSQL'));
    assert.equal(warnings.length, 1, output);
    assert.match(
      warnings[0] ?? '',
      /warning: PostgreSQL is not answering on 127\.0\.0\.1:1: start it \(Debian: .*\); the PostgreSQL tests will fail/,
    );
  });

  test('PostgreSQL not answering: the PostgreSQL tests fail with that one line (no skip)', () => {
    const { status, output } = createTestDatabaseWithoutServer();
    assert.notEqual(status, 0, output);
    assert.match(output, /^PostgreSQL is not answering on 127\.0\.0\.1:1: start it \(Debian: [^)\n]+\)$/m);
  });
});

/** createTestDatabase() (what every PostgreSQL test starts with) against a port nothing listens on. */
function createTestDatabaseWithoutServer(): Run {
  const code = `import('./test/pg-helpers.ts').then((m) => m.createTestDatabase()).then(
    () => process.exit(0),
    (error) => { console.error(String(error.stack)); process.exit(1); })`;
  const env: Record<string, string | undefined> = { ...process.env, RHTMX_TEST_PG_URL: 'postgres://postgres@127.0.0.1:1/postgres' };
  delete env.NODE_TEST_CONTEXT;
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT,
    env,
    encoding: 'utf8',
    timeout: 30_000,
  });
  const output = `${result.stdout}${result.stderr}`;
  return { status: result.status, output, lines: output.split('\n').filter((line) => line.trim()) };
}
