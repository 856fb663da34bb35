/**
 * Field-level sync in real headless Chromium through `/api/sync/field-client.js`:
 * two browsers (two contexts, separate IndexedDB) edit one row while one of
 * them is offline, and the page is reloaded offline before it reconnects.
 * Different fields both survive, in the table and in both replicas; the same
 * field ends as each strategy documents, with `rhtmx:field:conflict` where
 * the strategy keeps the server value. A client clock an hour fast does not
 * beat a later honest edit. Tabs: only the leader opens a field socket.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { build } from 'esbuild';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import type { FieldConflictDetail, FieldSync } from '../src/client/field/client.js';
import { FieldMergeStrategy } from '../src/core/config.js';
import { CHROMIUM_ARGS, forwardConsole, waitInPage } from './browser/browser.js';
import { root } from './browser/client-bundle.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { postJson, waitFor } from './helpers.js';

declare global {
  interface Window {
    RHTMXFieldSync: FieldSync;
    __events: Array<{ name: string; detail: any }>;
  }
}

/** A folder with a fresh rhtmx-field.js for the engine to serve (never a half-written dist/). */
let clientDir: Promise<string> | null = null;
function buildFieldClient(): Promise<string> {
  clientDir ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rhtmx-field-client-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    await build({
      entryPoints: [join(root, 'src/client/field-index.ts')],
      outfile: join(dir, 'rhtmx-field.js'),
      bundle: true,
      minify: true,
      target: ['es2020'],
      format: 'iife',
      legalComments: 'none',
      logLevel: 'warning',
    });
    return dir;
  })();
  return clientDir;
}

/**
 * The page is served by route (the fixture server renders only client.js
 * pages), which Chromium treats as a public page talking to a loopback
 * server: without this switch its Local Network Access check blocks the
 * WebSockets. A real app serves the page from its own origin.
 */
const launchBrowser = () =>
  chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: [...CHROMIUM_ARGS, '--disable-features=LocalNetworkAccessChecks'],
  });

/** The seed's markup: the field client script tag, and a `window` listener for conflicts (the events bubble to it). */
const pageHtml = (strategy: string) => `<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <script>
    window.__events = [];
    for (const name of ['rhtmx:field:conflict', 'rhtmx:sync:error', 'rhtmx:todos:changed']) {
      window.addEventListener(name, (event) => window.__events.push({ name, detail: event.detail }));
    }
  </script>
  <script src="/api/sync/field-client.js" data-sync-entities="todos" data-field-strategy="${strategy}" data-debug="true"></script>
</head>
<body><h1>Todos</h1></body>
</html>`;

interface Client {
  context: BrowserContext;
  /** While set, the page and the script come from a local copy (as a service worker's cache would serve them). */
  offline: boolean;
  page: Page;
  /** Field WebSockets this context opened, by page label (only the leader tab should). */
  fieldSockets: string[];
  /** `push_fields` messages sent on them. */
  pushes: any[];
  open(label: string): Promise<Page>;
}

/**
 * A browser (context) whose pages are the seed's markup (served by route)
 * loading the field client from the engine (`/api/sync/field-client.js`);
 * while offline the script comes from a local copy, as a service worker's
 * cache would serve it, so a page can be reloaded offline.
 */
async function newClient(
  browser: Browser,
  fixture: Fixture,
  strategy: string,
  label: string,
  setup?: (context: BrowserContext) => Promise<unknown>,
): Promise<Client> {
  const context = await browser.newContext();
  await setup?.(context);
  const script = readFileSync(join(await buildFieldClient(), 'rhtmx-field.js'));
  await context.route(`${fixture.url}/field`, (route) => route.fulfill({ contentType: 'text/html', body: pageHtml(strategy) }));
  await context.route(`${fixture.url}/api/sync/field-client.js`, (route) =>
    client.offline ? route.fulfill({ contentType: 'text/javascript', body: script }) : route.continue(),
  );
  const fieldSockets: string[] = [];
  const pushes: any[] = [];
  const client: Client = {
    context,
    offline: false,
    page: undefined as unknown as Page,
    fieldSockets,
    pushes,
    async open(name) {
      const page = await context.newPage();
      forwardConsole(page, name);
      page.on('websocket', (socket) => {
        if (!socket.url().includes('/api/field-sync/ws')) return;
        fieldSockets.push(name);
        socket.on('framesent', ({ payload }) => {
          const message = JSON.parse(String(payload));
          if (message.type === 'push_fields') pushes.push(message);
        });
      });
      await page.goto(`${fixture.url}/field`);
      await page.evaluate(() => window.RHTMXFieldSync.pending());
      return page;
    },
  };
  client.page = await client.open(label);
  await client.page.evaluate(() => window.RHTMXFieldSync.ready);
  await waitInPage(client.page, () => window.rhtmxSync.state().state === 'websocket', 10_000, `${label} online`);
  return client;
}

