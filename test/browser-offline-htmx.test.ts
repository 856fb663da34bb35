/**
 * Offline htmx: the demo's unchanged `hx-post` / `hx-patch` / `hx-delete`
 * forms keep working offline (htmx 2 and htmx 4, real Chromium, real
 * offline emulation), survive a reload through the service worker, and land
 * on the server exactly once when back online; a change the database refuses
 * fires `rhtmx:sync:conflict` without blocking the ones behind it.
 *
 * Then, on the fixture app: requests that fail on the network while
 * `navigator.onLine` is true, the `data-sync-*` overrides, column coercion,
 * requests the client cannot map (left to htmx), and `rhtmx:sync:progress`.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Demo, startDemo } from './browser/demo-server.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

/** Events the pages record from their first script on (`window.__log`), htmx's error events included. */
const RECORDED = [
  'rhtmx:offline:queued',
  'rhtmx:sync:conflict',
  'rhtmx:sync:progress',
  'rhtmx:sync:error',
  'htmx:error',
  'htmx:sendError',
  'htmx:responseError',
  'htmx:response:error',
];

async function recordingContext(browser: Browser): Promise<BrowserContext> {
  const context = await browser.newContext();
  await context.addInitScript((names: string[]) => {
    const log: Array<{ name: string; detail: unknown; target: string }> = [];
    (window as any).__log = log;
    for (const name of names) {
      // htmx's details hold elements and XHRs: keep only which element the event is about.
      document.addEventListener(name, (event) => {
        const target = event.target as Element;
        log.push({ name, detail: name.startsWith('rhtmx:') ? (event as CustomEvent).detail : null, target: target.id || target.tagName });
      });
    }
  }, RECORDED);
  return context;
}

const logged = (page: Page, name: string): Promise<any[]> =>
  page.evaluate((wanted) => (window as any).__log.filter((entry: any) => entry.name === wanted).map((entry: any) => entry.detail), name);

const pendingCount = (page: Page) => page.evaluate(async () => (await window.rhtmxSync.pending()).length);

/** The demo's list row showing this title (server-rendered or drawn from IndexedDB). */
const row = (page: Page, title: string) => page.locator('#todo-list .todo', { has: page.locator(`.title[value="${title}"]`) });

interface ServerRow {
  id: string;
  title: string;
  done: number;
}

function tableRows(dbPath: string): ServerRow[] {
  const db = new Database(dbPath, { readonly: true });
  try {
    db.pragma('busy_timeout = 5000');
    return db.prepare('SELECT id, title, done FROM todos ORDER BY id').all() as ServerRow[];
  } finally {
    db.close();
  }
}

async function addTodo(page: Page, title: string): Promise<void> {
  const input = page.locator('#add-form input[name="title"]');
  await input.fill(title);
  await input.press('Enter');
  await row(page, title).waitFor({ timeout: 10_000 });
  // htmx saw the taken-over request complete (204): the demo clears the form as after any accepted add.
  await page.waitForFunction(() => (document.querySelector('#add-form input') as HTMLInputElement).value === '');
}

