#!/usr/bin/env node
// Runs every test file with node's own test runner (through tsx for TypeScript).
// Usage: node scripts/test.mjs [file-or-substring ...]
// scripts/preflight.mjs runs first: it finds (or installs) Chromium and the
// sqlite3 CLI, and stops with one line saying what to install when it cannot.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { preflight } from './preflight.mjs';

const root = new URL('..', import.meta.url).pathname;
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.test.ts')) files.push(relative(root, path));
  }
};
walk(join(root, 'test'));
const filters = process.argv.slice(2);
const selected = filters.length ? files.filter((file) => filters.some((filter) => file.includes(filter))) : files;
selected.sort();
if (!selected.length) {
  // `node --test` with no file would run every test it can find instead.
  console.error(`rhtmx-sync tests: no test file matches ${filters.join(' ')}`);
  process.exit(1);
}
const checked = await preflight();
if (!checked.ok) process.exit(1);
const result = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    '--test-reporter=spec',
    `--test-concurrency=${process.env.TEST_CONCURRENCY ?? 2}`,
    // A hung test fails after 3 minutes instead of eating the CI budget.
    '--test-timeout=180000',
    ...selected,
  ],
  { cwd: root, stdio: 'inherit', env: { ...process.env, ...checked.env } },
);
process.exit(result.status ?? 1);
