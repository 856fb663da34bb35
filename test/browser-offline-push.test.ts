/**
 * Offline pushes: applied to IndexedDB at once, kept in the durable outbox
 * across page loads while offline, and applied on the server exactly once
 * when back online, even when a push is retried after its answer was lost.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

describe('offline push', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture({ seed: [['a1', 'seeded']] });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('an outbox written offline survives closing the page and flushes once back online', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'offline-1');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket');

    await context.setOffline(true);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline state');
    const entry = await page.evaluate(() =>
      window.rhtmxSync.push('todos', { id: 'off1', action: 'create', data: { title: 'written offline', done: false } }),
    );
    assert.equal(entry.id, 'off1');
    assert.ok(entry.mutation_id >= 1);
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'off1', action: 'update', data: { title: 'edited offline' } }));
    assert.equal((await page.evaluate(() => window.rhtmxSync.get('todos', 'off1')))?.title, 'edited offline', 'applied locally at once');
    const pending = await page.evaluate(() => window.rhtmxSync.pending());
    assert.deepEqual(
      pending.map((item) => [item.id, item.action]),
      [
        ['off1', 'create'],
        ['off1', 'update'],
      ],
    );
    assert.equal(fixture.todos().filter((row) => row.id === 'off1').length, 0, 'nothing reached the server while offline');

    // pending() read IndexedDB; closing the page drops every in-memory copy (and the leader lock).
    await page.close();
    await context.setOffline(false);
    const next = await context.newPage();
    forwardConsole(next, 'offline-2');
    await next.goto(fixture.pageUrl());
    await waitFor(() => fixture.todos().find((row) => row.id === 'off1')?.title === 'edited offline', 15_000, 'both mutations applied');
    await waitInPage(next, async () => (await window.rhtmxSync.pending()).length === 0, 15_000, 'outbox drained');
    assert.equal(fixture.todos().filter((row) => row.id === 'off1').length, 1, 'exactly one row');
    await waitInPage(next, () => document.querySelector('#list li[data-id="off1"]')?.textContent === 'edited offline');
    const events = await next.evaluate(() => (window as any).__events as Array<{ name: string }>);
    assert.ok(!events.some((event) => event.name === 'rhtmx:sync:conflict'), 'no conflict for our own consecutive edits');
    await context.close();
  });

  test('a push whose answer is lost is retried and applied once (duplicate)', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'dup');
    let posts = 0;
    let second: any = null;
    // HTTP pushes only (no WebSocket), so the route can drop the first answer after the server applied it.
    await page.route('**/api/sync/todos', async (route) => {
      if (route.request().method() !== 'POST') return route.continue();
      posts++;
      const response = await route.fetch();
      if (posts === 1) return route.abort('connectionreset');
      second ??= await response.json();
      return route.fulfill({ response });
    });
    await page.goto(fixture.pageUrl({ ws: false }));
    await page.evaluate(() => window.rhtmxSync.ready);
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'dup1', action: 'create', data: { title: 'once', done: false } }));
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 30_000, 'outbox drained');
    assert.ok(posts >= 2, 'the push was retried');
    assert.equal(second.results[0].status, 'applied');
    assert.equal(second.results[0].duplicate, true, 'the server recognised the retried mutation id');
    assert.equal(fixture.todos().filter((row) => row.id === 'dup1').length, 1);
    await context.close();
  });
});