for (const htmx of ['2', '4'] as const) {
  describe(`offline htmx with the demo's unchanged forms, htmx ${htmx}`, () => {
    let dir: string;
    let demo: Demo;
    let browser: Browser;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'rhtmx-offline-htmx-'));
      demo = await startDemo(join(dir, 'todo.db'), { HTMX: htmx });
      for (const title of ['Rename me', 'Deleted on the server', 'Left alone']) {
        const answer = await fetch(`${demo.url}/todos`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({ title }),
        });
        assert.equal(answer.status, 200);
      }
      browser = await launchBrowser();
    });

    after(async () => {
      await browser?.close();
      await demo?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('add three, toggle one, delete one offline; reload offline; back online each lands once', async () => {
      const context = await recordingContext(browser);
      const page = await context.newPage();
      forwardConsole(page, `demo-htmx${htmx}`);
      // Writes to the app's routes: a taken-over request must never reach the network.
      const writes: string[] = [];
      context.on('request', (request) => {
        if (request.method() !== 'GET' && new URL(request.url()).pathname.startsWith('/todos'))
          writes.push(`${request.method()} ${request.url()}`);
      });

      await page.goto(`${demo.url}/`);
      assert.ok(String(await page.evaluate(() => (window as any).htmx.version)).startsWith(htmx));
      await page.evaluate(() => window.rhtmxSync.ready);
      await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 15_000, 'websocket');
      // The service worker (data-service-worker="true") controls the page and holds what a reload needs.
      await waitInPage(
        page,
        async () =>
          Boolean(navigator.serviceWorker.controller) &&
          (
            await Promise.all([location.href, '/app.js', '/vendor/htmx.min.js', '/api/sync/client.js'].map((url) => caches.match(url)))
          ).every(Boolean),
        15_000,
        'the service worker and its cache',
      );
      const seeded = tableRows(demo.dbPath);
      const id = (title: string) => seeded.find((candidate) => candidate.title === title)?.id as string;

      await context.setOffline(true);
      await page.locator('#sync-connection[data-state="offline"]').waitFor();

      // 1. A rename the database refuses (CHECK: a title needs 1-200 characters) → rejected later.
      const rename = row(page, 'Rename me').locator('.title');
      await rename.fill('');
      await rename.press('Enter');
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 1, 10_000, 'the rename queued');
      // 2. A toggle of a row the server deletes meanwhile → conflict later (the row is gone).
      await row(page, 'Deleted on the server').locator('.check').click();
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 2, 10_000, 'the toggle queued');
      const other = new Database(demo.dbPath);
      other.pragma('busy_timeout = 5000');
      other.prepare('DELETE FROM todos WHERE id = ?').run(id('Deleted on the server'));
      other.close();

      // 3. The changes that must land, behind the two that will not.
      for (const title of ['Offline one', 'Offline two', 'Offline three']) await addTodo(page, title);
      await row(page, 'Offline two').locator('.check').click();
      await page.locator('#todo-list .todo.done', { has: page.locator('.title[value="Offline two"]') }).waitFor();
      await row(page, 'Offline three').hover();
      await row(page, 'Offline three').locator('.delete').click();
      await row(page, 'Offline three').waitFor({ state: 'detached' });

      // Everything is local so far: the list comes from IndexedDB with pending markers, the badge counts the outbox.
      assert.equal(await pendingCount(page), 7);
      const queued = await logged(page, 'rhtmx:offline:queued');
      assert.deepEqual(
        queued.map((detail) => [detail.count, detail.entity, detail.action]),
        [
          [1, 'todos', 'update'],
          [2, 'todos', 'update'],
          [3, 'todos', 'create'],
          [4, 'todos', 'create'],
          [5, 'todos', 'create'],
          [6, 'todos', 'update'],
          [7, 'todos', 'delete'],
        ],
      );
      assert.equal(queued[0].id, id('Rename me'));
      assert.match(queued[2].id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a client-made UUID v7');
      await page.locator('#pending-badge', { hasText: '7 changes waiting to sync' }).waitFor();
      assert.equal(await page.locator('#todo-list').getAttribute('data-source'), 'local');
      for (const title of ['Offline one', 'Offline two']) await row(page, title).locator('.pending-tag').waitFor();
      assert.equal(await row(page, 'Left alone').locator('.pending-tag').count(), 0, 'untouched rows are not pending');
      assert.deepEqual(
        await page.evaluate(async () => {
          const rows = await window.rhtmxSync.all('todos');
          return rows
            .filter((candidate) => String(candidate.title).startsWith('Offline'))
            .map((candidate) => [candidate.title, candidate.done ?? null]);
        }),
        [
          // The add form sends no `done`: the database's default fills it in on the server.
          ['Offline one', null],
          ['Offline two', true],
        ],
        'coerced to the column types (the toggle sent done="true": a boolean)',
      );
      // The list's own GET fails offline (the demo then draws it from IndexedDB); no write failed.
      assert.deepEqual(
        await page.evaluate(() =>
          (window as any).__log
            .filter((entry: any) => entry.name.startsWith('htmx:') && entry.target !== 'todo-list')
            .map((entry: any) => entry.name),
        ),
        [],
        'htmx reported no error for a taken-over request',
      );
      assert.equal(await page.locator('#form-error').textContent(), '');
      assert.deepEqual(
        tableRows(demo.dbPath).map((candidate) => candidate.title),
        ['Rename me', 'Left alone'],
        'nothing reached the server',
      );

      // Reload while offline: the service worker serves the page and its scripts, the list comes from IndexedDB.
      const reloaded = await page.reload();
      assert.ok(reloaded?.fromServiceWorker(), 'the page came from the service worker');
      await page.evaluate(() => window.rhtmxSync.ready);
      await page.locator('#todo-list[data-source="local"]').waitFor({ timeout: 10_000 });
      for (const title of ['Offline one', 'Offline two']) await row(page, title).locator('.pending-tag').waitFor();
      assert.equal(await row(page, 'Offline three').count(), 0);
      await page.locator('#pending-badge', { hasText: '7 changes waiting to sync' }).waitFor();
      // A new tab while offline opens too.
      const tab = await context.newPage();
      forwardConsole(tab, `demo-htmx${htmx}-tab`);
      await tab.goto(`${demo.url}/`);
      await row(tab, 'Offline two').locator('.pending-tag').waitFor({ timeout: 10_000 });
      await tab.close();

      // Back online: the outbox replays in order, exactly once.
      await context.setOffline(false);
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 20_000, 'the outbox drained');
      const conflicts = await waitInPage(
        page,
        () => {
          const found = (window as any).__log.filter((entry: any) => entry.name === 'rhtmx:sync:conflict');
          return found.length >= 2 && found.map((entry: any) => entry.detail);
        },
        10_000,
        'two conflicts',
      );
      assert.deepEqual(
        conflicts.map((detail: any) => [detail.id, detail.change.action, detail.result.status]).sort(),
        [
          [id('Deleted on the server'), 'update', 'conflict'],
          [id('Rename me'), 'update', 'rejected'],
        ].sort(),
      );
      const table = tableRows(demo.dbPath);
      assert.deepEqual(
        table.map((candidate) => [candidate.title, Boolean(candidate.done)]),
        [
          ['Rename me', false],
          ['Left alone', false],
          ['Offline one', false],
          ['Offline two', true],
        ],
        'exactly the intended rows, each once, the refused rename left out',
      );
      // Each create reached the change log once (a replay would have made a second create).
      const creates = new Map<string, number>();
      const history = new Database(demo.dbPath, { readonly: true });
      for (const entry of history.prepare("SELECT data FROM _rhtmx_sync_log WHERE entity = 'todos' AND action = 'create'").all() as Array<{
        data: string;
      }>) {
        const title = JSON.parse(entry.data)?.title;
        creates.set(title, (creates.get(title) ?? 0) + 1);
      }
      history.close();
      for (const title of ['Offline one', 'Offline two', 'Offline three']) assert.equal(creates.get(title), 1, `${title} created once`);
      assert.deepEqual(writes, [], 'no htmx write ever went to the network: the outbox carried them');

      // The refused rename is reverted locally; the page shows the server's list again.
      await waitInPage(
        page,
        async (renamed) => (await window.rhtmxSync.get('todos', renamed))?.title === 'Rename me',
        10_000,
        'the refused rename reverted',
        id('Rename me'),
      );
      await row(page, 'Rename me').waitFor({ timeout: 10_000 });
      await page.locator('#pending-badge').waitFor({ state: 'hidden', timeout: 10_000 });

      // A second browser (its own storage) sees them.
      const second = await browser.newContext();
      const fresh = await second.newPage();
      forwardConsole(fresh, `demo-htmx${htmx}-second`);
      await fresh.goto(`${demo.url}/`);
      await fresh.evaluate(() => window.rhtmxSync.ready);
      for (const title of ['Offline one', 'Offline two', 'Left alone', 'Rename me']) await row(fresh, title).waitFor({ timeout: 10_000 });
      assert.equal(await row(fresh, 'Offline three').count(), 0);
      assert.equal(
        (await fresh.evaluate(() => window.rhtmxSync.all('todos'))).filter((candidate) => String(candidate.title).startsWith('Offline'))
          .length,
        2,
      );
      await second.close();
      await context.close();
    });
  });
}

