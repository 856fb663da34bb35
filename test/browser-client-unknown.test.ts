/**
 * `cleanup()` never makes the browser apply a change twice (real Chromium):
 * a push the server applied but whose answer was lost, then the browser's
 * exactly-once record pruned, then the retry. The server answers 409
 * `client_unknown`; the client reports the change whose fate it cannot know
 * as `rhtmx:sync:conflict` (status `rejected`), fetches the entity again (the
 * row is there: the server had applied it), and sends the change it never
 * sent under a new client id. Every row is written once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

describe('the browser outbox after its client record was pruned', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture();
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('the unanswered change is reported, the replica matches the table, nothing is applied twice', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'unknown');
    // Pushes over HTTP (no socket), so the network can lose one answer.
    await page.goto(fixture.pageUrl({ ws: false }));
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'sse', 10_000, 'sse');
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'u0', action: 'create', data: { title: 'answered', done: false } }));
    await waitFor(() => fixture.todos().find((row) => row.id === 'u0'), 10_000, 'the first push');
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 10_000, 'answered');

    // The next push reaches the server, which applies it; its answer is lost.
    let lose = true;
    await page.route('**/api/sync/todos', async (route) => {
      if (route.request().method() !== 'POST' || !lose) return route.continue();
      lose = false;
      await route.fetch();
      await route.abort('connectionreset');
    });
    await page.evaluate(() =>
      window.rhtmxSync.push('todos', { id: 'u1', action: 'create', data: { title: 'applied, unanswered', done: false } }),
    );
    await waitFor(() => fixture.todos().find((row) => row.id === 'u1'), 10_000, 'the server applied u1');
    assert.equal((await page.evaluate(() => window.rhtmxSync.pending())).length, 1, 'u1 stays queued');

    // Long absent: the server forgets the browser's record; then a new change is made.
    await context.setOffline(true);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline');
    await new Promise((resolve) => setTimeout(resolve, 5)); // older than "now", to the millisecond
    await fixture.engine.cleanup(30, { clientDays: 0 });
    assert.equal(fixture.db.prepare('SELECT count(*) FROM _rhtmx_sync_clients').pluck().get(), 0, 'the record is gone');
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'u2', action: 'create', data: { title: 'never sent', done: false } }));
    await context.setOffline(false);

    const conflict = await waitInPage(
      page,
      () => (window as any).__events.find((event: any) => event.name === 'rhtmx:sync:conflict')?.detail,
      20_000,
      'rhtmx:sync:conflict',
    );
    assert.equal(conflict.id, 'u1');
    assert.equal(conflict.result.status, 'rejected');
    assert.match(conflict.result.reason, /client_id/);
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 20_000, 'outbox drained');
    await waitFor(() => fixture.todos().find((row) => row.id === 'u2'), 10_000, 'u2 lands under the new id');

    const creates = fixture.db
      .prepare(`SELECT entity_id FROM _rhtmx_sync_log WHERE entity = 'todos' AND action = 'create' ORDER BY entity_id`)
      .pluck()
      .all();
    assert.deepEqual(creates, ['u0', 'u1', 'u2'], 'each row created once on the server');
    // The replica equals the table: u1 came back with the refetch.
    await waitInPage(
      page,
      async () => (await Promise.all(['u0', 'u1', 'u2'].map((id) => window.rhtmxSync.get('todos', id)))).every(Boolean),
      15_000,
      'the replica has every row',
    );
    const local = await page.evaluate(async () => {
      const rows = await Promise.all(['u0', 'u1', 'u2'].map((id) => window.rhtmxSync.get('todos', id)));
      return rows.map((row: any) => row?.title);
    });
    assert.deepEqual(local, ['answered', 'applied, unanswered', 'never sent']);
    await context.close();
  });
});
