import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { startServer, type TestServer } from './helpers.js';

/** Raw GET (fetch would transparently gunzip and hide the encoding). */
function rawGet(url: string, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, any>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    request(url, { headers }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) }));
    })
      .on('error', reject)
      .end();
  });
}

describe('GET /api/sync/client.js', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  test('serves the built client as JavaScript, gzipped when accepted, with an ETag and 304s', async () => {
    const plain = await rawGet(`${server.url}/api/sync/client.js`, {});
    assert.equal(plain.status, 200);
    assert.match(plain.headers['content-type'], /javascript/);
    assert.ok(plain.body.length > 0);
    const etag = plain.headers.etag as string;
    assert.match(etag, /^"[\w-]+"$/);

    const zipped = await rawGet(`${server.url}/api/sync/client.js`, { 'accept-encoding': 'gzip, br' });
    assert.equal(zipped.headers['content-encoding'], 'gzip');
    assert.deepEqual(gunzipSync(zipped.body), plain.body);
    assert.equal(zipped.headers.etag, etag);

    const cached = await rawGet(`${server.url}/api/sync/client.js`, { 'if-none-match': etag });
    assert.equal(cached.status, 304);
    assert.equal(cached.body.length, 0);
  });

  test('large pull responses are gzipped when accepted', async () => {
    const insert = server.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
    server.db.transaction(() => {
      for (let index = 0; index < 200; index++) insert.run(`g${index}`, `todo number ${index}`);
    })();
    const zipped = await rawGet(`${server.url}/api/sync/todos?since=0`, { 'accept-encoding': 'gzip' });
    assert.equal(zipped.headers['content-encoding'], 'gzip');
    const body = JSON.parse(gunzipSync(zipped.body).toString('utf8'));
    assert.equal(body.changes.length, 200);
  });
});
