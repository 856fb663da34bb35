/**
 * The SQLite store's shared machinery against a real SQLite file: one
 * exactly-once record table for both push families (and the migration of the
 * old field table into it), cleanup pruning field tombstones and idle client
 * records, and one wording for a refused write whichever family pushed it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  type FieldStore,
  type FieldWrite,
  fieldClientKey,
  snapshotChanges,
  type TableSchema,
  type ValidatedChange,
} from '../src/core/store.js';
import { SqliteStore } from '../src/stores/sqlite/index.js';
import { type TempDb, tempDb } from './helpers.js';

const TARGETS = [{ entity: 'todos', table: 'todos' }];

const fieldWrite = (entityId: string, field: string, value: string | null, mutationId: number | null = null): FieldWrite => ({
  mutationId,
  entityId,
  field,
  action: 'update',
  value,
  json: value,
  clientValue: value,
  timestamp: null,
  baseVersion: null,
  invalid: null,
});

const create = (id: string, data: ValidatedChange['data'], mutationId: number | null = null): ValidatedChange => ({
  mutationId,
  id,
  action: 'create',
  data,
  baseVersion: null,
  timestamp: null,
});

const hlc = () => Date.now() * 4096;

async function open(temp: TempDb): Promise<{ store: SqliteStore; schema: TableSchema; fields: FieldStore }> {
  const store = new SqliteStore(temp.db);
  const [schema] = (await store.init(TARGETS)) as [TableSchema];
  const fields = await store.openFieldStore();
  await fields.init([{ schema, fields: schema.columns.filter((column) => !column.primaryKey) }]);
  return { store, schema, fields };
}

describe('SQLite store layout', () => {
  let temp: TempDb;
  const records = (): Record<string, number> =>
    Object.fromEntries(
      (
        temp.db.prepare('SELECT client_id, last_mutation_id FROM _rhtmx_sync_clients').all() as Array<{
          client_id: string;
          last_mutation_id: number;
        }>
      ).map((row) => [row.client_id, row.last_mutation_id]),
    );

  before(() => {
    temp = tempDb();
  });
  after(() => temp.dispose());

  test('the old field client table migrates into the one record table, keeping the greater id', async () => {
    const first = new SqliteStore(temp.db);
    await first.init(TARGETS);
    await first.close();
    // A database left by the previous version: field records in their own table.
    temp.db.exec(`
      CREATE TABLE _rhtmx_field_clients (client_id TEXT PRIMARY KEY, last_mutation_id INTEGER NOT NULL, updated_at INTEGER NOT NULL);
      INSERT INTO _rhtmx_field_clients VALUES ('alice', 5, 1), ('bob', 3, 1), ('carol', 9, 1);
    `);
    // Records a process on the new version already wrote: the entity family's, and field records under the new key.
    const insert = temp.db.prepare('INSERT INTO _rhtmx_sync_clients (client_id, last_mutation_id, updated_at) VALUES (?, ?, ?)');
    insert.run('alice', 40, Date.now());
    insert.run(fieldClientKey('bob'), 7, Date.now());
    insert.run(fieldClientKey('carol'), 1, Date.now());

    const { store, fields } = await open(temp);
    assert.equal(temp.db.prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = '_rhtmx_field_clients'").pluck().get(), 0);
    assert.deepEqual(records(), {
      alice: 40, // the entity family's record is untouched
      [fieldClientKey('alice')]: 5,
      [fieldClientKey('bob')]: 7,
      [fieldClientKey('carol')]: 9,
    });

    // Field pushes now dedupe against the migrated record, and write it there.
    temp.db.exec("INSERT INTO todos (id, title) VALUES ('m1', 'before')");
    const push = (mutationId: number, title: string) =>
      fields.push({
        entity: 'todos',
        clientId: fieldClientKey('alice'),
        origin: 'alice',
        changes: [fieldWrite('m1', 'title', title, mutationId)],
        decide: () => ({ kind: 'write', hlc: hlc() }),
      });
    assert.equal((await push(5, 'replayed'))[0]?.duplicate, true);
    assert.equal((await push(6, 'after'))[0]?.status, 'applied');
    assert.equal(temp.db.prepare("SELECT title FROM todos WHERE id = 'm1'").pluck().get(), 'after');
    assert.deepEqual([records()[fieldClientKey('alice')], records().alice], [6, 40]);
    const stamped = temp.db
      .prepare("SELECT client_id FROM _rhtmx_sync_log WHERE entity_id = 'm1' ORDER BY version DESC LIMIT 1")
      .pluck()
      .get();
    assert.equal(stamped, 'alice', 'logged changes carry the client id as the client knows it');
    assert.equal(temp.db.prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = '_rhtmx_field_clients'").pluck().get(), 0);
    await store.close();
  });

  test('cleanup prunes field tombstones up to the pruned horizon and idle client records, keeping recent ones', async () => {
    const { store, fields } = await open(temp);
    temp.db.exec("DELETE FROM _rhtmx_sync_clients; INSERT INTO todos (id, title) VALUES ('d1', 'one'), ('d2', 'two')");
    temp.db.exec("DELETE FROM todos WHERE id = 'd1'");
    await new Promise((resolve) => setTimeout(resolve, 20));
    const cutoff = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 20));
    temp.db.exec("DELETE FROM todos WHERE id = 'd2'");
    const old = Date.now() - 10 * 86_400_000;
    const insert = temp.db.prepare('INSERT INTO _rhtmx_sync_clients (client_id, last_mutation_id, updated_at) VALUES (?, 1, ?)');
    for (const [id, at] of [
      ['old', old],
      [fieldClientKey('old'), old],
      ['new', Date.now()],
      [fieldClientKey('new'), Date.now()],
    ] as const) {
      insert.run(id, at);
    }
    const tombstones = () =>
      temp.db.prepare("SELECT entity_id FROM _rhtmx_field_versions WHERE field = '*' AND value IS NULL ORDER BY entity_id").pluck().all();
    assert.deepEqual(tombstones(), ['d1', 'd2']);

    const removed = await store.cleanup(cutoff, Date.now() - 86_400_000);
    assert.ok(removed >= 1);
    const horizon = await store.retainedSince('todos');
    const d2 = temp.db.prepare("SELECT MAX(version) FROM _rhtmx_sync_log WHERE entity_id = 'd2'").pluck().get() as number;
    assert.ok(horizon > 0 && horizon < d2, `horizon ${horizon} below the newer delete ${d2}`);
    assert.deepEqual(tombstones(), ['d2'], 'the tombstone above the horizon stays');
    assert.equal(await fields.latest('todos', 'd1'), null, 'the pruned delete left nothing behind');
    assert.deepEqual(Object.keys(records()).sort(), ['new', fieldClientKey('new')].sort());
    await store.close();
  });

  test('cleanup cuts the log in commit order: an old entry written after a younger one waits, and writes keep no created_at index', async () => {
    const { store } = await open(temp);
    temp.db.exec("INSERT INTO todos (id, title) VALUES ('c1', 'one'), ('c2', 'two'), ('c3', 'three')");
    temp.db.exec("DELETE FROM todos WHERE id = 'c1'; DELETE FROM todos WHERE id = 'c2'; DELETE FROM todos WHERE id = 'c3'");
    const deletes = temp.db
      .prepare("SELECT version FROM _rhtmx_sync_log WHERE entity_id IN ('c1', 'c2', 'c3') AND action = 'delete' ORDER BY version")
      .pluck()
      .all() as number[];
    const old = Date.now() - 10 * 86_400_000;
    // Everything up to c1's delete is old, c2's delete after it young, c3's after that old again (a clock set back).
    temp.db.prepare('UPDATE _rhtmx_sync_log SET created_at = ? WHERE version <= ?').run(old, deletes[0]);
    const age = temp.db.prepare('UPDATE _rhtmx_sync_log SET created_at = ? WHERE version = ?');
    age.run(Date.now(), deletes[1]);
    age.run(old, deletes[2]);
    await store.cleanup(Date.now() - 86_400_000, old);
    const left = temp.db
      .prepare("SELECT entity_id FROM _rhtmx_sync_log WHERE entity_id IN ('c1', 'c2', 'c3') AND action = 'delete'")
      .pluck();
    assert.deepEqual(left.all(), ['c2', 'c3'], 'c1 is pruned; c3 stays until c2 is old too');
    assert.equal(await store.retainedSince('todos'), deletes[0], 'the horizon is the newest pruned tombstone');
    const indexes = temp.db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '_rhtmx_sync_log'").pluck().all();
    assert.ok(!indexes.some((name) => String(name).endsWith('_age')), `log indexes: ${indexes.join(', ')}`);
    await store.close();
  });

  test('entity and field pushes word a refused write the same way, naming the column and no SQL', async () => {
    const { store, schema, fields } = await open(temp);
    const [entity] = await store.push({
      schema,
      clientId: 'writer',
      changes: [create('n1', { title: null }, 1)],
      decide: (change) => ({ kind: 'write', action: change.action, data: change.data, hlc: hlc() }),
    });
    const [field] = await fields.push({
      entity: 'todos',
      clientId: fieldClientKey('writer'),
      changes: [fieldWrite('n2', 'done', '1', 1)],
      decide: () => ({ kind: 'write', hlc: hlc() }),
    });
    assert.equal(entity?.status, 'rejected');
    assert.equal(field?.status, 'rejected');
    assert.equal(entity?.reason, 'NOT NULL constraint failed: todos.title');
    assert.equal(field?.reason, entity?.reason);
    // The refused change still counts as processed in each family's own record.
    assert.deepEqual([records().writer, records()[fieldClientKey('writer')]], [1, 1]);
    await store.close();
  });

  test('rows() shows current rows as their JSON shows them; missing ids are absent', async () => {
    const { store, fields } = await open(temp);
    temp.db.exec("INSERT INTO todos (id, title, done) VALUES ('r1', 'shown', 1)");
    const rows = await fields.rows('todos', ['r1', 'missing']);
    assert.deepEqual([...rows.keys()], ['r1']);
    assert.deepEqual(rows.get('r1'), { id: 'r1', title: 'shown', done: true, updated_at: null });
    await store.close();
  });

  test('snapshotJson is the JSON of snapshot, page by page, whatever the keys hold', async () => {
    const { store } = await open(temp);
    const insert = temp.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, ?)');
    for (const id of ['q"uote', 'back\\slash', 'new\nline', 'ünï', 'z1', 'z2', 'z3']) insert.run(id, `t ${id}`, 0);
    let from: string | undefined;
    const pinned = await store.currentVersion();
    for (let pages = 0; ; pages++) {
      const page = await store.snapshot('todos', 3, from, pinned);
      const text = await store.snapshotJson('todos', 3, from, pinned);
      assert.deepEqual(JSON.parse(text.json), snapshotChanges('todos', page));
      assert.equal(text.after, page.after);
      assert.equal(text.version, pinned);
      if (page.after === undefined) {
        assert.ok(pages >= 2);
        break;
      }
      from = page.after;
    }
    temp.db.exec('DELETE FROM todos');
    assert.deepEqual(await store.snapshotJson('todos', 3), { json: '[]', version: await store.currentVersion() });
    await store.close();
  });
});
