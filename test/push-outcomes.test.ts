/**
 * Nothing lost at the edges: a retried mutation is answered with its
 * original outcome (conflict stays conflict, a rejection keeps its reason, a
 * keyless create learns its id), an empty push writes no exactly-once
 * record, and the stored outcomes are pruned with their client's record.
 * Entity and field pushes, on both stores, over real HTTP.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { FieldMergeStrategy } from '../src/core/config.js';
import { postJson, type TestServer } from './helpers.js';
import { STORES, type StoreUnderTest } from './stores.js';

const FIELD_KEY_SUFFIX = '\u001ffields';
/** A timestamp long before any server write: under last-write-wins it loses, a conflict. */
const ANCIENT = 1_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rows of a SELECT on the server's database, whichever store it is. */
async function query(store: StoreUnderTest, server: TestServer, sql: string, params: unknown[] = []): Promise<any[]> {
  if (store.name === 'sqlite') return server.db.prepare(sql).all(...params);
  const pool = server.db as unknown as pg.Pool;
  let n = 0;
  return (
    await pool.query(
      sql.replace(/\?/g, () => `$${++n}`),
      params,
    )
  ).rows;
}

const clientRecords = async (store: StoreUnderTest, server: TestServer, clientId: string) =>
  query(store, server, 'SELECT client_id FROM _rhtmx_sync_clients WHERE client_id = ?', [clientId]);

const outcomeRows = async (store: StoreUnderTest, server: TestServer, clientId: string) =>
  query(store, server, 'SELECT mutation_id FROM _rhtmx_sync_outcomes WHERE client_id = ?', [clientId]);

