/**
 * Field values are coerced to their column's type and travel back as the
 * row's JSON shows them, on a table with an integer key and every column
 * kind; a single write touching more fields than a page is never split.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, startServer, type TestServer } from './helpers.js';

const NOTES_SQL = `CREATE TABLE notes (
  id INTEGER PRIMARY KEY,
  body TEXT NOT NULL DEFAULT '',
  score REAL,
  stars INTEGER,
  pinned BOOLEAN NOT NULL DEFAULT 0,
  meta JSON,
  raw BLOB
)`;

describe('field sync: column types', () => {
  let server: TestServer;
  const url = (path = '') => `${server.url}/api/field-sync/notes${path}`;
  before(async () => {
    server = await startServer({ setupSql: NOTES_SQL, entities: ['notes'], fieldSync: FieldMergeStrategy.LastWriteWins });
  });
  after(() => server.close());

  test('values are coerced to the column type and read back typed', async () => {
    const push = await postJson(url(), {
      client_id: 'typed',
      changes: [
        { entity_id: 1, field: 'body', value: 'hello' },
        { entity_id: 1, field: 'score', value: '4.5' },
        { entity_id: 1, field: 'stars', value: '3' },
        { entity_id: 1, field: 'pinned', value: 'on' },
        { entity_id: 1, field: 'meta', value: { tags: ['a', 'b'] } },
        { entity_id: 1, field: 'raw', value: 'cafe' },
      ],
    });
    assert.equal(push.status, 200);
    assert.deepEqual(
      push.body.results.map((result: any) => result.status),
      ['applied', 'applied', 'applied', 'applied', 'applied', 'applied'],
    );
    assert.equal(push.body.results[0].entity_id, '1', 'ids travel as strings');
    const row = server.db.prepare('SELECT * FROM notes WHERE id = 1').get() as any;
    assert.deepEqual(
      { ...row, raw: row.raw.toString('hex') },
      { id: 1, body: 'hello', score: 4.5, stars: 3, pinned: 1, meta: '{"tags":["a","b"]}', raw: 'cafe' },
    );
    const latest = await getJson(url('/1/latest'));
    const values = Object.fromEntries(Object.entries(latest.body.fields).map(([name, state]: [string, any]) => [name, state.value]));
    assert.deepEqual(values, { body: 'hello', score: 4.5, stars: 3, pinned: true, meta: { tags: ['a', 'b'] }, raw: 'CAFE' });
    // The fields of a new row went into one INSERT: one version.
    assert.equal(new Set(push.body.results.slice(0, 6).map((result: any) => result.version)).size, 1);
    // The change feed carries the same values (from the trigger's row JSON).
    const feed = await getJson(url(`?since=${push.body.results[0].version - 1}`));
    const fed = Object.fromEntries(feed.body.changes.map((change: any) => [change.field, change.value]));
    assert.deepEqual(fed, { body: 'hello', score: 4.5, stars: 3, pinned: true, meta: { tags: ['a', 'b'] }, raw: 'CAFE' });
    // A value its column cannot hold refuses the push, naming the column and the rule (test/value-matrix.test.ts has them all).
    const fractional = await postJson(url(), { changes: [{ entity_id: 1, field: 'stars', value: 2.5 }] });
    assert.deepEqual([fractional.status, fractional.body.error.code], [400, 'bad_request']);
    assert.match(fractional.body.error.message, /^changes\[0\]: stars must be an integer/);
    // Integer keys given as numbers or strings address the same row.
    const again = await postJson(url(), { changes: [{ entity_id: '1', field: 'stars', value: 3 }] });
    assert.equal(again.body.results[0].status, 'applied');
    assert.equal(again.body.results[0].version, push.body.results[2].version, 'same value: nothing written');
  });

  test('one write that changes more fields than a page is served whole', async () => {
    const cursor = (await getJson(url('?since=0'))).body.version;
    // One INSERT: five fields share one version.
    server.db.prepare(`INSERT INTO notes (id, body, score, stars, pinned) VALUES (2, 'bulk', 1.5, 5, 1)`).run();
    const page = await getJson(url(`?since=${cursor}&limit=2`));
    assert.equal(page.body.changes.length, 6, 'every field of the insert');
    assert.ok(page.body.changes.every((change: any) => change.version === page.body.changes[0].version));
    assert.equal(page.body.version, page.body.changes[0].version);
    assert.equal(page.body.has_more, true);
    const rest = await getJson(url(`?since=${page.body.version}&limit=2`));
    assert.deepEqual(rest.body.changes, []);
    assert.equal(rest.body.has_more, false);
  });
});
