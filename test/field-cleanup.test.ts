/**
 * `engine.cleanup()` and field-level sync, on SQLite and PostgreSQL: field
 * tombstones of pruned deletes go with the log, a field cursor older than the
 * pruned horizon gets a reset snapshot, and exactly-once records of both
 * families (one table) are pruned after `clientDays`, recent ones kept.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`cleanup with field-level sync (${store.name})`, () => {
    let server: TestServer;
    const count = async (sql: string): Promise<number> => {
      if (store.name === 'sqlite') return server.db.prepare(sql).pluck().get() as number;
      const result = await (server.db as unknown as pg.Pool).query(sql);
      return Number(Object.values(result.rows[0] as object)[0]);
    };
    const fieldPush = (clientId: string, mutationId: number, id: string, title: string) =>
      postJson(`${server.url}/api/field-sync/todos`, {
        client_id: clientId,
        changes: [{ entity_id: id, field: 'title', value: title, mutation_id: mutationId }],
      });

    before(async () => {
      server = await store.start({ fieldSync: FieldMergeStrategy.LastWriteWins });
    });
    after(() => server.close());

    test('field tombstones and idle client records are pruned; an old field cursor gets a reset', async () => {
      await postJson(`${server.url}/api/sync/todos`, {
        client_id: 'entity-client',
        changes: [
          { id: 't1', action: 'create', data: { title: 'one', done: false }, mutation_id: 1 },
          { id: 't2', action: 'create', data: { title: 'two', done: false }, mutation_id: 2 },
        ],
      });
      assert.equal((await fieldPush('field-client', 1, 't1', 'one!')).status, 200);
      const before = (await getJson(`${server.url}/api/field-sync/todos?since=0`)).body.version as number;
      await store.externalWrite(server, 'DELETE FROM todos WHERE id = ?', ['t1']);
      const tombstones = "SELECT COUNT(*) FROM _rhtmx_field_versions WHERE field = '*' AND value IS NULL";
      const deadline = Date.now() + 5000;
      while ((await count(tombstones)) === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(await count(tombstones), 1);
      assert.equal(await count('SELECT COUNT(*) FROM _rhtmx_sync_clients'), 2, 'one record per family');

      // Records used within clientDays stay; the log and the tombstone go.
      await new Promise((resolve) => setTimeout(resolve, 5));
      const removed = await server.engine.cleanup(0);
      assert.ok(removed >= 1);
      assert.equal(await count(tombstones), 0);
      assert.equal(await count('SELECT COUNT(*) FROM _rhtmx_sync_clients'), 2);

      const stale = await getJson(`${server.url}/api/field-sync/todos?since=${before}`);
      assert.equal(stale.status, 200);
      assert.equal(stale.body.reset, true, 'a cursor from before the pruned delete refetches');
      assert.deepEqual([...new Set(stale.body.changes.map((change: { entity_id: string }) => change.entity_id))], ['t2']);

      // A retry within clientDays is still a duplicate.
      const retry = await fieldPush('field-client', 1, 't2', 'replayed');
      assert.equal(retry.body.results[0].duplicate, true);

      await new Promise((resolve) => setTimeout(resolve, 5));
      await server.engine.cleanup(0, { clientDays: 0 });
      assert.equal(await count('SELECT COUNT(*) FROM _rhtmx_sync_clients'), 0);
    });

    test('cleanup refuses a negative or non-finite retention', async () => {
      await assert.rejects(server.engine.cleanup(-1), /days must be a non-negative number/);
      await assert.rejects(server.engine.cleanup(1, { clientDays: Number.NaN }), /clientDays must be a non-negative number/);
    });
  });
}