const createRow = async (fixture: Fixture, id: string, title: string) => {
  const { body } = await postJson(`${fixture.url}/api/sync/todos`, { changes: [{ id, action: 'create', data: { title, done: false } }] });
  assert.equal(body.results[0].status, 'applied');
};

const serverRow = (fixture: Fixture, id: string) =>
  fixture.db.prepare('SELECT id, title, done, updated_at FROM todos WHERE id = ?').get(id) as
    | { id: string; title: string; done: number; updated_at: string | null }
    | undefined;

const logEntries = (fixture: Fixture, id: string) =>
  fixture.db.prepare("SELECT COUNT(*) FROM _rhtmx_sync_log WHERE entity = 'todos' AND entity_id = ?").pluck().get(id) as number;

/** Wait until the browser's IndexedDB row has these values. */
const hasRow = (page: Page, id: string, expected: Record<string, unknown>, what: string) =>
  waitInPage(
    page,
    async ([rowId, want]) => {
      const row = await window.rhtmxSync.get('todos', rowId);
      return row && Object.entries(want).every(([key, value]) => JSON.stringify(row[key]) === JSON.stringify(value));
    },
    15_000,
    what,
    [id, expected] as [string, Record<string, unknown>],
  );

const drained = (page: Page, what: string) =>
  waitInPage(page, async () => (await window.RHTMXFieldSync.pending()).length === 0, 15_000, what);

const events = (page: Page, name: string) =>
  page.evaluate((wanted) => window.__events.filter((event) => event.name === wanted).map((event) => event.detail), name);

const setOffline = (client: Client, offline: boolean) => {
  client.offline = offline;
  return client.context.setOffline(offline);
};

const goOffline = async (client: Client) => {
  await setOffline(client, true);
  await waitInPage(client.page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline');
};

/**
 * Browser A, offline, edits title and updated_at (twice) and reloads;
 * browser B, online, edits title and done. A comes back: its queue flushes
 * once, in order. Returns both clients for the strategy-specific assertions.
 */
async function concurrentEdits(browser: Browser, fixture: Fixture, strategy: string, id: string) {
  await createRow(fixture, id, 'start');
  const a = await newClient(browser, fixture, strategy, `${strategy}-A`);
  const b = await newClient(browser, fixture, strategy, `${strategy}-B`);
  await Promise.all([hasRow(a.page, id, { title: 'start' }, 'A has the row'), hasRow(b.page, id, { title: 'start' }, 'B has the row')]);

  await goOffline(a);
  await a.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'title', 'A title'), id);
  // Edited twice: the second edit is based on the first, never a conflict with it, whatever the strategy.
  await a.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'updated_at', 'A draft'), id);
  const entry = await a.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'updated_at', 'A time'), id);
  assert.equal(entry.field, 'updated_at');
  assert.ok(entry.base_version && entry.base_version > 0, 'based on the version A saw');
  // Applied locally at once, visible to the entity-level API and its changed event.
  assert.deepEqual(await a.page.evaluate((rowId) => window.rhtmxSync.get('todos', rowId), id), {
    id,
    title: 'A title',
    done: false,
    updated_at: 'A time',
  });
  await waitInPage(a.page, () => window.__events.some((event) => event.name === 'rhtmx:todos:changed'), 10_000, 'changed event');

  // Reload while offline: the field outbox is durable.
  await a.page.close();
  a.page = await a.open(`${strategy}-A2`);
  const pending = await a.page.evaluate(() => window.RHTMXFieldSync.pending());
  assert.deepEqual(
    pending.map((change) => [change.entity_id, change.field, change.value]),
    [
      [id, 'title', 'A title'],
      [id, 'updated_at', 'A draft'],
      [id, 'updated_at', 'A time'],
    ],
  );
  assert.ok(pending[0]!.mutation_id < pending[1]!.mutation_id && pending[1]!.mutation_id < pending[2]!.mutation_id);
  assert.equal(
    (await a.page.evaluate((rowId) => window.rhtmxSync.get('todos', rowId), id))?.title,
    'A title',
    'still applied after reload',
  );
  assert.equal(serverRow(fixture, id)?.title, 'start', 'nothing reached the server while offline');

  // B edits the same row online: title (the same field) and done (a field A did not touch).
  await b.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'title', 'B title'), id);
  await b.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'done', true), id);
  await drained(b.page, 'B pushed');
  assert.deepEqual(serverRow(fixture, id), { id, title: 'B title', done: 1, updated_at: null });

  await setOffline(a, false);
  await drained(a.page, 'A pushed after reconnecting');
  // push_fields over the field socket, in mutation order; a push never holds one field twice.
  const sent = (index: number) => [pending[index]!.field, pending[index]!.mutation_id];
  assert.deepEqual(
    a.pushes.map((push) => push.fields.map((field: any) => [field.field, field.mutation_id])),
    [[sent(0), sent(1)], [sent(2)]],
  );
  return { a, b };
}

