/**
 * Size budget: the script-tag client (`/api/sync/client.js`) stays at or
 * under 9 KiB gzipped (zlib level 9, what ClientAssets serves; 7,082 bytes
 * when the entity and field clients came to share one flusher, one
 * request/reply helper and one error class; 7,516 once the outbox kept its
 * exactly-once identity and recovered from `client_unknown`; 8,015 with the
 * streamed pull reader; 8,635 with live HTML's fragment swaps). Measured on a fresh bundle of
 * src/client, and on dist/client when it has been built.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { buildClient, root } from './browser/client-bundle.js';

const BUDGET = 9 * 1024;

const gzipSize = (path: string) => gzipSync(readFileSync(path), { level: 9 }).byteLength;

test(`rhtmx-sync.js is at most ${BUDGET} bytes gzipped`, async (t) => {
  const dir = await buildClient();
  const fresh = gzipSize(join(dir, 'rhtmx-sync.js'));
  t.diagnostic(`rhtmx-sync.js: ${readFileSync(join(dir, 'rhtmx-sync.js')).byteLength} bytes, ${fresh} bytes gzipped`);
  assert.ok(fresh <= BUDGET, `client.js is ${fresh} bytes gzipped, over the ${BUDGET}-byte budget`);

  const built = join(root, 'dist/client/rhtmx-sync.js');
  if (existsSync(built)) {
    const size = gzipSize(built);
    t.diagnostic(`dist/client/rhtmx-sync.js: ${size} bytes gzipped`);
    assert.ok(size <= BUDGET, `dist/client/rhtmx-sync.js is ${size} bytes gzipped, over the ${BUDGET}-byte budget`);
  }
});

test('the client bundle is self-contained (no imports, no Node APIs)', async () => {
  const dir = await buildClient();
  for (const file of ['rhtmx-sync.js', 'rhtmx-sync.esm.js']) {
    const code = readFileSync(join(dir, file), 'utf8');
    assert.doesNotMatch(code, /\brequire\(|\bimport\s*\(|from\s*["']node:|\bBuffer\b|\bprocess\./, `${file} must not depend on anything`);
  }
  const esm = readFileSync(join(dir, 'rhtmx-sync.esm.js'), 'utf8');
  assert.match(esm, /export\s*\{[^}]*createSyncClient/, 'the ESM build exports createSyncClient');
});
