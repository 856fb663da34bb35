#!/usr/bin/env node
// Builds the browser client (esbuild, one dependency-free file per entry) and,
// unless --client-only, the server library (tsc) into dist/.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const clientOnly = process.argv.includes('--client-only');
const out = join(root, 'dist/client');
mkdirSync(out, { recursive: true });

const browser = { bundle: true, minify: true, target: ['es2020'], legalComments: 'none', logLevel: 'warning' };
const entries = [
  { entry: 'src/client/index.ts', outfile: 'rhtmx-sync.js', format: 'iife' },
  { entry: 'src/client/esm.ts', outfile: 'rhtmx-sync.esm.js', format: 'esm' },
  { entry: 'src/client/sw.ts', outfile: 'rhtmx-sw.js', format: 'iife' },
  // The seed's field-client.js: the whole client plus window.RHTMXFieldSync (its own size budget).
  { entry: 'src/client/field-index.ts', outfile: 'rhtmx-field.js', format: 'iife' },
];
for (const { entry, outfile, format } of entries) {
  if (!existsSync(join(root, entry))) continue;
  await build({ ...browser, entryPoints: [join(root, entry)], outfile: join(out, outfile), format, sourcemap: format === 'esm' });
}

if (!clientOnly) {
  const tsc = (...args) => execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), ...args], { stdio: 'inherit' });
  // The server library with declarations.
  tsc('-p', join(root, 'tsconfig.build.json'));
  // Declarations of the typed ESM client (`rhtmx-sync/client`).
  tsc(
    '-p',
    join(root, 'src/client/tsconfig.json'),
    '--noEmit',
    'false',
    '--declaration',
    '--emitDeclarationOnly',
    '--outDir',
    join(out, 'types'),
  );
}
