/**
 * The demo (examples/todo) is the product's acceptance test: run it as a real
 * child process, exactly as `npm start` does, and use it over HTTP, through
 * the sync API, from another SQLite connection and from a real browser.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { type Demo, startDemo } from './browser/demo-server.js';
import { getJson, SseClient, waitFor } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const form = (fields: Record<string, string>) => ({
  headers: { 'content-type': 'application/x-www-form-urlencoded', 'hx-request': 'true' },
  body: new URLSearchParams(fields).toString(),
});

async function request(url: string, method: string, init: { headers?: Record<string, string>; body?: string } = {}) {
  const response = await fetch(url, { method, ...init });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

/** The ids of the rows in a list fragment, in order. */
const listedIds = (fragment: string) => [...fragment.matchAll(/<li [^>]*data-id="([^"]+)"/g)].map((match) => match[1]);
/** The `<li>` of one row. */
const rowHtml = (fragment: string, id: string) => new RegExp(`<li [^>]*data-id="${id}"[\\s\\S]*?</li>`).exec(fragment)?.[0] ?? '';

describe('demo: examples/todo', () => {
  let dir: string;
  let demo: Demo;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rhtmx-demo-'));
    demo = await startDemo(join(dir, 'todo.db'));
  });

  after(async () => {
    await demo?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('GET / is the full page with htmx, the sync client and a live list', async () => {
    const page = await request(`${demo.url}/`, 'GET');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(page.text, /^<!doctype html>/i);
    assert.ok(
      page.text.includes(
        '<script src="/api/sync/client.js" data-sync-entities="todos" data-service-worker="true" data-debug="false"></script>',
      ),
    );
    assert.ok(page.text.includes('<script src="/vendor/htmx.min.js"></script>'));
    // Live HTML: the list refetches only when pushed fragments did not land.
    assert.ok(page.text.includes('hx-trigger="load, rhtmx:todos:changed[!detail.swapped] from:body"'));
    assert.ok(page.text.includes('data-rhtmx-live="todos"'), 'the list says where pushed creates go');
    assert.ok(page.text.includes('id="sync-connection"'), 'the sync status panel');
    // Nothing from the network: every asset is served by the demo itself.
    assert.doesNotMatch(page.text, /(src|href)="(https?:)?\/\//);

    const htmx = await fetch(`${demo.url}/vendor/htmx.min.js`);
    assert.equal(htmx.status, 200);
    assert.match(htmx.headers.get('content-type') ?? '', /javascript/);
    assert.equal(await htmx.text(), readFileSync(join(root, 'node_modules/htmx.org/dist/htmx.min.js'), 'utf8'));

    const client = await fetch(`${demo.url}/api/sync/client.js`);
    assert.equal(client.status, 200);
    assert.match(client.headers.get('content-type') ?? '', /javascript/);
    await client.arrayBuffer();

    // The offline service worker the page registers (scope `/`, allowed by the header).
    const worker = await fetch(`${demo.url}/api/sync/sw.js`);
    assert.equal(worker.status, 200);
    assert.match(worker.headers.get('content-type') ?? '', /javascript/);
    assert.equal(worker.headers.get('service-worker-allowed'), '/');
    await worker.arrayBuffer();

    const health = await getJson(`${demo.url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(health.body.ok, true);

    const metrics = await request(`${demo.url}/metrics`, 'GET');
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /^rhtmx_connections\{transport="websocket"\} \d+$/m);
    assert.match(metrics.text, /^rhtmx_log_size \d+$/m);
  });

  test('add, toggle, rename and delete through the htmx routes, each visible in the sync log', async () => {
    const start = (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.version as number;

    const created = await request(`${demo.url}/todos`, 'POST', form({ title: '  Buy   milk ' }));
    assert.equal(created.status, 200);
    assert.match(created.headers.get('content-type') ?? '', /^text\/html/);
    assert.doesNotMatch(created.text, /<html/i, 'a fragment, not a page');
    const [id] = listedIds(created.text);
    assert.ok(id, 'the new row is in the returned list');
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID (v7)');
    assert.match(rowHtml(created.text, id), /value="Buy milk"/, 'title trimmed and spaces collapsed');
    assert.match(rowHtml(created.text, id), /aria-checked="false"/);

    const snapshot = await getJson(`${demo.url}/api/sync/todos?since=0`);
    const row = snapshot.body.changes.find((change: any) => change.id === id);
    assert.ok(row, 'the new row is in the sync snapshot');
    assert.equal(row.data.title, 'Buy milk');
    assert.equal(row.data.done, false);
    assert.ok(!Number.isNaN(Date.parse(row.data.updated_at)), 'updated_at is an ISO time');
    const afterCreate = snapshot.body.version as number;
    assert.ok(afterCreate > start);

    // The list fragment is the same thing GET /todos answers with.
    const listed = await request(`${demo.url}/todos`, 'GET');
    assert.equal(listed.status, 200);
    assert.deepEqual(listedIds(listed.text), listedIds(created.text));

    // Toggle like the page's checkbox does (form field done=true), then back with JSON.
    const toggled = await request(`${demo.url}/todos/${id}`, 'PATCH', form({ done: 'true' }));
    assert.equal(toggled.status, 200);
    assert.match(rowHtml(toggled.text, id), /class="todo done"/);
    assert.match(rowHtml(toggled.text, id), /aria-checked="true"/);
    let log = await getJson(`${demo.url}/api/sync/todos?since=${afterCreate}`);
    assert.deepEqual(
      log.body.changes.map((change: any) => [change.id, change.action, change.data?.done]),
      [[id, 'update', true]],
    );
    const afterToggle = log.body.version as number;

    const checkbox = await request(`${demo.url}/todos/${id}`, 'PATCH', form({ done: 'on' }));
    assert.equal(checkbox.status, 200, "a plain checkbox's 'on' is accepted");
    const back = await request(`${demo.url}/todos/${id}`, 'PATCH', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ done: false, title: 'Buy oat milk' }),
    });
    assert.equal(back.status, 200);
    assert.match(rowHtml(back.text, id), /class="todo"/);
    assert.match(rowHtml(back.text, id), /value="Buy oat milk"/);
    log = await getJson(`${demo.url}/api/sync/todos?since=${afterToggle}`);
    const last = log.body.changes.at(-1);
    assert.equal(last.id, id);
    assert.equal(last.data.title, 'Buy oat milk');
    assert.equal(last.data.done, false);
    const beforeDelete = log.body.version as number;

    const deleted = await request(`${demo.url}/todos/${id}`, 'DELETE', { headers: { 'hx-request': 'true' } });
    assert.equal(deleted.status, 200);
    assert.ok(!listedIds(deleted.text).includes(id), 'the row is gone from the list');
    log = await getJson(`${demo.url}/api/sync/todos?since=${beforeDelete}`);
    assert.deepEqual(
      log.body.changes.map((change: any) => [change.id, change.action]),
      [[id, 'delete']],
    );
    // Deleting again is harmless: the list is what the page needs.
    assert.equal((await request(`${demo.url}/todos/${id}`, 'DELETE')).status, 200);
  });

  test('invalid writes answer 4xx with a message htmx swaps into the error slot', async () => {
    const before = (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.version as number;
    for (const title of ['', '   ', 'x'.repeat(201)]) {
      const answer = await request(`${demo.url}/todos`, 'POST', form({ title }));
      assert.equal(answer.status, 400, `title ${JSON.stringify(title.slice(0, 10))}`);
      assert.match(answer.text, /<p class="error">[^<]+<\/p>/);
      assert.equal(answer.headers.get('hx-retarget'), '#form-error');
    }
    const missingField = await request(`${demo.url}/todos`, 'POST', form({}));
    assert.equal(missingField.status, 400);
    const json = await request(`${demo.url}/todos`, 'POST', { headers: { 'content-type': 'application/json' }, body: '{"title": ""}' });
    assert.equal(json.status, 400);
    const badJson = await request(`${demo.url}/todos`, 'POST', { headers: { 'content-type': 'application/json' }, body: '{' });
    assert.equal(badJson.status, 400);
    // Exactly 200 characters is fine.
    const longest = await request(`${demo.url}/todos`, 'POST', form({ title: 'y'.repeat(200) }));
    assert.equal(longest.status, 200);

    const badDone = await request(`${demo.url}/todos/whatever`, 'PATCH', form({ done: 'maybe' }));
    assert.equal(badDone.status, 400);
    const missing = await request(`${demo.url}/todos/no-such-id`, 'PATCH', form({ done: 'true' }));
    assert.equal(missing.status, 404);
    const nothing = await request(`${demo.url}/todos/no-such-id`, 'PATCH', form({}));
    assert.equal(nothing.status, 400);

    // Only the valid 200-character title reached the database.
    const log = await getJson(`${demo.url}/api/sync/todos?since=${before}`);
    assert.deepEqual(
      log.body.changes.map((change: any) => change.data?.title),
      ['y'.repeat(200)],
    );
  });

  test('a raw SQL insert from another process shows up in the sync API and the list', async () => {
    const since = (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.version as number;
    const other = new Database(demo.dbPath);
    try {
      other.pragma('busy_timeout = 5000');
      other
        .prepare("INSERT INTO todos (id, title, done, updated_at) VALUES ('from-sql', 'Written with raw SQL', 0, datetime('now'))")
        .run();
    } finally {
      other.close();
    }
    const change = await waitFor(
      async () => (await getJson(`${demo.url}/api/sync/todos?since=${since}`)).body.changes.find((c: any) => c.id === 'from-sql'),
      5000,
      'the raw insert in the sync log',
    );
    assert.equal(change.action, 'create');
    assert.equal(change.data.title, 'Written with raw SQL');
    assert.equal(change.data.done, false);
    const list = await request(`${demo.url}/todos`, 'GET');
    assert.ok(listedIds(list.text).includes('from-sql'));
  });

  // The README's "write with the sqlite3 CLI": the system's CLI may be an older SQLite than better-sqlite3's
  // (Debian 12 ships 3.40), and the change-capture triggers run inside *its* engine.
  const sqliteCli = spawnSync('sqlite3', ['--version'], { encoding: 'utf8' });
  test(`the sqlite3 CLI (${sqliteCli.stdout?.split(' ')[0] ?? 'not installed'}) can write and the write is synced`, {}, async () => {
    const since = (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.version as number;
    const cli = spawnSync(
      'sqlite3',
      [
        demo.dbPath,
        "insert into todos (id, title, done, updated_at) values ('from-cli', 'Written from the sqlite3 CLI', 0, datetime('now'))",
      ],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 0, cli.stderr);
    const change = await waitFor(
      async () => (await getJson(`${demo.url}/api/sync/todos?since=${since}`)).body.changes.find((c: any) => c.id === 'from-cli'),
      5000,
      'the CLI insert in the sync log',
    );
    assert.equal(change.data.title, 'Written from the sqlite3 CLI');
  });

  test('a write through the app reaches live subscribers (SSE) at once', async () => {
    const stream = new SseClient(`${demo.url}/api/sync/events?entities=todos`);
    try {
      await waitFor(() => stream.status === 200, 5000, 'the event stream to open');
      const created = await request(`${demo.url}/todos`, 'POST', form({ title: 'Live one' }));
      const id = listedIds(created.text).find((candidate) => rowHtml(created.text, candidate as string).includes('Live one'));
      assert.ok(id);
      const change = await waitFor(() => stream.changes().find((c: any) => c.id === id), 5000, 'the live change');
      assert.equal(change.action, 'create');
      assert.equal(change.data.title, 'Live one');
    } finally {
      stream.close();
    }
  });

  test('in a real browser with the sync client: another tab and a raw SQL write appear live', async (t) => {
    if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is not installed`);
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const context = await browser.newContext();
      const [one, two] = [await context.newPage(), await context.newPage()];
      const errors: string[] = [];
      for (const page of [one, two]) {
        page.on('pageerror', (error) => errors.push(String(error)));
        await page.goto(`${demo.url}/`);
      }
      const hasClient = await one.evaluate('typeof window.rhtmxSync?.push === "function" && typeof window.rhtmxSync?.all === "function"');
      if (!hasClient) return t.skip('the browser client (window.rhtmxSync) is not built yet');

      // The panel reports a live transport.
      await one.waitForFunction('["websocket", "sse"].includes(document.getElementById("sync-connection").dataset.state)', null, {
        timeout: 10_000,
      });

      // Written in tab one, seen in tab two without a reload.
      await one.locator('#add-form input[name="title"]').fill('Seen in the other tab');
      await one.locator('#add-form input[name="title"]').press('Enter');
      await two.locator('#todo-list .title[value="Seen in the other tab"]').waitFor({ timeout: 10_000 });
      await two.locator('#sync-activity .what', { hasText: 'Seen in the other tab' }).first().waitFor({ timeout: 10_000 });

      // Written by another process straight into SQLite, seen in both as pushed HTML: no GET /todos.
      // Counted once both tabs hold the local copy: filling it (rows pulled, no HTML) refetches the list once.
      for (const page of [one, two]) {
        await page.evaluate('window.rhtmxSync.ready');
        await page.evaluate('new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))');
      }
      let listGets = 0;
      for (const page of [one, two]) {
        page.on('request', (request) => {
          if (request.method() === 'GET' && new URL(request.url()).pathname === '/todos') listGets++;
        });
      }
      const other = new Database(demo.dbPath);
      try {
        other.pragma('busy_timeout = 5000');
        other.prepare("INSERT INTO todos (id, title, done) VALUES ('live-sql', 'Straight into SQLite', 0)").run();
        for (const page of [one, two]) await page.locator('#todo-list .title[value="Straight into SQLite"]').waitFor({ timeout: 10_000 });
        other.prepare("UPDATE todos SET done = 1 WHERE id = 'live-sql'").run();
        for (const page of [one, two]) await page.locator('#todo-live-sql.done').waitFor({ timeout: 10_000 });
        other.prepare("DELETE FROM todos WHERE id = 'live-sql'").run();
        for (const page of [one, two]) await page.locator('#todo-live-sql').waitFor({ state: 'detached', timeout: 10_000 });
        // The count line came out of band with each of the three.
        const { total, left } = other.prepare('SELECT count(*) AS total, sum(NOT done) AS left FROM todos').get() as any;
        const line = total === 0 ? /Nothing to do/ : left === 0 ? /All done/ : new RegExp(`${left} of ${total} left`);
        for (const page of [one, two]) assert.match((await page.locator('#todo-count').textContent()) ?? '', line);
      } finally {
        other.close();
      }
      assert.equal(listGets, 0, 'the raw SQL writes reached both pages without a refetch of the list');
      // The activity panel says which path the change took.
      await two.locator('#sync-activity .what', { hasText: 'pushed HTML' }).first().waitFor({ timeout: 10_000 });
      assert.deepEqual(errors, [], 'no uncaught errors in the pages');
    } finally {
      await browser.close();
    }
  });

  // The test above once failed under load: tab two's `load`-triggered GET /todos came back after tab one's
  // write, so the row was already drawn when its change event arrived, and the activity log's old timing
  // heuristic filed it as "loaded into IndexedDB". Here that ordering is forced, every time.
  test("the activity log names another tab's write even when the list was re-fetched before its event", async (t) => {
    if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is not installed`);
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const context = await browser.newContext();
      const [one, two] = [await context.newPage(), await context.newPage()];
      await one.goto(`${demo.url}/`);
      await one.waitForFunction('["websocket", "sse"].includes(document.getElementById("sync-connection").dataset.state)', null, {
        timeout: 10_000,
      });
      const title = `Re-fetched first ${Date.now()}`;
      // Tab two's first GET /todos is answered only once the write is in the table (a slow server).
      let held = false;
      await two.route('**/todos', async (route) => {
        if (route.request().method() === 'GET' && !held) {
          held = true;
          await waitFor(
            async () => (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.changes.some((c: any) => c.data?.title === title),
            15_000,
            'the write in the table',
          );
        }
        return route.continue();
      });
      await two.goto(`${demo.url}/`);
      await one.locator('#add-form input[name="title"]').fill(title);
      await one.locator('#add-form input[name="title"]').press('Enter');
      await two.locator('#sync-activity .what', { hasText: title }).first().waitFor({ timeout: 10_000 });
      assert.equal(await two.locator('#sync-activity [data-action="load"]').count(), 0, 'no edit filed as a load');
    } finally {
      await browser.close();
    }
  });

  test('in a real browser: htmx adds, toggles and deletes; screenshot to .tmp/demo.png', async (t) => {
    if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is not installed`);
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
      const errors: string[] = [];
      page.on('pageerror', (error) => errors.push(String(error)));
      const offsite: string[] = [];
      page.on('request', (req) => {
        if (!req.url().startsWith(demo.url)) offsite.push(req.url());
      });
      await page.goto(`${demo.url}/`);
      await page.waitForFunction(() => typeof (window as any).htmx === 'object');

      // Add two todos with the form (Enter submits, htmx swaps the list, the form clears).
      const input = page.locator('#add-form input[name="title"]');
      for (const title of ['Water the plants', 'Call the bank about the card']) {
        await input.fill(title);
        await input.press('Enter');
        await page.waitForFunction(
          (text) => [...document.querySelectorAll<HTMLInputElement>('#todo-list .title')].some((el) => el.value === text),
          title,
        );
        await page.waitForFunction(() => (document.querySelector('#add-form input') as HTMLInputElement).value === '');
      }

      // Toggle "Water the plants" done with its checkbox button.
      const row = page.locator('#todo-list .todo', { has: page.locator('input[value="Water the plants"]') });
      await row.locator('.check').click();
      await page.waitForFunction(() =>
        [...document.querySelectorAll('#todo-list .todo.done .title')].some((el) => (el as HTMLInputElement).value === 'Water the plants'),
      );

      // An empty (whitespace) title: the browser's `required` passes it, the server answers 400 into the error slot.
      await input.fill('   ');
      await input.press('Enter');
      await page.locator('#form-error .error').waitFor();
      assert.match((await page.locator('#form-error').textContent()) ?? '', /title/i);
      await input.fill('');

      // Rename inline: edit the title and press Enter (change event → PATCH).
      const bank = page.locator('#todo-list .todo', { has: page.locator('input[value="Call the bank about the card"]') }).locator('.title');
      await bank.fill('Call the bank');
      await bank.press('Enter');
      await waitFor(
        async () => (await getJson(`${demo.url}/api/sync/todos?since=0`)).body.changes.some((c: any) => c.data?.title === 'Call the bank'),
        5000,
        'the rename to reach the database',
      );
      await page.locator('#add-form input').focus();

      // Delete the 200-character todo left by the validation test.
      const long = page.locator('#todo-list .todo', { has: page.locator(`input[value="${'y'.repeat(200)}"]`) });
      await long.hover();
      await long.locator('.delete').click();
      await long.waitFor({ state: 'detached' });
      // The error from earlier was cleared by the successful writes.
      assert.equal(await page.locator('#form-error').textContent(), '');

      // The sync panel shows the version the list was read at.
      const version = (await getJson(`${demo.url}/healthz`)).body.version as number;
      await page.waitForFunction((v) => Number(document.getElementById('sync-version')?.textContent) >= v - 1, version);

      mkdirSync(join(root, '.tmp'), { recursive: true });
      // Let the highlight of just-changed rows fade, and move the pointer off the list.
      await page.mouse.move(1, 1);
      await page.waitForTimeout(1800);
      await page.screenshot({ path: join(root, '.tmp/demo.png'), fullPage: true });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.screenshot({ path: join(root, '.tmp/demo-mobile.png'), fullPage: true });

      assert.deepEqual(errors, [], 'no uncaught errors in the page');
      assert.deepEqual(offsite, [], 'no request leaves the demo server');
    } finally {
      await browser.close();
    }
  });

  test('in a real browser: a progress bar during a long first load, a pending badge offline', async (t) => {
    if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is not installed`);
    // 4,500 more rows: more than two of the demo's 2,000-row streamed pull pages.
    const other = new Database(demo.dbPath);
    other.pragma('busy_timeout = 5000');
    const insert = other.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
    other.transaction(() => {
      for (let index = 0; index < 4500; index++) insert.run(`bulk-${String(index).padStart(4, '0')}`, `Bulk row ${index}`);
    })();
    const total = (other.prepare('SELECT count(*) AS n FROM todos').get() as { n: number }).n;
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    try {
      const context = await browser.newContext();
      await context.addInitScript(() => {
        const seen: unknown[] = [];
        (window as any).__progress = seen;
        document.addEventListener('rhtmx:sync:progress', (event) => seen.push((event as CustomEvent).detail));
      });
      const page = await context.newPage();
      const errors: string[] = [];
      page.on('pageerror', (error) => errors.push(String(error)));
      await page.goto(`${demo.url}/`);
      await page.evaluate(() => (window as any).rhtmxSync.ready);
      const progress = (await page.evaluate(() => (window as any).__progress)) as Array<{ loaded: number; total: number }>;
      assert.deepEqual(
        progress.map(({ loaded }) => loaded),
        [2000, 4000, total],
        'one event per snapshot page, the last one complete',
      );
      assert.ok(progress.every((detail) => detail.total === total));
      // The bar followed the events and is gone once the copy is complete.
      assert.equal(
        await page.locator('#sync-progress .progress-text').textContent(),
        `Loading into this browser: ${total} of ${total} rows`,
      );
      await page.locator('#sync-progress').waitFor({ state: 'hidden' });

      // Offline, the badge counts what waits in the outbox; back online it goes away.
      await page.locator('#sync-connection[data-state="websocket"]').waitFor({ timeout: 10_000 });
      await context.setOffline(true);
      await page.locator('#sync-connection[data-state="offline"]').waitFor();
      await page.locator('#add-form input[name="title"]').fill('Queued offline');
      await page.locator('#add-form input[name="title"]').press('Enter');
      await page.locator('#pending-badge', { hasText: '1 change waiting to sync' }).waitFor({ timeout: 10_000 });
      await page.locator('#todo-list .todo.pending .title[value="Queued offline"]').waitFor({ timeout: 10_000 });
      await context.setOffline(false);
      await page.locator('#pending-badge').waitFor({ state: 'hidden', timeout: 15_000 });
      await waitFor(
        () => (other.prepare("SELECT count(*) AS n FROM todos WHERE title = 'Queued offline'").get() as { n: number }).n === 1,
        10_000,
        'the queued todo on the server',
      );
      assert.deepEqual(errors, [], 'no uncaught errors in the page');
    } finally {
      await browser.close();
      other.prepare("DELETE FROM todos WHERE id LIKE 'bulk-%' OR title = 'Queued offline'").run();
      other.close();
    }
  });
});