const NOTES_SQL = `CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0, updated_at TEXT);
CREATE TABLE notes (
  id INTEGER PRIMARY KEY,
  body TEXT,
  stars INTEGER,
  score REAL,
  pinned BOOLEAN NOT NULL DEFAULT 0,
  flagged INTEGER NOT NULL DEFAULT 0,
  meta JSON
);`;

/** Plain htmx markup, the same for htmx 2 and 4; the fixture app answers none of these writes itself. */
const FORMS = `
<form id="todo-form" hx-post="/todos" hx-swap="none"><input name="title"><button>Add</button></form>
<form id="note-form" hx-post="/notes" hx-swap="none">
  <input name="body" value="hello"><input name="stars" value=""><input name="score" value="2.5">
  <input type="checkbox" name="pinned" checked><input type="checkbox" name="flagged" checked>
  <input name="meta" value='{"a":1}'><input name="csrf_token" value="not a column">
  <button>Add note</button>
</form>
<form id="custom-form" hx-post="/custom/add-todo" data-sync-entity="todos" data-sync-action="create" hx-swap="none">
  <input name="title" value="via override"><button>Go</button>
</form>
<button id="api-put" hx-put="/api/todos/t2" hx-vals='{"done":"on"}' hx-swap="none">done</button>
<button id="api-delete" hx-delete="/api/todos/t1" hx-swap="none">delete</button>
<button id="opt-out" hx-post="/todos" hx-vals='{"title":"never"}' data-sync-action="none" hx-swap="none">opt out</button>
<button id="unmapped" hx-post="/elsewhere" hx-vals='{"title":"nope"}' hx-swap="none">elsewhere</button>
`;

