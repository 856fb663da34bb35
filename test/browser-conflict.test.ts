/**
 * Conflicts: on a server-wins entity, a change pushed with a stale
 * base_version (the row changed on the server after this browser saw it)
 * fires `rhtmx:sync:conflict` and the local row reverts to the server row;
 * the mutations behind it still go through.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

describe('conflict on a server-wins entity', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture({ entities: [{ name: 'todos', strategy: 'server-wins' }], seed: [['c1', 'original']] });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('a stale edit fires rhtmx:sync:conflict and reverts to the server row', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'conflict');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket');
    // The browser sees the row at some version...
    fixture.externalWrite("UPDATE todos SET title = 'seen by the browser' WHERE id = 'c1'");
    await waitInPage(page, async () => (await window.rhtmxSync.get('todos', 'c1'))?.title === 'seen by the browser', 10_000, 'first edit');

    // ...goes offline, and meanwhile the row changes on the server.
    await context.setOffline(true);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'offline', 10_000, 'offline');
    fixture.externalWrite("UPDATE todos SET title = 'changed on the server' WHERE id = 'c1'");
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'c1', action: 'update', data: { title: 'stale client edit' } }));
    // A later, unrelated mutation must not be blocked by the conflicting one.
    await page.evaluate(() => window.rhtmxSync.push('todos', { id: 'c2', action: 'create', data: { title: 'behind it', done: false } }));
    assert.equal((await page.evaluate(() => window.rhtmxSync.get('todos', 'c1')))?.title, 'stale client edit', 'optimistic');

    await context.setOffline(false);
    const conflict = await waitInPage(
      page,
      () => (window as any).__events.find((event: any) => event.name === 'rhtmx:sync:conflict')?.detail,
      15_000,
      'rhtmx:sync:conflict',
    );
    assert.equal(conflict.entity, 'todos');
    assert.equal(conflict.id, 'c1');
    assert.equal(conflict.change.action, 'update');
    assert.equal(conflict.change.data.title, 'stale client edit');
    assert.equal(conflict.result.status, 'conflict');
    assert.equal(conflict.result.row.title, 'changed on the server');
    await waitInPage(page, async () => (await window.rhtmxSync.get('todos', 'c1'))?.title === 'changed on the server', 10_000, 'revert');
    await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 10_000, 'outbox drained');
    await waitFor(() => fixture.todos().find((row) => row.id === 'c2'), 10_000, 'the mutation behind the conflict');
    assert.equal(fixture.todos().find((row) => row.id === 'c1')?.title, 'changed on the server', 'server row untouched');
    await waitInPage(page, () => document.querySelector('#list li[data-id="c1"]')?.textContent === 'changed on the server');
    await context.close();
  });
});
