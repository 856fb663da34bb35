/**
 * A push answer may reach the browser after a newer change of the same row:
 * the server commits the push, another write to that row commits and is
 * streamed out, and only then does the push answer arrive (an HTTP answer
 * and the SSE stream are separate connections; a WebSocket reply can trail
 * a live batch too). The answer must not undo what the newer change did.
 *
 * Found by the convergence soak (docs/reliability.md): a device kept a
 * deleted row, or its own title over a newer one, forever.
 *
 * The test server holds each push answer until another write to the pushed
 * row has been fanned out and, unless the client holds it back until the
 * answer is settled, applied by the page.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { nodeHandler } from '../src/adapters/node.js';
import { SyncEngine } from '../src/engine.js';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { buildClient } from './browser/client-bundle.js';
import { type TempDb, tempDb, waitFor } from './helpers.js';

const PAGE = `<!doctype html><html><head><meta charset="utf-8">
<script src="/api/sync/client.js" data-sync-entities="todos" data-use-websocket="false"></script>
</head><body></body></html>`;

/** The page's cursor for todos, read from its IndexedDB. */
function pageCursor(page: Page): Promise<number> {
  return page.evaluate(
    () =>
      new Promise<number>((resolve, reject) => {
        const open = indexedDB.open('rhtmx-sync');
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          const get = db.transaction('rhtmx:meta').objectStore('rhtmx:meta').get('c:todos');
          get.onsuccess = () => {
            db.close();
            resolve((get.result as { v?: number } | undefined)?.v ?? 0);
          };
          get.onerror = () => reject(get.error);
        };
      }),
  );
}

describe('push answers that trail a newer change of the row', () => {
  let temp: TempDb;
  let engine: SyncEngine;
  let server: http.Server;
  let url: string;
  let browser: Browser;
  /** Runs after a push committed and before its answer is sent. */
  let beforeAnswer: (rowId: string) => Promise<void> = async () => {};

  before(async () => {
    temp = tempDb();
    temp.db.prepare("INSERT INTO todos (id, title, done) VALUES ('u1', 'seed', 0), ('d1', 'seed', 0)").run();
    engine = new SyncEngine({ db: temp.db, entities: ['todos'], pollMs: 10, clientDir: await buildClient() });
    await engine.ready;
    const sync = nodeHandler(engine);
    server = http.createServer(async (req, res) => {
      if (req.url === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(PAGE);
        return;
      }
      if (req.method === 'POST' && req.url === '/api/sync/todos') {
        const chunks: Buffer[] = [];
        for await (const chunk of req) chunks.push(chunk as Buffer);
        const body = Buffer.concat(chunks).toString('utf8');
        const answer = await engine.fetch(
          new Request(`${url}${req.url}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }),
        );
        const text = await answer.text();
        const pushed = (JSON.parse(body) as { changes: Array<{ id: string }> }).changes.map((change) => change.id);
        for (const id of pushed) await beforeAnswer(id);
        res.writeHead(answer.status, { 'content-type': 'application/json' });
        res.end(text);
        return;
      }
      sync(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await engine?.close();
    server?.closeAllConnections();
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    temp?.dispose();
  });

  /** Push `change`; before its answer, `write` changes the row on the server. Returns the page once drained. */
  async function pushRacing(change: Record<string, unknown>, write: string): Promise<Page> {
    const page = await (await browser.newContext()).newPage();
    forwardConsole(page, 'answer-order');
    await page.goto(`${url}/`);
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'sse', 10_000, 'live over SSE');
    beforeAnswer = async (id) => {
      if (id !== change.id) return;
      beforeAnswer = async () => {};
      temp.db.prepare(write).run();
      engine.notify();
      const newer = await engine.currentVersion();
      await engine.fannedOut(newer);
      // A client that applies live changes at once shows the newer version now; one that holds
      // them until this answer is settled never does, so the wait ends at its deadline instead.
      await waitFor(async () => (await pageCursor(page)) >= newer, 3_000, 'the page applied the newer change').catch(() => {});
    };
    await page.evaluate((change) => window.rhtmxSync.push('todos', change as never), change);
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 15_000, 'outbox drained');
    return page;
  }

  test('an applied update answered after a newer server update keeps the newer title', async () => {
    const page = await pushRacing(
      { id: 'u1', action: 'update', data: { title: 'from the browser' } },
      "UPDATE todos SET title = 'newer on the server' WHERE id = 'u1'",
    );
    assert.equal((temp.db.prepare("SELECT title FROM todos WHERE id = 'u1'").get() as { title: string }).title, 'newer on the server');
    await waitInPage(
      page,
      async () => (await window.rhtmxSync.get('todos', 'u1'))?.title === 'newer on the server',
      5_000,
      'the newer title',
    );
  });

  test('an applied update answered after the row was deleted leaves no row behind', async () => {
    const page = await pushRacing({ id: 'd1', action: 'update', data: { title: 'from the browser' } }, "DELETE FROM todos WHERE id = 'd1'");
    assert.equal((temp.db.prepare("SELECT count(*) AS n FROM todos WHERE id = 'd1'").get() as { n: number }).n, 0);
    await waitInPage(page, async () => (await window.rhtmxSync.get('todos', 'd1')) === undefined, 5_000, 'the row gone');
  });
});
