/**
 * The PostgreSQL store's shared machinery against a real database: one
 * exactly-once record table for both push families (and the migration of the
 * old field table into it, by several nodes at once), cleanup pruning field
 * tombstones and idle client records, and the one transaction helper giving
 * every client back to the pool whatever a push does.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { SyncError } from '../src/core/errors.js';
import { ErrorCode } from '../src/core/protocol.js';
import {
  type FieldStore,
  type FieldTarget,
  type FieldWrite,
  fieldClientKey,
  type TableSchema,
  type ValidatedChange,
  type WriteDecision,
} from '../src/core/store.js';
import { PostgresStore } from '../src/stores/postgres/index.js';
import { transaction } from '../src/stores/postgres/transaction.js';
import { createTestDatabase, rawSql, type TestDatabase } from './pg-helpers.js';

const TARGETS = [{ entity: 'todos', table: 'todos' }];

const fieldWrite = (entityId: string, title: string, mutationId: number | null = null): FieldWrite => ({
  mutationId,
  entityId,
  field: 'title',
  action: 'update',
  value: title,
  json: title,
  clientValue: title,
  timestamp: null,
  baseVersion: null,
  invalid: null,
});

const create = (id: string, title: string, mutationId: number | null = null): ValidatedChange => ({
  mutationId,
  id,
  action: 'create',
  data: { title },
  baseVersion: null,
  timestamp: null,
});

const writeAll = (change: ValidatedChange): WriteDecision => ({
  kind: 'write',
  action: change.action,
  data: change.data,
  hlc: Date.now() * 4096,
});

async function openFields(store: PostgresStore, schema: TableSchema): Promise<FieldStore> {
  const fields = await store.openFieldStore();
  const target: FieldTarget = { schema, fields: schema.columns.filter((column) => !column.primaryKey) };
  await fields.init([target]);
  return fields;
}

describe('PostgreSQL store layout', () => {
  let database: TestDatabase;
  const records = async (): Promise<Record<string, number>> => {
    const { rows } = await database.pool.query(
      'SELECT client_id, last_mutation_id::int AS last FROM _rhtmx_sync_clients ORDER BY client_id',
    );
    return Object.fromEntries(rows.map((row: { client_id: string; last: number }) => [row.client_id, row.last]));
  };

  before(async () => {
    database = await createTestDatabase();
  });
  after(() => database.dispose());

  test('nodes starting at once migrate the old field client table into the one record table, keeping the greater id', async () => {
    const first = new PostgresStore(database.pool);
    await first.init(TARGETS);
    await first.close();
    // A database left by the previous version: field records in their own table.
    await database.pool.query(
      `CREATE TABLE _rhtmx_field_clients (client_id text PRIMARY KEY, last_mutation_id bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
       INSERT INTO _rhtmx_field_clients (client_id, last_mutation_id) VALUES ('alice', 5), ('bob', 3), ('carol', 9)`,
    );
    // Records a node on the new version already wrote: the entity family's, and field records under the new key.
    await database.pool.query('INSERT INTO _rhtmx_sync_clients (client_id, last_mutation_id) VALUES ($1, 40), ($2, 7), ($3, 1)', [
      'alice',
      fieldClientKey('bob'),
      fieldClientKey('carol'),
    ]);
    const pools = Array.from({ length: 3 }, () => new pg.Pool({ connectionString: database.url, max: 2 }));
    const stores = pools.map((pool) => new PostgresStore(pool));
    const [[schema]] = (await Promise.all(stores.map((store) => store.init(TARGETS)))) as [[TableSchema]];
    const [store] = stores as [PostgresStore];
    assert.equal((await database.pool.query("SELECT to_regclass('_rhtmx_field_clients') IS NULL AS gone")).rows[0].gone, true);
    assert.deepEqual(await records(), {
      alice: 40, // the entity family's record is untouched
      [fieldClientKey('alice')]: 5,
      [fieldClientKey('bob')]: 7,
      [fieldClientKey('carol')]: 9,
    });

    // Field pushes now dedupe against the migrated record.
    const fields = await openFields(store, schema);
    await database.pool.query("INSERT INTO todos (id, title) VALUES ('m1', 'before')");
    const batch = (mutationId: number, title: string) => ({
      entity: 'todos',
      clientId: fieldClientKey('alice'),
      origin: 'alice',
      changes: [fieldWrite('m1', title, mutationId)],
      decide: () => ({ kind: 'write' as const, hlc: Date.now() * 4096 }),
    });
    assert.equal((await fields.push(batch(5, 'replayed')))[0]?.duplicate, true);
    assert.equal((await fields.push(batch(6, 'after')))[0]?.status, 'applied');
    assert.equal((await database.pool.query("SELECT title FROM todos WHERE id = 'm1'")).rows[0].title, 'after');
    assert.equal((await records())[fieldClientKey('alice')], 6);
    assert.equal((await records()).alice, 40);
    const stamped = await database.pool.query("SELECT client_id FROM _rhtmx_sync_log WHERE entity_id = 'm1' ORDER BY version DESC LIMIT 1");
    assert.equal(stamped.rows[0].client_id, 'alice', 'logged changes carry the writer the core stamps (its origin)');

    await Promise.all(stores.map((candidate) => candidate.close()));
    await Promise.all(pools.map((pool) => pool.end()));
  });

  test('cleanup prunes field tombstones up to the pruned horizon and idle client records, keeping recent ones', async () => {
    const store = new PostgresStore(database.pool);
    const [schema] = await store.init(TARGETS);
    const fields = await openFields(store, schema as TableSchema);
    await database.pool.query("DELETE FROM _rhtmx_sync_clients; INSERT INTO todos (id, title) VALUES ('d1', 'one'), ('d2', 'two')");
    await rawSql(database.url, "DELETE FROM todos WHERE id = 'd1'");
    await new Promise((resolve) => setTimeout(resolve, 30));
    const cutoff = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 30));
    await rawSql(database.url, "DELETE FROM todos WHERE id = 'd2'");
    await database.pool.query(
      `INSERT INTO _rhtmx_sync_clients (client_id, last_mutation_id, updated_at) VALUES
         ('old', 1, now() - interval '10 days'), ($1, 1, now() - interval '10 days'), ('new', 1, now()), ($2, 1, now())`,
      [fieldClientKey('old'), fieldClientKey('new')],
    );
    const tombstones = async () =>
      (
        await database.pool.query("SELECT entity_id FROM _rhtmx_field_versions WHERE field = '*' AND value IS NULL ORDER BY entity_id")
      ).rows.map((row: { entity_id: string }) => row.entity_id);
    assert.deepEqual(await tombstones(), ['d1', 'd2']);

    const removed = await store.cleanup(cutoff, Date.now() - 86_400_000);
    assert.ok(removed >= 1);
    const horizon = await store.retainedSince('todos');
    assert.ok(
      horizon > 0 &&
        horizon < (await rawSql(database.url, "SELECT max(version)::int AS v FROM _rhtmx_sync_log WHERE entity_id = 'd2'")).rows[0].v,
    );
    assert.deepEqual(await tombstones(), ['d2'], 'the tombstone above the horizon stays');
    assert.equal(await fields.latest('todos', 'd1'), null, 'the pruned delete left nothing behind');
    assert.deepEqual(Object.keys(await records()).sort(), ['new', fieldClientKey('new')].sort());
    await store.close();
  });

  test('failing pushes give their client back to the pool; a broken connection is destroyed, not reused', async () => {
    const pool = new pg.Pool({ connectionString: database.url, max: 3 });
    pool.on('error', () => {});
    const store = new PostgresStore(pool);
    const [schema] = (await store.init(TARGETS)) as [TableSchema];
    const forbid = () => {
      throw new SyncError(ErrorCode.Forbidden, 'no', 403);
    };
    const pushes = Array.from({ length: 50 }, (_, index) =>
      store.push({ schema, clientId: `leak-${index % 5}`, changes: [create(`p${index}`, 'x', index)], decide: forbid }),
    );
    const settled = await Promise.allSettled(pushes);
    assert.ok(settled.every((result) => result.status === 'rejected' && result.reason instanceof SyncError));
    // A connection that dies inside the transaction: ROLLBACK fails too, and the client must not go back to the pool.
    await assert.rejects(transaction(pool, (client) => client.query('SELECT pg_terminate_backend(pg_backend_pid())')));
    assert.ok(pool.totalCount <= 3, `total ${pool.totalCount}`);
    assert.equal(pool.idleCount, pool.totalCount);
    assert.equal(pool.waitingCount, 0);
    // Its earlier pushes were all refused: the client has no record yet, and says so.
    const ok = await store.push({ schema, clientId: 'leak-0', fresh: true, changes: [create('p-ok', 'fine', 100)], decide: writeAll });
    assert.equal(ok[0]?.status, 'applied');
    assert.equal(
      (await pool.query("SELECT count(*)::int AS n FROM todos WHERE id LIKE 'p%'")).rows[0].n,
      1,
      'every forbidden push rolled back',
    );
    assert.equal((await pool.query("SELECT count(*)::int AS n FROM _rhtmx_sync_clients WHERE client_id LIKE 'leak-%'")).rows[0].n, 1);
    await store.close();
    await pool.end();
  });
});