const queuedCount = async (page: Page) => (await logged(page, 'rhtmx:offline:queued')).length;

for (const htmx of ['2', '4'] as const) {
  describe(`offline htmx on the fixture app, htmx ${htmx}`, () => {
    let fixture: Fixture;
    let browser: Browser;
    before(async () => {
      fixture = await startFixture({
        setupSql: NOTES_SQL,
        entities: ['todos', 'notes'],
        seed: [
          ['t1', 'to delete'],
          ['t2', 'to finish'],
        ],
        body: FORMS,
      });
      browser = await launchBrowser();
    });
    after(async () => {
      await browser?.close();
      await fixture?.close();
    });

    const open = async (context: BrowserContext, label: string) => {
      const page = await context.newPage();
      forwardConsole(page, label);
      await page.goto(fixture.pageUrl({ htmx, entities: 'todos,notes' }));
      await page.evaluate(() => window.rhtmxSync.ready);
      await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 15_000, 'websocket');
      return page;
    };

    test('online, a write that fails on the network is taken over; an HTTP error is left to htmx', async () => {
      const context = await recordingContext(browser);
      const page = await open(context, `net-htmx${htmx}`);
      let answer: 'refuse' | '500' = 'refuse';
      let attempts = 0;
      await page.route('**/todos', (route) => {
        if (route.request().method() !== 'POST') return route.continue();
        attempts++;
        return answer === 'refuse' ? route.abort('connectionrefused') : route.fulfill({ status: 500, body: 'boom' });
      });
      assert.equal(await page.evaluate(() => navigator.onLine), true);

      await page.locator('#todo-form input').fill('network failed');
      await page.locator('#todo-form button').click();
      await waitFor(() => fixture.todos().some((todo) => todo.title === 'network failed'), 15_000, 'the taken-over create on the server');
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 10_000, 'the outbox drained');
      assert.equal(attempts, 1, 'htmx tried once; the outbox carried the change (not a retry of the request)');
      assert.equal(fixture.todos().filter((todo) => todo.title === 'network failed').length, 1);
      assert.equal(await queuedCount(page), 1);
      assert.deepEqual(
        await page.evaluate(() =>
          (window as any).__log.filter((entry: any) => entry.name.startsWith('htmx:')).map((entry: any) => entry.name),
        ),
        [],
        'htmx saw the taken-over request complete (204), not fail',
      );

      // A server that answers (500) may have written: the request is htmx's, never replayed by the outbox.
      answer = '500';
      await page.locator('#todo-form input').fill('server error');
      await page.locator('#todo-form button').click();
      await waitInPage(
        page,
        () => (window as any).__log.some((entry: any) => entry.name === 'htmx:responseError' || entry.name === 'htmx:response:error'),
        10_000,
        "htmx's own response error",
      );
      assert.equal(await queuedCount(page), 1, 'not queued');
      assert.equal(await pendingCount(page), 0);
      assert.ok(!fixture.todos().some((todo) => todo.title === 'server error'));
      await context.close();
    });

    test('offline: routes under /api, data-sync-* overrides, column coercion; unmapped requests reach htmx', async () => {
      const context = await recordingContext(browser);
      const page = await open(context, `map-htmx${htmx}`);
      await context.setOffline(true);
      await waitInPage(page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline');

      await page.locator('#note-form button').click();
      await waitInPage(page, async () => (await window.rhtmxSync.all('notes')).length === 1, 10_000, 'the note in IndexedDB');
      const [note] = await page.evaluate(() => window.rhtmxSync.all('notes'));
      const { id: tempId, ...columns } = note as Record<string, unknown>;
      assert.deepEqual(
        columns,
        { body: 'hello', stars: null, score: 2.5, pinned: true, flagged: 1, meta: { a: 1 } },
        'text kept, "" → null (nullable integer), numbers, checkbox on → true / 1, JSON parsed, unknown fields dropped',
      );
      await page.locator('#custom-form button').click();
      await page.locator('#api-put').click();
      await page.locator('#api-delete').click();
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 4, 10_000, 'four changes queued');
      assert.deepEqual(
        (await logged(page, 'rhtmx:offline:queued')).map((detail) => [detail.count, detail.entity, detail.action, detail.id]),
        [
          [1, 'notes', 'create', tempId],
          [2, 'todos', 'create', (await logged(page, 'rhtmx:offline:queued'))[1].id],
          [3, 'todos', 'update', 't2'],
          [4, 'todos', 'delete', 't1'],
        ],
      );
      assert.equal((await page.evaluate(() => window.rhtmxSync.get('todos', 't2')))?.done, true);
      assert.equal(await page.evaluate(() => window.rhtmxSync.get('todos', 't1')), undefined);

      // Not the client's: opted out, or no synced route. htmx's own error handling sees them fail.
      for (const button of ['#opt-out', '#unmapped']) {
        const before = (await page.evaluate(() => (window as any).__log.length)) as number;
        await page.locator(button).click();
        await waitInPage(
          page,
          ([start, id]) =>
            (window as any).__log
              .slice(start)
              .some((entry: any) => (entry.name === 'htmx:error' || entry.name === 'htmx:sendError') && entry.target === id),
          10_000,
          `htmx's error for ${button}`,
          [before, button.slice(1)] as const,
        );
      }
      assert.equal(await pendingCount(page), 4, 'nothing else queued');

      await context.setOffline(false);
      await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 20_000, 'the outbox drained');
      const notes = fixture.db.prepare('SELECT id, body, stars, score, pinned, flagged, meta FROM notes').all() as any[];
      assert.equal(notes.length, 1);
      assert.equal(typeof notes[0].id, 'number', 'the database assigned the integer key');
      assert.deepEqual(
        { ...notes[0], id: undefined },
        { id: undefined, body: 'hello', stars: null, score: 2.5, pinned: 1, flagged: 1, meta: '{"a":1}' },
      );
      // The local row moved from the temporary id to the server's.
      await waitInPage(
        page,
        async (serverId) => (await window.rhtmxSync.all('notes')).map((row) => row.id).join() === String(serverId),
        10_000,
        'the note under its server id',
        notes[0].id,
      );
      const todos = fixture.todos();
      assert.ok(!todos.some((todo) => todo.id === 't1'), 'deleted through DELETE /api/todos/t1');
      assert.equal(todos.find((todo) => todo.id === 't2')?.done, 1, 'PUT /api/todos/t2 with done=on');
      assert.equal(todos.filter((todo) => todo.title === 'via override').length, 1);
      assert.ok(!todos.some((todo) => todo.title === 'never' || todo.title === 'nope'));
      await context.close();
    });
  });
}

