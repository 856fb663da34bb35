/**
 * Size budget of the field client (`/api/sync/field-client.js`, the whole
 * entity client plus `window.RHTMXFieldSync`): at most 11 KiB gzipped (zlib
 * level 9, what ClientAssets serves; 9,163 bytes once it shared the entity
 * client's outbox flusher, request/reply helper and error class instead of
 * copying them; 9,605 with the outbox's exactly-once identity; 10,078 with the streamed pull reader; 10,703 with live HTML), on a fresh bundle of src/client and on dist/client when it
 * has been built. The field code must stay out of client.js, so pages that
 * do not use it never pay for it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { buildClient, root } from './browser/client-bundle.js';

const BUDGET = 11 * 1024;

const gzipSize = (code: Uint8Array) => gzipSync(code, { level: 9 }).byteLength;

/** A fresh rhtmx-field.js with the options scripts/build.mjs uses, in a private temp folder. */
async function buildFieldClient(): Promise<Uint8Array> {
  const dir = mkdtempSync(join(tmpdir(), 'rhtmx-field-size-'));
  try {
    const outfile = join(dir, 'rhtmx-field.js');
    await build({
      entryPoints: [join(root, 'src/client/field-index.ts')],
      outfile,
      bundle: true,
      minify: true,
      target: ['es2020'],
      format: 'iife',
      legalComments: 'none',
      logLevel: 'warning',
    });
    return readFileSync(outfile);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test(`rhtmx-field.js is at most ${BUDGET} bytes gzipped and self-contained`, async (t) => {
  const code = await buildFieldClient();
  const size = gzipSize(code);
  t.diagnostic(`rhtmx-field.js: ${code.byteLength} bytes, ${size} bytes gzipped`);
  assert.ok(size <= BUDGET, `field-client.js is ${size} bytes gzipped, over the ${BUDGET}-byte budget`);
  const text = Buffer.from(code).toString('utf8');
  assert.doesNotMatch(
    text,
    /\brequire\(|\bimport\s*\(|from\s*["']node:|\bBuffer\b|\bprocess\./,
    'rhtmx-field.js must not depend on anything',
  );
  assert.match(text, /RHTMXFieldSync/, 'it sets window.RHTMXFieldSync');
  assert.match(text, /rhtmxSync/, 'it runs the entity client too');

  const built = join(root, 'dist/client/rhtmx-field.js');
  if (existsSync(built)) {
    const builtSize = gzipSize(readFileSync(built));
    t.diagnostic(`dist/client/rhtmx-field.js: ${builtSize} bytes gzipped`);
    assert.ok(builtSize <= BUDGET, `dist/client/rhtmx-field.js is ${builtSize} bytes gzipped, over the ${BUDGET}-byte budget`);
  }
});

test('client.js carries none of the field code', async (t) => {
  const entity = readFileSync(join(await buildClient(), 'rhtmx-sync.js'));
  const field = await buildFieldClient();
  t.diagnostic(`field code: ${gzipSize(field) - gzipSize(entity)} bytes gzipped on top of client.js`);
  const text = entity.toString('utf8');
  for (const marker of ['RHTMXFieldSync', 'rhtmx:field-outbox', 'push_fields', 'field-sync']) {
    assert.ok(!text.includes(marker), `client.js contains ${JSON.stringify(marker)}`);
  }
});

test('the field client reuses the entity client’s flusher, request/reply helper and refusal list', async () => {
  const text = Buffer.from(await buildFieldClient()).toString('utf8');
  for (const marker of ['push failed, retrying', 'push answer without a result', 'no reply', 'unknown_column']) {
    assert.equal(text.split(marker).length - 1, 1, `${JSON.stringify(marker)} appears once in rhtmx-field.js`);
  }
});
