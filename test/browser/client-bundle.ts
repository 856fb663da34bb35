/**
 * Bundles the browser client from src/client with the options
 * scripts/build.mjs uses, into a private temp folder per test process: test
 * files run in parallel and must never read a half-written dist/ file.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BuildOptions, build } from 'esbuild';

export const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

let clientDir: Promise<string> | null = null;

/** The folder holding a fresh `rhtmx-sync.js` (IIFE), `rhtmx-sync.esm.js` and `rhtmx-sw.js`, built once per process. */
export function buildClient(): Promise<string> {
  clientDir ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rhtmx-client-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const options: BuildOptions = { bundle: true, minify: true, target: ['es2020'], legalComments: 'none', logLevel: 'warning' };
    await build({ ...options, entryPoints: [join(root, 'src/client/index.ts')], outfile: join(dir, 'rhtmx-sync.js'), format: 'iife' });
    await build({ ...options, entryPoints: [join(root, 'src/client/esm.ts')], outfile: join(dir, 'rhtmx-sync.esm.js'), format: 'esm' });
    await build({ ...options, entryPoints: [join(root, 'src/client/sw.ts')], outfile: join(dir, 'rhtmx-sw.js'), format: 'iife' });
    return dir;
  })();
  return clientDir;
}