describe('first catch-up progress', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    const seed = Array.from({ length: 2500 }, (_, index): [string, string] => [`r${String(index).padStart(5, '0')}`, `row ${index}`]);
    fixture = await startFixture({ seed, limits: { defaultPullLimit: 1000, maxPullLimit: 1000 } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('a snapshot of several pages fires rhtmx:sync:progress with the total from its first page', async () => {
    const context = await recordingContext(browser);
    const page = await context.newPage();
    forwardConsole(page, 'progress');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    assert.deepEqual(
      (await logged(page, 'rhtmx:sync:progress')).map(({ entity, loaded, total }) => [entity, loaded, total]),
      [
        ['todos', 1000, 2500],
        ['todos', 2000, 2500],
        ['todos', 2500, 2500],
      ],
    );
    assert.equal((await page.evaluate(() => window.rhtmxSync.all('todos'))).length, 2500);
    // A second page load is incremental (one page): no progress. (The seeded rows predate the change log,
    // whose version is still 0, and `since=0` means a snapshot: one write moves the cursor past it.)
    fixture.externalWrite("UPDATE todos SET title = 'edited' WHERE id = 'r00000'");
    await waitInPage(page, async () => (await window.rhtmxSync.get('todos', 'r00000'))?.title === 'edited', 10_000, 'the edit');
    await page.reload();
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 15_000, 'websocket');
    assert.deepEqual(await logged(page, 'rhtmx:sync:progress'), []);
    await context.close();
  });
});
