/**
 * Streamed pull (docs/protocol.md, "Streamed pull"): `GET ?stream=1` answers
 * with every page in one response, one JSON line each, and each line is the
 * page a paged pull returns. The real client module (`http` + `pullEntity`
 * over the memory store) reads it over real HTTP, and resumes a stream cut
 * short from the last page it applied. A real engine on loopback, SQLite and
 * PostgreSQL.
 */
import assert from 'node:assert/strict';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { memoryDb } from '../src/client/local/memory.js';
import { cursorKey, pullEntity } from '../src/client/local/replica.js';
import { META } from '../src/client/local/store.js';
import { http } from '../src/client/net/http.js';
import type { PullResponse } from '../src/core/protocol.js';
import { type PageRead, pullResponse } from '../src/transports/http.js';
import { sendWebResponse, toWebRequest } from '../src/transports/node.js';
import { getJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

const ROWS = 2_500;
const LIMIT = 1_000;

/** A raw GET over node:http: status, headers and the body as bytes (decoded by hand). */
function rawGet(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const lines = (text: string): any[] =>
  text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));

/** The pages a paged client gets by following `next` (or `since`), one request each. */
async function pagedPull(base: string, since: number, limit = LIMIT): Promise<PullResponse[]> {
  const pages: PullResponse[] = [];
  let query = `since=${since}`;
  for (;;) {
    const { status, body } = await getJson<PullResponse>(`${base}?${query}&limit=${limit}`);
    assert.equal(status, 200);
    pages.push(body);
    if (!body.has_more) return pages;
    query = body.next ? `since=0&snapshot=${encodeURIComponent(body.next)}` : `since=${body.version}`;
  }
}

/**
 * The pages as a stream reports them: a snapshot page with more behind it
 * says cursor 0 there (its reader follows `next`), where a paged pull
 * reports the cursor a since-pull would continue from.
 */
const streamedView = (pages: PullResponse[]) => pages.map((page) => (page.next ? { ...page, version: 0 } : page));