async function expectOutcome(browser: Browser, fixture: Fixture, strategy: string, id: string, winner: 'A title' | 'B title') {
  const { a, b } = await concurrentEdits(browser, fixture, strategy, id);
  const expected = { title: winner, done: true, updated_at: 'A time' };
  await waitFor(() => serverRow(fixture, id)?.updated_at === 'A time', 10_000, 'A on the server');
  assert.deepEqual(serverRow(fixture, id), { id, ...expected, done: 1 });
  await Promise.all([hasRow(a.page, id, expected, 'A converged'), hasRow(b.page, id, expected, 'B converged')]);
  // create, B's two fields, A's two updated_at edits, and A's title only where it won: every change applied once.
  assert.equal(logEntries(fixture, id), winner === 'A title' ? 6 : 5);

  // Round two, the same field only: a losing push writes nothing, so only the
  // strategy's outcome applied locally puts the server's value in A's row.
  await goOffline(a);
  await a.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'title', 'A again'), id);
  await b.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'title', 'B again'), id);
  // A later write of another field: A's replica then holds a row newer than the title it lost to.
  await b.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'done', false), id);
  await drained(b.page, 'B pushed again');
  await setOffline(a, false);
  await drained(a.page, 'A pushed again');
  const again = winner === 'A title' ? 'A again' : 'B again';
  await waitFor(() => serverRow(fixture, id)?.title === again, 10_000, 'round two on the server');
  await Promise.all([
    hasRow(a.page, id, { title: again, done: false }, 'A converged again'),
    hasRow(b.page, id, { title: again, done: false }, 'B converged again'),
  ]);

  assert.deepEqual(await events(b.page, 'rhtmx:field:conflict'), []);
  assert.deepEqual(await events(a.page, 'rhtmx:sync:error'), []);
  const conflicts: FieldConflictDetail[] = await events(a.page, 'rhtmx:field:conflict');
  return { a, b, conflicts };
}

/** A's two lost title edits, as `rhtmx:field:conflict` reported them. */
const loserConflicts = (conflicts: FieldConflictDetail[], id: string, strategy: string) => {
  assert.equal(conflicts.length, 2, JSON.stringify(conflicts));
  for (const [conflict, round] of [
    [conflicts[0]!, 'title'],
    [conflicts[1]!, 'again'],
  ] as const) {
    assert.equal(conflict.entity, 'todos');
    assert.equal(conflict.id, id);
    assert.equal(conflict.field, 'title');
    assert.equal(conflict.server_value, `B ${round}`);
    assert.equal(conflict.client_value, `A ${round}`);
    assert.equal(conflict.strategy, strategy);
    assert.equal(conflict.result.status, 'conflict');
  }
  return conflicts;
};

