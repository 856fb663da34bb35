/**
 * A migration made by another process while pages are open (real Chromium):
 * `ALTER TABLE … RENAME COLUMN` on the synced table. The live connection is
 * told to refetch, the client's pull is a reset, and every row of the replica
 * takes the new shape, rows nobody wrote since included; the next live write arrives in it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { forwardConsole, launchBrowser, waitInPage } from './browser/browser.js';
import { type Fixture, startFixture } from './browser/fixture-server.js';
import { waitFor } from './helpers.js';

describe('a schema change reaches open pages', () => {
  let fixture: Fixture;
  let browser: Browser;
  before(async () => {
    fixture = await startFixture({
      setupSql: `CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0, note TEXT DEFAULT 'n')`,
      seed: [
        ['s1', 'one'],
        ['s2', 'two'],
      ],
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await fixture?.close();
  });

  test('RENAME COLUMN: every replica row takes the new shape', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    forwardConsole(page, 'schema');
    await page.goto(fixture.pageUrl());
    await page.evaluate(() => window.rhtmxSync.ready);
    await waitInPage(page, () => window.rhtmxSync.state().state === 'websocket', 10_000, 'websocket');
    assert.equal((await page.evaluate(() => window.rhtmxSync.get('todos', 's1')))?.note, 'n');

    fixture.externalWrite('ALTER TABLE todos RENAME COLUMN note TO memo');
    const rows = await waitInPage(
      page,
      async () => {
        const all = await Promise.all(['s1', 's2'].map((id) => window.rhtmxSync.get('todos', id)));
        return all.every((row: any) => row && row.memo !== undefined && row.note === undefined) ? all : null;
      },
      20_000,
      'the replica in the new shape',
    );
    assert.deepEqual(
      (rows ?? []).map((row: any) => [row.id, row.title, row.memo]),
      [
        ['s1', 'one', 'n'],
        ['s2', 'two', 'n'],
      ],
    );
    // Live again: a write by the other process arrives in the new shape.
    fixture.externalWrite("UPDATE todos SET memo = 'renamed' WHERE id = 's2'");
    await waitInPage(page, async () => (await window.rhtmxSync.get('todos', 's2'))?.memo === 'renamed', 10_000, 'live in the new shape');
    await waitFor(() => fixture.db.prepare("SELECT memo FROM todos WHERE id = 's2'").pluck().get() === 'renamed');
    await context.close();
  });
});