for (const store of STORES) {
  describe(`push outcomes [${store.name}]`, () => {
    let server: TestServer;
    const push = (body: object) => postJson(`${server.url}/api/sync/todos`, body);

    before(async () => {
      server = await store.start({ fieldSync: FieldMergeStrategy.LastWriteWins });
    });
    after(() => server.close());

    test('a retried conflict is answered conflict, with duplicate and the current row', async () => {
      await push({ changes: [{ id: 'oc1', action: 'create', data: { title: 'server', done: false } }] });
      const change = { mutation_id: 1, id: 'oc1', action: 'update', data: { title: 'stale' }, timestamp: ANCIENT };
      const first = await push({ client_id: 'oc-conflict', changes: [change] });
      assert.equal(first.body.results[0].status, 'conflict', JSON.stringify(first.body.results[0]));
      assert.equal(first.body.results[0].row.title, 'server');
      // The row moves on; the retry still says conflict and shows the row as it is now.
      await push({ changes: [{ id: 'oc1', action: 'update', data: { title: 'server 2' } }] });
      const retry = await push({ client_id: 'oc-conflict', changes: [change] });
      const result = retry.body.results[0];
      assert.equal(result.status, 'conflict');
      assert.equal(result.duplicate, true);
      assert.equal(result.reason, first.body.results[0].reason);
      assert.equal(result.row.title, 'server 2');
      assert.ok(result.server_version > first.body.results[0].server_version);
      assert.equal(retry.body.version, (await push({ changes: [] })).body.version, 'the retry wrote nothing');
    });

    test('a retried rejection is answered rejected, with its reason', async () => {
      const change = { mutation_id: 1, id: 'or1', action: 'create', data: { title: null, done: false } };
      const first = await push({ client_id: 'oc-reject', changes: [change] });
      assert.equal(first.body.results[0].status, 'rejected');
      const retry = await push({ client_id: 'oc-reject', changes: [change] });
      assert.deepEqual(
        [retry.body.results[0].status, retry.body.results[0].duplicate, retry.body.results[0].reason],
        ['rejected', true, first.body.results[0].reason],
      );
    });

    test('a write the database refuses in the middle of a push rejects that change only', async () => {
      const before = (await push({ changes: [] })).body.version;
      const batch = {
        client_id: 'oc-middle',
        changes: [
          { mutation_id: 1, id: 'om1', action: 'create', data: { title: 'first', done: false } },
          { mutation_id: 2, id: 'om2', action: 'create', data: { title: null, done: false } },
          { mutation_id: 3, id: 'om1', action: 'update', data: { title: 'first, edited' } },
          { mutation_id: 4, id: 'om3', action: 'create', data: { title: 'third', done: true } },
        ],
      };
      const first = await push(batch);
      const results = first.body.results;
      assert.deepEqual(
        results.map((result: any) => result.status),
        ['applied', 'rejected', 'applied', 'applied'],
        JSON.stringify(results),
      );
      assert.match(results[1].reason, /null|NOT NULL/i);
      // Versions are those of the log entries the applied changes wrote, and the refused one logged nothing.
      const logged = await query(
        store,
        server,
        "SELECT entity_id, action, version FROM _rhtmx_sync_log WHERE entity = 'todos' AND version > ? ORDER BY version",
        [before],
      );
      assert.deepEqual(
        logged.map((row: any) => [row.entity_id, row.action, Number(row.version)]),
        [
          ['om1', 'create', results[0].version],
          ['om1', 'update', results[2].version],
          ['om3', 'create', results[3].version],
        ],
      );
      assert.deepEqual(
        (await query(store, server, "SELECT id, title FROM todos WHERE id LIKE 'om%' ORDER BY id")).map((row: any) => [row.id, row.title]),
        [
          ['om1', 'first, edited'],
          ['om3', 'third'],
        ],
      );
      // The retry is answered as the first time, writing nothing.
      const retry = await push(batch);
      assert.deepEqual(
        retry.body.results.map((result: any) => [result.status, result.duplicate]),
        [
          ['applied', true],
          ['rejected', true],
          ['applied', true],
          ['applied', true],
        ],
      );
      assert.equal(retry.body.version, first.body.version, 'the retry wrote nothing');
    });

    test('a retried create without an id learns the id the server gave it', async () => {
      const batch = { client_id: 'oc-keyless', changes: [{ mutation_id: 1, action: 'create', data: { title: 'no id', done: false } }] };
      const first = await push(batch);
      const id = first.body.results[0].id;
      assert.match(id, /^[0-9a-f-]{36}$/);
      const retry = await push(batch);
      const result = retry.body.results[0];
      assert.deepEqual([result.status, result.duplicate, result.id], ['applied', true, id]);
      assert.equal(result.version, first.body.results[0].version, 'the original version');
      assert.equal(result.row.title, 'no id');
    });

    test('an empty push with a fresh client id writes no exactly-once record', async () => {
      const empty = await push({ client_id: 'oc-empty', changes: [] });
      assert.equal(empty.status, 200);
      assert.deepEqual(await clientRecords(store, server, 'oc-empty'), []);
      // Changes without mutation ids are not recorded either.
      await push({ client_id: 'oc-empty', changes: [{ id: 'oe1', action: 'create', data: { title: 'x', done: false } }] });
      assert.deepEqual(await clientRecords(store, server, 'oc-empty'), []);
    });

    test('stored outcomes are pruned with their client record', async () => {
      await push({
        client_id: 'oc-pruned',
        changes: [{ mutation_id: 1, id: 'op1', action: 'create', data: { title: 'p', done: false } }],
      });
      assert.equal((await outcomeRows(store, server, 'oc-pruned')).length, 1);
      await sleep(5);
      await server.engine.cleanup(0, { clientDays: 0 });
      assert.deepEqual(await clientRecords(store, server, 'oc-pruned'), []);
      assert.deepEqual(await outcomeRows(store, server, 'oc-pruned'), []);
    });

    describe('field pushes', () => {
      const pushFields = (body: object) => postJson(`${server.url}/api/field-sync/todos`, body);

      test('a retried field conflict is answered conflict, with duplicate and the current value', async () => {
        await push({ changes: [{ id: 'fc1', action: 'create', data: { title: 'server', done: false } }] });
        const change = { mutation_id: 1, entity_id: 'fc1', field: 'title', value: 'stale', timestamp: ANCIENT };
        const first = await pushFields({ client_id: 'fo-conflict', changes: [change] });
        assert.equal(first.body.results[0].status, 'conflict', JSON.stringify(first.body.results[0]));
        await push({ changes: [{ id: 'fc1', action: 'update', data: { title: 'server 2' } }] });
        const retry = await pushFields({ client_id: 'fo-conflict', changes: [change] });
        const result = retry.body.results[0];
        assert.deepEqual(
          [result.entity_id, result.field, result.status, result.duplicate, result.reason],
          ['fc1', 'title', 'conflict', true, first.body.results[0].reason],
        );
        assert.equal(result.server_value, 'server 2');
        assert.equal(retry.body.conflicts, 1);
      });

      test('a retried field rejection is answered rejected, with its reason', async () => {
        await push({ changes: [{ id: 'fr1', action: 'create', data: { title: 'keep', done: false } }] });
        const change = { mutation_id: 1, entity_id: 'fr1', field: 'title', value: null, timestamp: Date.now() };
        const first = await pushFields({ client_id: 'fo-reject', changes: [change] });
        assert.equal(first.body.results[0].status, 'rejected', JSON.stringify(first.body.results[0]));
        const retry = await pushFields({ client_id: 'fo-reject', changes: [change] });
        const result = retry.body.results[0];
        assert.deepEqual([result.status, result.duplicate, result.reason], ['rejected', true, first.body.results[0].reason]);
      });

      test('several fields of one mutation are each answered with their own outcome', async () => {
        await push({ changes: [{ id: 'fm1', action: 'create', data: { title: 'server', done: false } }] });
        const batch = {
          client_id: 'fo-multi',
          changes: [
            { mutation_id: 1, entity_id: 'fm1', field: 'title', value: 'old', timestamp: ANCIENT },
            { mutation_id: 1, entity_id: 'fm1', field: 'done', value: true, timestamp: Date.now() },
          ],
        };
        const first = await pushFields(batch);
        const statuses = (body: any) => body.results.map((result: any) => [result.field, result.status]);
        assert.deepEqual(statuses(first.body), [
          ['title', 'conflict'],
          ['done', 'applied'],
        ]);
        const retry = await pushFields(batch);
        assert.deepEqual(statuses(retry.body), statuses(first.body));
        assert.equal(retry.body.results[1].version, first.body.results[1].version);
      });

      test('an empty field push with a fresh client id writes no exactly-once record', async () => {
        const empty = await pushFields({ client_id: 'fo-empty', changes: [] });
        assert.equal(empty.status, 200, JSON.stringify(empty.body));
        assert.deepEqual(await clientRecords(store, server, `fo-empty${FIELD_KEY_SUFFIX}`), []);
        assert.deepEqual(await clientRecords(store, server, 'fo-empty'), []);
      });
    });
  });
}