describe('field client in the browser', () => {
  let browser: Browser;
  before(async () => {
    [browser] = await Promise.all([launchBrowser(), buildFieldClient()]);
  });
  after(() => browser?.close());

  describe('last-write-wins', () => {
    let fixture: Fixture;
    before(async () => {
      fixture = await startFixture({ fieldSync: FieldMergeStrategy.LastWriteWins, clientDir: await buildFieldClient() });
    });
    after(() => fixture?.close());

    test('different fields both survive; the same field goes to the later edit (B), A is told', async () => {
      const { a, b, conflicts } = await expectOutcome(browser, fixture, 'last-write-wins', 'lww1', 'B title');
      loserConflicts(conflicts, 'lww1', 'last-write-wins');
      await Promise.all([a.context.close(), b.context.close()]);
    });

    test('a client clock an hour fast does not beat a later honest edit', async () => {
      await createRow(fixture, 'skew1', 'start');
      const skewed = await newClient(browser, fixture, 'last-write-wins', 'skewed', (context) =>
        context.addInitScript(() => {
          const now = Date.now.bind(Date);
          Date.now = () => now() + 3_600_000;
        }),
      );
      const honest = await newClient(browser, fixture, 'last-write-wins', 'honest');
      assert.ok((await skewed.page.evaluate(() => Date.now())) - Date.now() > 3_000_000, 'the skewed clock is an hour fast');
      await hasRow(honest.page, 'skew1', { title: 'start' }, 'honest has the row');

      // The honest browser is offline, so its edit is concurrent with the skewed one (it never saw it).
      await goOffline(honest);
      await skewed.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'skew1', 'title', 'from the future'));
      await drained(skewed.page, 'skewed pushed');
      assert.equal(serverRow(fixture, 'skew1')?.title, 'from the future');
      const stored = await skewed.page.evaluate(() => window.RHTMXFieldSync.latest('todos', 'skew1'));
      assert.ok(stored && stored.fields.title!.hlc / 4096 <= Date.now(), 'the server ordered it by its arrival');

      await honest.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'skew1', 'title', 'honest and later'));
      await setOffline(honest, false);
      await drained(honest.page, 'honest pushed');
      assert.equal(serverRow(fixture, 'skew1')?.title, 'honest and later');
      await hasRow(skewed.page, 'skew1', { title: 'honest and later' }, 'the skewed browser converged');
      await hasRow(honest.page, 'skew1', { title: 'honest and later' }, 'the honest browser kept its edit');
      assert.deepEqual(await events(honest.page, 'rhtmx:field:conflict'), []);
      await Promise.all([skewed.context.close(), honest.context.close()]);
    });

    test('two tabs: only the leader opens a field socket; a follower edit and a row delete go through it', async () => {
      await createRow(fixture, 'tab1', 'start');
      const client = await newClient(browser, fixture, 'last-write-wins', 'tab-1');
      const second = await client.open('tab-2');
      await second.evaluate(() => window.RHTMXFieldSync.ready);
      const leaders = await Promise.all([client.page, second].map((page) => page.evaluate(() => window.rhtmxSync.state().leader)));
      assert.deepEqual(leaders.filter(Boolean).length, 1, 'one leader');
      const follower = leaders[0] ? second : client.page;
      await hasRow(follower, 'tab1', { title: 'start' }, 'the follower has the row');

      await follower.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'tab1', 'title', 'from the follower'));
      await waitFor(() => serverRow(fixture, 'tab1')?.title === 'from the follower', 10_000, 'the follower edit on the server');
      await Promise.all([client.page, second].map((page) => hasRow(page, 'tab1', { title: 'from the follower' }, 'both tabs')));
      await follower.evaluate(() => window.RHTMXFieldSync.deleteRow('todos', 'tab1'));
      await waitFor(() => !serverRow(fixture, 'tab1'), 10_000, 'the row deleted on the server');
      await Promise.all(
        [client.page, second].map((page) =>
          waitInPage(page, async () => !(await window.rhtmxSync.get('todos', 'tab1')), 10_000, 'deleted in both tabs'),
        ),
      );
      assert.deepEqual(client.fieldSockets, [leaders[0] ? 'tab-1' : 'tab-2'], 'only the leader opened a field socket');
      await client.context.close();
    });
  });

  describe('without the field socket', () => {
    let fixture: Fixture;
    before(async () => {
      fixture = await startFixture({ fieldSync: FieldMergeStrategy.LastWriteWins, clientDir: await buildFieldClient() });
    });
    after(() => fixture?.close());

    test('a refused field socket falls back to HTTP POST; a rejected change does not block the next', async () => {
      await createRow(fixture, 'http1', 'start');
      await createRow(fixture, 'http1b', 'start');
      const client = await newClient(browser, fixture, 'last-write-wins', 'http', async (context) => {
        await context.routeWebSocket(/\/api\/field-sync\/ws/, (socket) => socket.close());
      });
      const posts: string[] = [];
      client.page.on('request', (request) => {
        if (request.method() === 'POST' && request.url().includes('/api/field-sync/todos')) posts.push(request.postData() ?? '');
      });
      await hasRow(client.page, 'http1b', { title: 'start' }, 'the rows arrived');
      // NOT NULL column: the server rejects null for title; the change behind it still applies.
      await client.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'http1', 'title', null));
      await client.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'http1b', 'done', true));
      await drained(client.page, 'pushed over HTTP');
      await waitFor(() => serverRow(fixture, 'http1b')?.done === 1, 10_000, 'done on the server');
      assert.equal(serverRow(fixture, 'http1')?.title, 'start');
      assert.ok(posts.length >= 1, 'pushed with POST');
      const [rejected] = await waitInPage(
        client.page,
        () => window.__events.filter((event) => event.name === 'rhtmx:field:conflict').map((event) => event.detail),
        10_000,
        'rejection reported',
      );
      assert.equal(rejected.result.status, 'rejected');
      assert.equal(rejected.field, 'title');
      assert.equal(rejected.result.reason, 'NOT NULL constraint failed: todos.title');
      // The rejected value is replaced by the server's (nothing was written, so only the client can restore it).
      await hasRow(client.page, 'http1', { title: 'start' }, 'the row reverted to the server title');
      await hasRow(client.page, 'http1b', { done: true }, 'the change behind the rejection');
      await client.context.close();
    });

    test('while a push keeps failing, a newer server row does not hide the pending edit; the retry applies it', async () => {
      await createRow(fixture, 'http2', 'start');
      const client = await newClient(browser, fixture, 'last-write-wins', 'retry', async (context) => {
        await context.routeWebSocket(/\/api\/field-sync\/ws/, (socket) => socket.close());
      });
      let failing = true;
      await client.page.route('**/api/field-sync/todos', (route) => (failing ? route.abort('connectionreset') : route.continue()));
      await client.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'http2', 'title', 'pending title'));
      // The entity connection brings a newer server row; the pending title is re-applied on top of it.
      fixture.externalWrite("UPDATE todos SET done = 1 WHERE id = 'http2'");
      await hasRow(client.page, 'http2', { title: 'pending title', done: true }, 'server change merged under the pending edit');
      assert.equal((await client.page.evaluate(() => window.RHTMXFieldSync.pending())).length, 1);
      assert.equal(serverRow(fixture, 'http2')?.title, 'start');

      failing = false;
      // A new edit flushes at once instead of waiting for the backoff timer.
      await client.page.evaluate(() => window.RHTMXFieldSync.recordFieldChange('todos', 'http2', 'updated_at', 'later'));
      await drained(client.page, 'retried');
      assert.deepEqual(serverRow(fixture, 'http2'), { id: 'http2', title: 'pending title', done: 1, updated_at: 'later' });
      await hasRow(client.page, 'http2', { title: 'pending title', done: true, updated_at: 'later' }, 'converged');
      assert.deepEqual(await events(client.page, 'rhtmx:field:conflict'), []);
      await client.context.close();
    });
  });

  for (const [strategy, winner] of [
    [FieldMergeStrategy.ServerWins, 'B title'],
    [FieldMergeStrategy.ClientWins, 'A title'],
    [FieldMergeStrategy.KeepBoth, 'B title'],
  ] as const) {
    describe(strategy, () => {
      let fixture: Fixture;
      before(async () => {
        fixture = await startFixture({ fieldSync: strategy, clientDir: await buildFieldClient() });
      });
      after(() => fixture?.close());

      test(`different fields both survive; the same field ends as ${strategy} says`, async () => {
        const id = `${strategy}-1`;
        const { a, b, conflicts } = await expectOutcome(browser, fixture, strategy, id, winner);
        if (strategy === FieldMergeStrategy.ClientWins) assert.deepEqual(conflicts, [], 'client-wins applies the offline edits');
        else loserConflicts(conflicts, id, strategy);
        if (strategy === FieldMergeStrategy.KeepBoth) {
          // The server kept its value and reported both; the app decides and pushes the resolution, which applies.
          assert.equal(conflicts[1]!.result.server_value, 'B again');
          assert.equal(conflicts[1]!.result.client_value, 'A again');
          await a.page.evaluate((rowId) => window.RHTMXFieldSync.recordFieldChange('todos', rowId, 'title', 'A and B'), id);
          await drained(a.page, 'resolution pushed');
          assert.equal(serverRow(fixture, id)?.title, 'A and B');
          await hasRow(b.page, id, { title: 'A and B' }, 'B sees the resolution');
          assert.equal((await events(a.page, 'rhtmx:field:conflict')).length, 2, 'the resolution is not a conflict');
        }
        await Promise.all([a.context.close(), b.context.close()]);
      });
    });
  }
});
