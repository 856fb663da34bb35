/**
 * The IndexedDB replica: layout (one store per entity, string ids, cursors in
 * meta), snapshot pages whose cursor and continuation token land with their
 * rows (an interrupted snapshot resumes, it is never mistaken for complete),
 * stores for entities added later via a version upgrade while another tab
 * holds the database open, and integer keys assigned by the server.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { TODOS_SQL, waitFor } from './helpers.js';

/** Read the raw database, bypassing the client: store names, keys and one meta entry. */
const rawIdb = (page: Page, store: string, metaKey: string) =>
  page.evaluate(
    ([storeName, key]) =>
      new Promise<{ stores: string[]; keys: unknown[]; meta: any }>((resolve, reject) => {
        const request = indexedDB.open('rhtmx-sync');
        request.onerror = () => reject(request.error);
        request.onsuccess = () => {
          const db = request.result;
          const stores = [...db.objectStoreNames];
          if (!stores.includes(storeName as string)) {
            db.close();
            return resolve({ stores, keys: [], meta: undefined });
          }
          const tx = db.transaction([storeName as string, 'rhtmx:meta']);
          const keys = tx.objectStore(storeName as string).getAllKeys();
          const meta = tx.objectStore('rhtmx:meta').get(key as string);
          tx.oncomplete = () => {
            db.close();
            resolve({ stores, keys: keys.result, meta: meta.result });
          };
        };
      }),
    [store, metaKey],
  );

describe('IndexedDB replica', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture({
      setupSql: `${TODOS_SQL};
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
        INSERT INTO notes (id, body) VALUES (1, 'first'), (2, 'second');`,
      entities: ['todos', 'notes'],
      // Two rows per page: every snapshot here spans several pages.
      limits: { defaultPullLimit: 2, maxPullLimit: 2 },
      seed: [
        ['t1', 'one'],
        ['t2', 'two'],
        ['t3', 'three'],
        ['t4', 'four'],
        ['t5', 'five'],
      ],
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('an interrupted snapshot keeps its token with its rows and resumes', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'snapshot-1');
    // The streamed pull is cut after its first page; then every continuation fails.
    await page.route('**/api/sync/todos?since=0&stream=1', async (route) => {
      const response = await route.fetch();
      const [first] = (await response.text()).split('\n');
      await route.fulfill({ response, body: `${first}\n` });
    });
    await page.route('**/api/sync/todos?since=0&snapshot=*', (route) => route.abort('connectionreset'));
    await page.goto(fixture.pageUrl());
    const partial = await waitFor(
      async () => {
        const raw = await rawIdb(page, 'todos', 'c:todos');
        return raw.meta?.n ? raw : null;
      },
      10_000,
      'first snapshot page',
    );
    assert.equal(partial.keys.length, 2, 'the rows of the first page only');
    assert.equal(await page.evaluate(() => (window as any).__events.some((e: any) => e.name === 'rhtmx:sync:ready')), false);
    await page.close();

    const next = await context.newPage();
    forwardConsole(next, 'snapshot-2');
    const pulls: string[] = [];
    next.on('request', (request) => {
      if (request.url().includes('/api/sync/todos?')) pulls.push(new URL(request.url()).search);
    });
    await next.goto(fixture.pageUrl());
    await next.evaluate(() => window.rhtmxSync.ready);
    assert.match(pulls[0] ?? '', /snapshot=/, 'resumed with the saved token, not from scratch');
    const raw = await rawIdb(next, 'todos', 'c:todos');
    assert.deepEqual([...raw.keys].sort(), ['t1', 't2', 't3', 't4', 't5']);
    assert.equal(raw.meta.n, undefined, 'snapshot complete');
    assert.ok(Number.isInteger(raw.meta.v));
    await context.close();
  });

  test('a store for a newly configured entity, string ids for integer keys, server-assigned keys', async () => {
    const context = await browser.newContext();
    const first = await context.newPage();
    forwardConsole(first, 'todos-only');
    await first.goto(fixture.pageUrl({ entities: 'todos' }));
    await first.evaluate(() => window.rhtmxSync.ready);
    let raw = await rawIdb(first, 'todos', 'c:todos');
    assert.ok(raw.stores.includes('todos') && raw.stores.includes('rhtmx:meta') && raw.stores.includes('rhtmx:outbox'));
    assert.ok(!raw.stores.includes('notes'));

    // A second tab wants one more entity: its store is added by an upgrade while the first tab (the leader) has the database open.
    const second = await context.newPage();
    forwardConsole(second, 'todos+notes');
    await second.goto(fixture.pageUrl({ entities: 'todos,notes' }));
    await second.evaluate(() => window.rhtmxSync.ready);
    assert.equal(await first.evaluate(() => window.rhtmxSync.state().leader), true);
    raw = await rawIdb(second, 'notes', 'c:notes');
    assert.ok(raw.stores.includes('notes'));
    assert.deepEqual(raw.keys, ['1', '2'], 'integer keys are stored as strings');
    assert.deepEqual(await second.evaluate(() => window.rhtmxSync.get('notes', 1)), { id: '1', body: 'first' });

    // Deletes find the row whatever the key's type on the server (the seed stored numbers and deleted strings).
    fixture.externalWrite('DELETE FROM notes WHERE id = 1');
    await waitInPage(second, async () => (await window.rhtmxSync.get('notes', '1')) === undefined, 10_000, 'delete applied');

    // A create without id on an integer-keyed table: the server assigns the key, the local row moves to it.
    const entry = await second.evaluate(() => window.rhtmxSync.push('notes', { action: 'create', data: { body: 'made offline-first' } }));
    await waitInPage(second, async () => (await window.rhtmxSync.pending()).length === 0, 10_000, 'outbox drained');
    const onServer = fixture.db.prepare("SELECT id FROM notes WHERE body = 'made offline-first'").all() as Array<{ id: number }>;
    assert.equal(onServer.length, 1);
    const serverId = String(onServer[0]?.id);
    await waitInPage(
      second,
      async ([tmp, id]: string[]) =>
        (await window.rhtmxSync.get('notes', tmp as string)) === undefined && (await window.rhtmxSync.get('notes', id as string))?.body,
      10_000,
      'row moved to the server key',
      [entry.id, serverId],
    );
    // The other tab (the leader) converges too.
    await waitInPage(
      first,
      async (id) => (await window.rhtmxSync.get('notes', id))?.body === 'made offline-first',
      10_000,
      'leader',
      serverId,
    );
    assert.deepEqual((await second.evaluate(() => window.rhtmxSync.all('notes'))).map((row) => row.id).sort(), ['2', serverId].sort());
    await context.close();
  });
});
