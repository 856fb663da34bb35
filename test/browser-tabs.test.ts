/**
 * Two tabs of one browser: exactly one WebSocket reaches the server (the
 * leader's), both tabs receive changes, a follower's push goes through the
 * leader, and when the leader closes the other tab takes over.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { postJson, waitFor } from './helpers.js';

const hasRow = (page: Page, id: string) =>
  waitInPage(page, (rowId) => document.querySelector(`#list li[data-id="${rowId}"]`), 10_000, `row ${id} rendered`, id);

describe('two tabs', () => {
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

  test('one leader connection, changes reach both tabs, hand-over when the leader closes', async () => {
    const context = await browser.newContext();
    const first = await context.newPage();
    forwardConsole(first, 'tab-1');
    await first.goto(fixture.pageUrl());
    await first.evaluate(() => window.rhtmxSync.ready);
    const second = await context.newPage();
    forwardConsole(second, 'tab-2');
    await second.goto(fixture.pageUrl());
    await second.evaluate(() => window.rhtmxSync.ready);

    const leaders = await Promise.all([first, second].map((page) => page.evaluate(() => window.rhtmxSync.state().leader)));
    assert.equal(leaders.filter(Boolean).length, 1, 'exactly one leader');
    const [leader, follower] = leaders[0] ? [first, second] : [second, first];
    await waitInPage(follower, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'follower learns the connection state');
    assert.equal(fixture.engine.connections().websocket, 1, 'one WebSocket for two tabs');

    await postJson(`${fixture.url}/api/sync/todos`, { changes: [{ id: 'n1', action: 'create', data: { title: 'one', done: false } }] });
    await Promise.all([hasRow(leader, 'n1'), hasRow(follower, 'n1')]);
    assert.equal((await follower.evaluate(() => window.rhtmxSync.get('todos', 'n1')))?.title, 'one');

    // A follower's push goes through the shared outbox and the leader's connection.
    await follower.evaluate(() =>
      window.rhtmxSync.push('todos', { id: 'f1', action: 'create', data: { title: 'from follower', done: false } }),
    );
    await waitFor(() => fixture.todos().find((row) => row.id === 'f1'), 10_000, 'follower push on the server');
    await Promise.all([hasRow(leader, 'f1'), hasRow(follower, 'f1')]);
    assert.equal(fixture.engine.connections().websocket, 1, 'still one WebSocket');

    // Hand-over.
    await leader.close();
    await waitInPage(
      follower,
      () => window.rhtmxSync.state().leader && window.rhtmxSync.state().state === 'websocket',
      15_000,
      'take over',
    );
    await waitFor(() => fixture.engine.connections().websocket === 1, 10_000, 'the old socket closed, the new one open');
    fixture.externalWrite("INSERT INTO todos (id, title, done) VALUES ('n2', 'after hand-over', 0)");
    await hasRow(follower, 'n2');
    assert.equal((await follower.evaluate(() => window.rhtmxSync.get('todos', 'n2')))?.title, 'after hand-over');
    await context.close();
  });

  test('without Web Locks every tab leads its own connection', async () => {
    const context = await browser.newContext();
    // Browsers without Web Locks (or insecure origins, where it is not exposed).
    await context.addInitScript(() => Object.defineProperty(navigator, 'locks', { value: undefined }));
    await waitFor(() => fixture.engine.connections().websocket === 0, 10_000, 'the previous test closed its socket');
    const pages = [await context.newPage(), await context.newPage()];
    for (const [index, page] of pages.entries()) {
      forwardConsole(page, `nolock-${index}`);
      await page.goto(fixture.pageUrl());
      await page.evaluate(() => window.rhtmxSync.ready);
    }
    for (const page of pages) {
      assert.equal(await page.evaluate(() => window.rhtmxSync.state().leader), true);
      await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket');
    }
    assert.equal(fixture.engine.connections().websocket, 2);
    await pages[0]?.evaluate(() =>
      window.rhtmxSync.push('todos', { id: 'nl1', action: 'create', data: { title: 'no locks', done: false } }),
    );
    await Promise.all(pages.map((page) => hasRow(page, 'nl1')));
    assert.equal(fixture.todos().filter((row) => row.id === 'nl1').length, 1);
    await context.close();
  });
});
