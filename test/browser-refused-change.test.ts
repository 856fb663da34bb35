/**
 * A refused change never wedges the outbox (real Chromium): a change the
 * entity's write rule refuses (403 naming the change) is taken out of the
 * queue with `rhtmx:sync:conflict` carrying the reason, its optimistic row is
 * reverted, and the changes queued behind it land. A 403 for the session
 * itself is not such a refusal: the change stays queued and lands once the
 * session is allowed again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

describe('a refused change never wedges the outbox', () => {
  let fixture: Fixture;
  let browser: Browser;
  let sessionAllowed = true;
  before(async () => {
    fixture = await startFixture({
      entities: [{ name: 'todos', write: ({ data }) => data?.title !== 'forbidden' || 'titles may not be "forbidden"' }],
      authorize: () => (sessionAllowed ? { id: 'someone' } : false),
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('a change refused by the write rule leaves the queue with its reason; the ones behind it land', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'refused');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    await context.setOffline(true);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline');
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'r1', action: 'create', data: { title: 'forbidden', done: false } }));
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'r2', action: 'create', data: { title: 'allowed', done: false } }));
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'r3', action: 'create', data: { title: 'also allowed', done: false } }));
    assert.equal((await page.evaluate(() => window.rhtmxSync.pending())).length, 3);
    await context.setOffline(false);

    const refusal = await waitInPage(
      page,
      () => (window as any).__events.find((event: any) => event.name === 'rhtmx:sync:conflict')?.detail,
      15_000,
      'rhtmx:sync:conflict',
    );
    assert.equal(refusal.id, 'r1');
    assert.equal(refusal.result.status, 'rejected');
    assert.match(refusal.result.reason, /titles may not be "forbidden"/);
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 15_000, 'outbox drained');
    await waitFor(() => fixture.todos().filter((row) => row.id === 'r2' || row.id === 'r3').length === 2, 10_000, 'the changes behind it');
    assert.equal(
      fixture.todos().find((row) => row.id === 'r1'),
      undefined,
      'the refused row was never written',
    );
    assert.equal(await page.evaluate(() => window.rhtmxSync.get('todos', 'r1')), undefined, 'its optimistic row is reverted');
    await context.close();
  });

  test('a 403 for the session keeps the change queued until the session is allowed again', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'session');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket');
    sessionAllowed = false;
    await fixture.engine.refreshRights();
    try {
      await page.evaluate(() => window.rhtmxSync.push('todos', { id: 's1', action: 'create', data: { title: 'later', done: false } }));
      // Refused by authorize (403 without a change named): the socket is closed, the push retried, not dropped.
      await waitInPage(page, () => window.rhtmxSync.state().state !== 'websocket', 15_000, 'the refused session loses its socket');
      assert.equal((await page.evaluate(() => window.rhtmxSync.pending())).length, 1);
      assert.equal(
        fixture.todos().find((row) => row.id === 's1'),
        undefined,
      );
    } finally {
      sessionAllowed = true;
    }
    await waitFor(() => fixture.todos().find((row) => row.id === 's1'), 60_000, 'the queued change after the session is allowed');
    await context.close();
  });
});
