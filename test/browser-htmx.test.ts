/**
 * htmx 2 and htmx 4 pages re-render when ANOTHER client changes a todo:
 * a raw HTTP push from Node and a raw SQL write into the SQLite file.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { postJson } from './helpers.js';

const listText = async (page: Page) => (await page.locator('#list').textContent()) ?? '';

const PAGES = [
  { htmx: '2', defer: false },
  { htmx: '4', defer: false },
  { htmx: '4', defer: true },
] as const;

for (const { htmx, defer } of PAGES) {
  describe(`htmx ${htmx} page, client script ${defer ? 'deferred' : 'plain in <head>'}`, () => {
    let fixture: Fixture;
    let browser: Browser;
    before(async () => {
      fixture = await startFixture({ seed: [['a1', 'seeded todo']] });
      browser = await launchBrowser();
    });
    after(async () => {
      await browser?.close();
      await fixture?.close();
    });

    test('re-renders on rhtmx:todos:changed after pushes and raw SQL writes by others', async () => {
      const page = await browser.newPage();
      forwardConsole(page, `htmx${htmx}`);
      await page.goto(fixture.pageUrl({ htmx, defer }));
      const loaded = await page.evaluate(() => ((window as any).htmx?.version as string) ?? '');
      assert.ok(loaded.startsWith(htmx), `htmx ${htmx}.x loaded (got ${loaded})`);
      await page.evaluate(() => window.rhtmxSync.ready);
      await waitInPage(page, () => document.querySelector('#list li[data-id="a1"]'), 10_000, 'initial render');
      assert.deepEqual(await page.evaluate(() => window.rhtmxSync.get('todos', 'a1')), {
        id: 'a1',
        title: 'seeded todo',
        done: false,
        updated_at: null,
      });
      await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket state');

      // Another client pushes over HTTP.
      const pushed = await postJson(`${fixture.url}/api/sync/todos`, {
        client_id: 'node-client',
        changes: [{ mutation_id: 1, id: 'n1', action: 'create', data: { title: 'from node', done: false } }],
      });
      assert.equal(pushed.body.results[0].status, 'applied');
      await waitInPage(page, () => document.querySelector('#list li[data-id="n1"]'), 10_000, 'render after HTTP push');
      assert.equal((await page.evaluate(() => window.rhtmxSync.get('todos', 'n1')))?.title, 'from node');

      // Another process writes the SQLite file directly.
      fixture.externalWrite("UPDATE todos SET title = 'edited by sql' WHERE id = 'a1'");
      await waitInPage(
        page,
        () => document.querySelector('#list li[data-id="a1"]')?.textContent === 'edited by sql',
        10_000,
        'render after SQL write',
      );
      fixture.externalWrite("DELETE FROM todos WHERE id = 'n1'");
      await waitInPage(page, () => !document.querySelector('#list li[data-id="n1"]'), 10_000, 'render after SQL delete');
      assert.equal(await page.evaluate(() => window.rhtmxSync.get('todos', 'n1')), undefined, 'deleted row is gone from IndexedDB');
      assert.match(await listText(page), /edited by sql/);

      const events = await page.evaluate(() => (window as any).__events as Array<{ name: string; detail: any }>);
      assert.ok(
        events.some((event) => event.name === 'rhtmx:sync:ready'),
        'rhtmx:sync:ready reached a document listener',
      );
      const changed = events.filter((event) => event.name === 'rhtmx:todos:changed');
      assert.ok(changed.length >= 3);
      for (const event of changed) {
        assert.equal(event.detail.entity, 'todos');
        assert.ok(Array.isArray(event.detail.ids) && event.detail.ids.includes(event.detail.id));
        assert.match(event.detail.action, /^(create|update|delete)$/);
      }
      assert.ok(changed.some((event) => event.detail.id === 'n1' && event.detail.action === 'delete'));
    });
  });
}
