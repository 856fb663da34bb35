/**
 * Live HTML in real Chromium, htmx 2 and htmx 4: the server renders each
 * changed row's fragment (once per read scope) and pages swap it in with
 * htmx's out-of-band rules, so a write by raw SQL in another process updates
 * the DOM with no refetch; creates land where the page says, deletes remove
 * the element, other out-of-band elements follow, htmx attributes inside a
 * pushed fragment work, and a tab behind the leader gets the fragments over
 * the tab channel.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import type { RenderContext } from '../src/core/config.js';
import type { Row } from '../src/core/protocol.js';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';

const escapeText = (text: unknown) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** One todo's element, as the page renders it and the server pushes it. */
const item = (row: { id: unknown; title: unknown }) =>
  `<li id="todos-${escapeText(row.id)}" class="item"><span class="title">${escapeText(row.title)}</span>` +
  `<button class="ping" hx-get="/ping" hx-target="this" hx-swap="outerHTML">ping</button></li>`;

/** Only refetch when the event says the fragments did not land. */
const LIVE_TRIGGER = 'load, rhtmx:todos:changed[!detail.swapped] from:body';

const liveReady = async (page: Page) => {
  await page.evaluate(() => window.rhtmxSync.ready);
  await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket state');
};

for (const htmx of ['2', '4'] as const) {
  describe(`live HTML, htmx ${htmx}`, () => {
    let fixture: Fixture;
    let browser: Browser;
    const renders: Array<{ id: unknown; scope: string | null }> = [];
    before(async () => {
      fixture = await startFixture({
        seed: [
          ['a1', 'first'],
          ['a2', 'second'],
        ],
        entities: [
          {
            name: 'todos',
            render: (row: Row, context: RenderContext) => {
              renders.push({ id: row.id, scope: context.scope });
              const count = (fixture.db.prepare('SELECT count(*) AS n FROM todos').get() as { n: number }).n;
              return `${item(row as { id: string; title: string })}<p id="count" hx-swap-oob="true">${count} todos</p>`;
            },
            renderDeleted: () => {
              const count = (fixture.db.prepare('SELECT count(*) AS n FROM todos').get() as { n: number }).n;
              return `<p id="count" hx-swap-oob="true">${count} todos</p>`;
            },
          },
        ],
        listTrigger: LIVE_TRIGGER,
        fragment: (rows) => `<ul data-rhtmx-live="todos">${rows.map(item).join('')}</ul><p id="count">${rows.length} todos</p>`,
        routes: { '/ping': '<span class="pong">pong</span>' },
      });
      browser = await launchBrowser();
    });
    after(async () => {
      await browser?.close();
      await fixture?.close();
    });

    test('raw SQL writes update, create and delete elements in place, with no refetch', async () => {
      const context = await browser.newContext();
      const page = await context.newPage();
      forwardConsole(page, `live${htmx}`);
      await page.goto(fixture.pageUrl({ htmx }));
      await liveReady(page);
      await waitInPage(page, () => document.querySelectorAll('#list li.item').length === 2, 10_000, 'initial render');
      // A second tab: it follows the leader and gets the fragments over the tab channel.
      const follower = await context.newPage();
      forwardConsole(follower, `live${htmx}-follower`);
      await follower.goto(fixture.pageUrl({ htmx }));
      await follower.evaluate(() => window.rhtmxSync.ready);
      await waitInPage(follower, () => document.querySelectorAll('#list li.item').length === 2, 10_000, 'follower render');
      const gets = fixture.renders();
      // Mark the element: an update replaces it; everything else on the page stays.
      await page.evaluate(() => document.getElementById('todos-a2')?.setAttribute('data-old', '1'));

      fixture.externalWrite("UPDATE todos SET title = 'edited <by> sql' WHERE id = 'a2'");
      for (const tab of [page, follower]) {
        await waitInPage(
          tab,
          () => document.querySelector('#todos-a2 .title')?.textContent === 'edited <by> sql',
          10_000,
          'update swapped in',
        );
      }
      assert.equal(await page.evaluate(() => document.querySelectorAll('#todos-a2').length), 1, 'replaced, not added');
      assert.equal(await page.evaluate(() => document.getElementById('todos-a2')?.hasAttribute('data-old')), false);
      assert.deepEqual(
        await page.evaluate(() => [...document.querySelectorAll('#list li.item')].map((li) => li.id)),
        ['todos-a1', 'todos-a2'],
        'the update stays in its place',
      );

      fixture.externalWrite("INSERT INTO todos (id, title, done) VALUES ('n1', 'made by sql', 0)");
      for (const tab of [page, follower]) {
        await waitInPage(tab, () => document.querySelector('#list li.item:last-child')?.id === 'todos-n1', 10_000, 'create appended');
        await waitInPage(tab, () => document.getElementById('count')?.textContent === '3 todos', 10_000, 'out-of-band count');
      }

      fixture.externalWrite("DELETE FROM todos WHERE id = 'a1'");
      for (const tab of [page, follower]) {
        await waitInPage(tab, () => !document.getElementById('todos-a1'), 10_000, 'delete removed the element');
        await waitInPage(tab, () => document.getElementById('count')?.textContent === '2 todos', 10_000, "the delete's out-of-band count");
      }
      assert.deepEqual(await follower.evaluate(() => [...document.querySelectorAll('#list li.item')].map((li) => li.id)), [
        'todos-a2',
        'todos-n1',
      ]);
      assert.equal(fixture.renders(), gets, 'no GET /todos-fragment for any of the three writes');
      const changed = await page.evaluate(() =>
        ((window as any).__events as Array<{ name: string; detail: any }>).filter((event) => event.name === 'rhtmx:todos:changed'),
      );
      const live = changed.filter((event) => event.detail.swapped);
      assert.ok(live.length >= 3, `the usual rhtmx:todos:changed still fires, marked swapped (${JSON.stringify(changed)})`);
      const stored = await page.evaluate(() => window.rhtmxSync.get('todos', 'n1'));
      assert.equal(stored?.title, 'made by sql', 'IndexedDB has the row');
      assert.deepEqual(Object.keys(stored ?? {}).sort(), ['done', 'id', 'title', 'updated_at'], 'and not its HTML');

      // htmx attributes inside a pushed fragment work: the button came in with the create.
      await page.click('#todos-n1 button.ping');
      await waitInPage(
        page,
        () => document.querySelector('#todos-n1 .pong')?.textContent === 'pong',
        10_000,
        'htmx processed the fragment',
      );
      await context.close();
    });

    test('a change with no element and no live list on the page falls back to the refetch', async () => {
      const page = await browser.newPage();
      await page.goto(fixture.pageUrl({ htmx }));
      await liveReady(page);
      await waitInPage(page, () => document.querySelectorAll('#list li.item').length > 0, 10_000, 'initial render');
      // Settled: filling IndexedDB refetches the list once (rows pulled come without HTML), which would redraw the mark.
      for (let last = -1; last !== fixture.renders(); ) {
        last = fixture.renders();
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
      // The page no longer marks where creates go: the fragment cannot land, so the event says so.
      await page.evaluate(() => document.querySelector('[data-rhtmx-live]')?.removeAttribute('data-rhtmx-live'));
      const gets = fixture.renders();
      const id = `f${htmx}`;
      fixture.externalWrite(`INSERT INTO todos (id, title, done) VALUES ('${id}', 'nowhere to go', 0)`);
      await waitInPage(page, (want) => document.getElementById(`todos-${want}`), 10_000, 'refetched list shows it', id);
      assert.ok(fixture.renders() > gets, 'the list was refetched');
      await page.close();
    });
  });
}

describe('live HTML: where creates go', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture({
      seed: [['a1', 'first']],
      entities: [
        {
          name: 'todos',
          // Rows whose id starts with w come wrapped: htmx's out-of-band form names their place.
          render: (row) =>
            String(row.id).startsWith('w')
              ? `<div hx-swap-oob="beforeend:#wrapped">${item(row as { id: string; title: string })}</div>` +
                `<span id="last" hx-swap-oob="innerHTML"><b>${escapeText(row.title)}</b></span><i id="stale" hx-swap-oob="delete"></i>`
              : item(row as { id: string; title: string }),
        },
      ],
      listTrigger: LIVE_TRIGGER,
      fragment: (rows) =>
        `<ul data-rhtmx-live="todos" data-rhtmx-live-swap="afterbegin">${rows.map(item).join('')}</ul><ol id="wrapped"></ol>` +
        '<p id="last">none</p><p id="stale">old</p>',
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  for (const htmx of ['2', '4'] as const) {
    test(`data-rhtmx-live-swap and an hx-swap-oob wrapper place creates (htmx ${htmx})`, async () => {
      const page = await browser.newPage();
      await page.goto(fixture.pageUrl({ htmx }));
      await liveReady(page);
      await waitInPage(page, () => document.querySelectorAll('ul li.item').length > 0, 10_000, 'initial render');
      const gets = fixture.renders();
      const id = `p${htmx}`;
      fixture.externalWrite(`INSERT INTO todos (id, title, done) VALUES ('${id}', 'on top', 0)`);
      await waitInPage(page, (want) => document.querySelector('ul li.item')?.id === `todos-${want}`, 10_000, 'afterbegin', id);
      const wrapped = `w${htmx}`;
      fixture.externalWrite(`INSERT INTO todos (id, title, done) VALUES ('${wrapped}', 'wrapped', 0)`);
      await waitInPage(page, (want) => document.querySelector(`#wrapped > #todos-${want}`), 10_000, 'into the oob target', wrapped);
      fixture.externalWrite(`UPDATE todos SET title = 'wrapped, edited' WHERE id = '${wrapped}'`);
      await waitInPage(
        page,
        (want) => document.querySelector(`#todos-${want} .title`)?.textContent === 'wrapped, edited',
        10_000,
        'update in place',
        wrapped,
      );
      assert.equal(await page.evaluate((want) => document.querySelectorAll(`#todos-${want}`).length, wrapped), 1);
      assert.equal(await page.evaluate((want) => document.querySelector(`#todos-${want}`)?.parentElement?.id, wrapped), 'wrapped');
      assert.equal(await page.evaluate(() => document.querySelectorAll('[hx-swap-oob]').length), 0, 'no wrapper left in the page');
      // The other out-of-band elements: innerHTML into #last, and #stale deleted.
      assert.equal(await page.evaluate(() => document.getElementById('last')?.innerHTML), '<b>wrapped, edited</b>');
      assert.equal(await page.evaluate(() => document.getElementById('stale')), null);
      assert.equal(fixture.renders(), gets, 'no refetch');
      await page.close();
    });
  }
});

describe('live HTML with read scopes', () => {
  let fixture: Fixture;
  let browser: Browser;
  const renders: Array<{ id: unknown; scope: string | null }> = [];
  before(async () => {
    fixture = await startFixture({
      setupSql: 'CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0, owner TEXT);',
      authorize: (request) => {
        const user = /(?:^|;\s*)user=(\w+)/.exec(request.headers.get('cookie') ?? '')?.[1];
        return user ? { id: user } : null;
      },
      entities: [
        {
          name: 'todos',
          read: (row, user) => row.owner === user?.id,
          scopeKey: (user) => String(user?.id),
          render: (row, context) => {
            renders.push({ id: row.id, scope: context.scope });
            return item(row as { id: string; title: string });
          },
        },
      ],
      listTrigger: LIVE_TRIGGER,
      fragment: () => '<ul data-rhtmx-live="todos"></ul>',
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('each user gets only fragments of rows in their scope, each rendered once per scope', async () => {
    const pages: Record<string, Page[]> = {};
    for (const user of ['alice', 'bob']) {
      const context = await browser.newContext();
      await context.addCookies([{ name: 'user', value: user, url: fixture.url }]);
      // Two pages of alice: one scope, one render per change however many connections share it.
      const count = user === 'alice' ? 2 : 1;
      pages[user] = [];
      for (let index = 0; index < count; index++) {
        // Separate contexts for alice's two pages would be two leaders (two connections) in one scope.
        const page = await (index === 0 ? context : await browser.newContext()).newPage();
        if (index > 0) await page.context().addCookies([{ name: 'user', value: user, url: fixture.url }]);
        await page.goto(fixture.pageUrl());
        await liveReady(page);
        pages[user]?.push(page);
      }
    }
    const gets = fixture.renders();
    fixture.externalWrite("INSERT INTO todos (id, title, owner) VALUES ('s1', 'alice''s', 'alice'), ('s2', 'bob''s', 'bob')");
    for (const page of pages.alice ?? []) await waitInPage(page, () => document.getElementById('todos-s1'), 10_000, "alice's row");
    await waitInPage(pages.bob?.[0] as Page, () => document.getElementById('todos-s2'), 10_000, "bob's row");
    fixture.externalWrite("UPDATE todos SET title = 'alice''s, edited' WHERE id = 's1'");
    for (const page of pages.alice ?? []) {
      await waitInPage(page, () => document.querySelector('#todos-s1 .title')?.textContent === "alice's, edited", 10_000, 'update');
    }
    for (const page of pages.alice ?? []) assert.equal(await page.evaluate(() => document.getElementById('todos-s2')), null);
    const bob = pages.bob?.[0] as Page;
    assert.equal(await bob.evaluate(() => document.getElementById('todos-s1')), null, "bob never sees alice's fragment");
    assert.equal(await bob.evaluate(() => window.rhtmxSync.get('todos', 's1')), undefined);
    assert.equal(fixture.renders(), gets, 'no refetch');
    const of = (id: string) => renders.filter((render) => render.id === id).map((render) => render.scope);
    assert.deepEqual(of('s1'), ['alice', 'alice'], 'rendered once per change, for alice only, though two of her pages listen');
    assert.deepEqual(of('s2'), ['bob']);
  });
});
