/**
 * SSE fallback: when WebSocket upgrades are refused (a proxy that blocks
 * them) the client falls back to Server-Sent Events for live changes and
 * HTTP for pushes; `data-use-websocket="false"` goes straight to SSE.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { postJson, waitFor } from './helpers.js';

async function liveOverSse(page: Page, fixture: Fixture, id: string): Promise<void> {
  await page.evaluate(() => window.rhtmxSync.ready);
  await waitInPage(page, () => window.rhtmxSync.state().state === 'sse', 15_000, 'sse state');
  await postJson(`${fixture.url}/api/sync/todos`, { changes: [{ id, action: 'create', data: { title: `live ${id}`, done: false } }] });
  await waitInPage(page, (rowId) => document.querySelector(`#list li[data-id="${rowId}"]`), 10_000, `row ${id} rendered`, id);
  fixture.externalWrite('UPDATE todos SET title = ? WHERE id = ?', `sql ${id}`, id);
  await waitInPage(page, async (rowId) => (await window.rhtmxSync.get('todos', rowId))?.title === `sql ${rowId}`, 10_000, 'SQL write', id);
  await page.evaluate(
    (rowId) => window.rhtmxSync.push('todos', { id: `${rowId}-push`, action: 'create', data: { title: 'pushed', done: false } }),
    id,
  );
  await waitFor(() => fixture.todos().find((row) => row.id === `${id}-push`), 10_000, 'push over HTTP');
  await waitInPage(page, async () => (await window.rhtmxSync.pending()).length === 0, 10_000, 'outbox drained');
}

describe('SSE fallback', () => {
  let browser: Browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(() => browser?.close());

  test('WebSocket upgrade refused: SSE delivers changes', async () => {
    const fixture = await startFixture({ refuseWebSocket: true, seed: [['a1', 'seeded']] });
    try {
      const page = await browser.newPage();
      forwardConsole(page, 'sse-refused');
      await page.goto(fixture.pageUrl());
      await liveOverSse(page, fixture, 's1');
      assert.equal(fixture.engine.connections().websocket, 0);
      await page.close();
    } finally {
      await fixture.close();
    }
  });

  test('data-use-websocket="false": SSE only', async () => {
    const fixture = await startFixture({ seed: [['a1', 'seeded']] });
    try {
      const page = await browser.newPage();
      forwardConsole(page, 'sse-config');
      await page.goto(fixture.pageUrl({ ws: false, htmx: '2' }));
      await liveOverSse(page, fixture, 's2');
      assert.equal(fixture.engine.connections().websocket, 0, 'never tried a WebSocket');
      await page.close();
    } finally {
      await fixture.close();
    }
  });
});