for (const store of STORES) {
  describe(`streamed pull [${store.name}]`, () => {
    let server: TestServer;
    let scoped: TestServer;

    before(async () => {
      server = await store.start({ limits: { maxPullLimit: LIMIT } });
      const values = Array.from(
        { length: ROWS },
        (_, index) => `('s${String(index).padStart(5, '0')}', 'row ${index}', ${index % 2 ? 'TRUE' : 'FALSE'})`,
      );
      await store.externalWrite(server, `INSERT INTO todos (id, title, done) VALUES ${values.join(', ')}`);
      // A read rule that sees odd rows only.
      scoped = await store.start({
        limits: { maxPullLimit: LIMIT },
        entities: [
          {
            name: 'todos',
            read: (row) => Boolean(row.done),
          },
        ],
      });
      await store.externalWrite(scoped, `INSERT INTO todos (id, title, done) VALUES ${values.join(', ')}`);
    });
    after(async () => {
      await server?.close();
      await scoped?.close();
    });

    test('a snapshot streams as one gzipped response whose lines are the pages a paged pull returns', async () => {
      const base = `${server.url}/api/sync/todos`;
      const paged = streamedView(await pagedPull(base, 0));
      const streamed = await rawGet(`${base}?since=0&stream=1&limit=${LIMIT}`, { 'accept-encoding': 'gzip' });
      assert.equal(streamed.status, 200);
      assert.match(String(streamed.headers['content-type']), /^application\/x-ndjson/);
      assert.equal(streamed.headers['content-encoding'], 'gzip');
      const pages = lines(gunzipSync(streamed.body).toString('utf8'));
      assert.deepEqual(pages, paged);
      assert.equal(pages.length, Math.ceil(ROWS / LIMIT));
      assert.equal(pages[0]?.reset, true);
      assert.equal(pages[0]?.total, ROWS);
      assert.equal(pages.at(-1)?.has_more, false);
      const ids = pages.flatMap((page) => page.changes.map((change: any) => change.id));
      assert.equal(new Set(ids).size, ROWS);

      // Without gzip, the same lines; without `limit`, the largest pages.
      const plain = await rawGet(`${base}?since=0&stream=1&limit=${LIMIT}`);
      assert.equal(plain.headers['content-encoding'], undefined);
      assert.deepEqual(lines(plain.body.toString('utf8')), pages);
      const largest = lines((await rawGet(`${base}?since=0&stream=1`)).body.toString('utf8'));
      assert.deepEqual(largest, pages, 'pages of maxPullLimit rows');
    });

    test('incremental pages stream too; a stream of one page is a plain JSON answer', async () => {
      const base = `${server.url}/api/sync/todos`;
      const before = (await getJson<{ version: number }>(`${server.url}/api/sync/schema`)).body.version;
      const values = Array.from({ length: 30 }, (_, index) => `('i${index}', 'new ${index}', FALSE)`);
      await store.externalWrite(server, `INSERT INTO todos (id, title, done) VALUES ${values.join(', ')}`);
      const streamed = await rawGet(`${base}?since=${before}&stream=1&limit=7`);
      assert.match(String(streamed.headers['content-type']), /^application\/x-ndjson/);
      const pages = lines(streamed.body.toString('utf8'));
      assert.deepEqual(pages, await pagedPull(base, before, 7));
      assert.equal(pages.length, 5);
      assert.equal(pages.flatMap((page) => page.changes).length, 30);
      const single = await rawGet(`${base}?since=${pages.at(-1)?.version}&stream=1`);
      assert.match(String(single.headers['content-type']), /^application\/json/);
      assert.equal(JSON.parse(single.body.toString('utf8')).has_more, false);
    });

    test('the real client reads the stream, and resumes a stream cut short from the last page it applied', async () => {
      const asked: string[] = [];
      let cut = true;
      // The network drops the first stream right after its first line.
      const fetcher: typeof fetch = async (url, init) => {
        asked.push(String(url));
        const response = await fetch(url, init);
        if (!cut || !response.body) return response;
        cut = false;
        const reader = response.body.getReader();
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            const { done, value } = await reader.read();
            if (done) return controller.close();
            const text = new TextDecoder().decode(value);
            const newline = text.indexOf('\n');
            if (newline < 0) return controller.enqueue(value);
            controller.enqueue(new TextEncoder().encode(text.slice(0, newline + 1)));
            await reader.cancel();
            controller.error(new TypeError('network cut the stream'));
          },
        });
        return new Response(body, { status: response.status, headers: response.headers });
      };
      const db = memoryDb();
      const replica = { db, idle: async () => {}, changed: () => {} };
      const api = http(`${server.url}/api/sync`, fetcher);
      // The cut surfaces as the network error it is; the first page and its token are durable.
      await assert.rejects(
        pullEntity(replica, api, 'todos', () => {}),
        /network cut the stream/,
      );
      const mid = db.peek(META).get(cursorKey('todos')) as { n?: string; l?: number };
      assert.ok(mid.n, 'the first page left its continuation token');
      assert.ok(mid.l && mid.l > 0 && mid.l < ROWS);
      const progress: number[] = [];
      const reached = await pullEntity(replica, api, 'todos', ({ loaded }) => progress.push(loaded));
      assert.equal(asked.length, 2);
      assert.match(asked[1] as string, /snapshot=.*&stream=1/);
      const table = (await pagedPull(`${server.url}/api/sync/todos`, 0)).flatMap((page) => page.changes);
      assert.deepEqual(
        [...db.peek('todos').values()].map((row: any) => [row.id, row.title]).sort(),
        table.map((change) => [change.id, change.data?.title]).sort(),
      );
      assert.equal(reached, (await getJson<PullResponse>(`${server.url}/api/sync/todos?since=${reached}`)).body.version);
      assert.equal(progress.at(-1), table.length);
    });

    test('a read scope filters every streamed page', async () => {
      const base = `${scoped.url}/api/sync/todos`;
      const paged = streamedView(await pagedPull(base, 0));
      const pages = lines((await rawGet(`${base}?since=0&stream=1&limit=${LIMIT}`)).body.toString('utf8'));
      assert.deepEqual(pages, paged);
      const rows = pages.flatMap((page) => page.changes);
      assert.equal(rows.length, ROWS / 2);
      assert.ok(rows.every((change) => change.data?.done === true));
    });

    test('a page that fails mid-stream ends it with an error line; the client keeps what it applied and fails', async () => {
      // The stream transport over the engine's pages, with the second page's read failing.
      const failures: unknown[] = [];
      let reads = 0;
      const front = createServer((req, res) => {
        const request = toWebRequest(req);
        const url = new URL(request.url);
        const params = {
          since: Number(url.searchParams.get('since')),
          limit: LIMIT,
          snapshot: url.searchParams.get('snapshot'),
          streamed: true,
        };
        const read: PageRead = async (next) => {
          if (++reads === 2) throw new Error('store connection lost');
          // The engine's own page, over HTTP.
          const query = next.snapshot ? `since=0&snapshot=${encodeURIComponent(next.snapshot)}` : `since=${next.since}`;
          const text = await (await fetch(`${server.url}/api/sync/todos?${query}&limit=${next.limit}`)).text();
          return { page: JSON.parse(text) as PullResponse, text };
        };
        void pullResponse(request, params, read, (error) => failures.push(error)).then((response) => sendWebResponse(res, response, req));
      });
      await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
      try {
        const base = `http://127.0.0.1:${(front.address() as AddressInfo).port}/api/sync`;
        const answered = lines((await rawGet(`${base}/todos?since=0&stream=1`)).body.toString('utf8'));
        assert.equal(answered.length, 2);
        assert.equal(answered[0].changes.length, LIMIT);
        assert.equal(answered[1].error.code, 'internal');
        assert.doesNotMatch(answered[1].error.message, /store connection lost/, 'no internals leak');
        assert.ok(failures.some((error) => /store connection lost/.test(String(error))));
        // The real client surfaces it as the server's error, with the first page and its token durable.
        reads = 0;
        const db = memoryDb();
        const replica = { db, idle: async () => {}, changed: () => {} };
        await assert.rejects(
          pullEntity(replica, http(base), 'todos', () => {}),
          { code: 'internal', status: 0 },
        );
        assert.ok((db.peek(META).get(cursorKey('todos')) as { n?: string }).n);
        assert.equal(db.peek('todos').size, LIMIT);
      } finally {
        front.closeAllConnections();
        await new Promise((resolve) => front.close(resolve));
      }
    });
  });
}
