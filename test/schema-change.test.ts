/**
 * Schema changes are followed live (docs/operations.md, "Migrations"): an
 * ALTER TABLE … ADD / DROP / RENAME COLUMN on a synced table, made by another
 * connection while the engine runs (SQLite: a second better-sqlite3
 * connection on the same file, as another process sees it; PostgreSQL: a
 * connection of its own, as psql), re-installs the capture triggers, so the
 * next write carries the new shape and pushes may set the new column; every
 * cursor handed out before the change gets a reset (must-refetch) for that
 * entity, also after a restart; live subscribers are told to refetch
 * (WebSocket close 4205, SSE stream ended); field sync follows too. On
 * PostgreSQL, several engines on one database all follow.
 *
 * Everything runs over real HTTP and WebSocket on loopback; waits poll for
 * arrival, never for time.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import pg from 'pg';
import { nodeHandler } from '../src/adapters/node.js';
import { memoryDb } from '../src/client/local/memory.js';
import { pullEntity } from '../src/client/local/replica.js';
import { http as clientHttp } from '../src/client/net/http.js';
import { FieldMergeStrategy, type SyncEngineOptions } from '../src/core/config.js';
import { CLOSE_MUST_REFETCH } from '../src/core/protocol.js';
import { SyncEngine } from '../src/engine.js';
import { getJson, postJson, SseClient, TODOS_SQL, tempDb, WsClient, waitFor } from './helpers.js';
import { createTestDatabase, PG_ADMIN_URL, PG_TODOS_SQL, rawSql } from './pg-helpers.js';

/** A database the engine runs on, and another connection to it (another process's view). */
interface Target {
  /** A new engine handle on the database (a restarted process opens its own). */
  handle(): unknown;
  /** Run SQL (several statements allowed) on a connection of its own. */
  exec(sql: string): Promise<void>;
  /** One query's rows, on a connection of its own. */
  query(sql: string): Promise<Array<Record<string, unknown>>>;
  /** The table's rows as the row JSON shows them (booleans as booleans), ordered by key. */
  rows(): Promise<Array<Record<string, unknown>>>;
  dispose(): Promise<void>;
}

interface Flavour {
  name: 'sqlite' | 'postgres';
  open(): Promise<Target>;
  /**
   * DROP COLUMN as a migration must write it. SQLite refuses to drop a column
   * a trigger names, so the migration drops the capture triggers in its own
   * transaction and the engine re-installs them (docs/operations.md).
   */
  dropColumn(column: string): string;
}

const sqlite: Flavour = {
  name: 'sqlite',
  async open() {
    const temp = tempDb(TODOS_SQL);
    const handles: Database.Database[] = [temp.db];
    const withOther = <T>(work: (other: Database.Database) => T): T => {
      const other = new Database(temp.path);
      try {
        other.pragma('busy_timeout = 5000');
        return work(other);
      } finally {
        other.close();
      }
    };
    let first = true;
    return {
      handle() {
        if (first) {
          first = false;
          return temp.db;
        }
        const db = new Database(temp.path);
        handles.push(db);
        return db;
      },
      async exec(sql) {
        withOther((other) => other.exec(sql));
      },
      async query(sql) {
        return withOther((other) => other.prepare(sql).all() as Array<Record<string, unknown>>);
      },
      async rows() {
        return withOther((other) =>
          (other.prepare('SELECT * FROM todos ORDER BY 1').all() as Array<Record<string, unknown>>).map((row) =>
            'done' in row ? { ...row, done: row.done === 1 } : row,
          ),
        );
      },
      async dispose() {
        for (const db of handles.slice(1)) db.close();
        temp.dispose();
      },
    };
  },
  dropColumn: (column) => `BEGIN IMMEDIATE;
    DROP TRIGGER IF EXISTS "_rhtmx_todos_insert"; DROP TRIGGER IF EXISTS "_rhtmx_todos_update"; DROP TRIGGER IF EXISTS "_rhtmx_todos_delete";
    ALTER TABLE todos DROP COLUMN ${column};
    COMMIT;`,
};

const postgres: Flavour = {
  name: 'postgres',
  async open() {
    const database = await createTestDatabase(PG_TODOS_SQL);
    const pools = [database.pool];
    let first = true;
    return {
      handle() {
        if (first) {
          first = false;
          return database.pool;
        }
        const pool = new pg.Pool({ connectionString: database.url, max: 10 });
        pool.on('error', () => {});
        pools.push(pool);
        return pool;
      },
      async exec(sql) {
        await rawSql(database.url, sql);
      },
      async query(sql) {
        return (await rawSql(database.url, sql)).rows;
      },
      async rows() {
        return (await rawSql(database.url, 'SELECT * FROM todos ORDER BY 1')).rows;
      },
      async dispose() {
        for (const pool of pools.slice(1)) await pool.end().catch(() => {});
        await database.dispose();
      },
    };
  },
  dropColumn: (column) => `ALTER TABLE todos DROP COLUMN ${column}`,
};

const FLAVOURS = [sqlite, postgres].filter(
  (flavour) => !process.env.RHTMX_TEST_STORES || process.env.RHTMX_TEST_STORES.split(',').includes(flavour.name),
);

interface Served {
  url: string;
  wsUrl: string;
  fieldWsUrl: string;
  engine: SyncEngine;
  close(): Promise<void>;
}

/** An engine on `db` behind a real node:http server on 127.0.0.1 (closing it leaves the database alone). */
async function serve(db: unknown, options: Partial<SyncEngineOptions> = {}): Promise<Served> {
  const engine = new SyncEngine({ db: db as SyncEngineOptions['db'], entities: ['todos'], pollMs: 10, ...options });
  await engine.ready;
  const server = http.createServer(nodeHandler(engine));
  engine.attach(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/api/sync/ws`,
    fieldWsUrl: `ws://127.0.0.1:${port}/api/field-sync/ws`,
    engine,
    async close() {
      await engine.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const pull = async (served: Served, since: number) => {
  const { status, body } = await getJson(`${served.url}/api/sync/todos?since=${since}`);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
};

const columnsOf = async (served: Served): Promise<string[]> =>
  (await getJson(`${served.url}/api/sync/schema`)).body.entities[0].columns.map((column: { name: string }) => column.name);

/** Wait until the engine serves the table with (or without) a column. */
const untilColumn = (served: Served, column: string, present = true) =>
  waitFor(async () => (await columnsOf(served)).includes(column) === present, 10_000, `${column} ${present ? 'added' : 'gone'}`);

/** Live changes a socket received, whichever framing it got (one change per message, or batches). */
const liveChanges = (client: WsClient): any[] =>
  client.messages.filter((message) => message.type === 'change').flatMap((message) => message.changes ?? [message.change]);

/** Resolves with the code and reason the server closes the socket with. */
const closed = (client: WsClient) =>
  new Promise<{ code: number; reason: string }>((resolve) =>
    client.socket.once('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') })),
  );

/** Our browser client's pull (src/client/local/replica.ts) over its own HTTP helper, on the memory store. */
function browserReplica(served: Served) {
  const db = memoryDb();
  const host = { db, idle: async () => {}, changed: () => {} };
  const api = clientHttp(`${served.url}/api/sync`);
  return {
    pull: () => pullEntity(host, api, 'todos', () => {}),
    /** Its rows of the entity as the app sees them (bookkeeping fields removed), ordered by key. */
    rows: () =>
      [...db.peek('todos').values()]
        .map((row) => {
          const { _v, _a, ...rest } = row as Record<string, unknown>;
          return rest;
        })
        .sort((a, b) => String(a.id).localeCompare(String(b.id))),
  };
}

for (const flavour of FLAVOURS) {
  describe(`schema changes are followed live [${flavour.name}]`, () => {
    test('ADD COLUMN: live subscribers refetch, the next write carries it (live and pulled), pushes and field sync may set it', async () => {
      const target = await flavour.open();
      const served = await serve(target.handle(), { fieldSync: FieldMergeStrategy.LastWriteWins });
      try {
        await target.exec("INSERT INTO todos (id, title) VALUES ('a', 'first')");
        const before = await pull(served, 0);
        const fieldBefore = (await getJson(`${served.url}/api/field-sync/todos?since=0`)).body;
        const entitySocket = await WsClient.connect(served.wsUrl);
        await entitySocket.request({ type: 'subscribe', entities: ['todos'], since: before.version });
        const fieldSocket = await WsClient.connect(served.fieldWsUrl);
        await fieldSocket.request({ type: 'subscribe', entities: ['todos'], since: fieldBefore.version });
        const stream = new SseClient(`${served.url}/api/sync/events?entities=todos&since=${before.version}`);
        await waitFor(() => stream.status === 200, 5000, 'SSE stream');
        const entityClosed = closed(entitySocket);
        const fieldClosed = closed(fieldSocket);

        await target.exec('ALTER TABLE todos ADD COLUMN notes TEXT');

        // Told to refetch: the socket is closed with the documented code, the SSE stream ends.
        assert.deepEqual(await entityClosed, {
          code: CLOSE_MUST_REFETCH,
          reason: 'todos: pull again (its schema changed or its log was pruned)',
        });
        assert.equal((await fieldClosed).code, CLOSE_MUST_REFETCH);
        await stream.done;
        assert.ok((await columnsOf(served)).includes('notes'), '/schema lists the new column');

        // The client reconnects and pulls from its old cursor: a reset snapshot, in the new shape.
        const reset = await pull(served, before.version);
        assert.equal(reset.reset, true);
        assert.deepEqual(
          reset.changes.map((change: { data: Record<string, unknown> }) => change.data),
          [{ id: 'a', title: 'first', done: false, updated_at: null, notes: null }],
        );
        const live = await WsClient.connect(served.wsUrl);
        await live.request({ type: 'subscribe', entities: ['todos'], since: reset.version });

        // The other process's next writes carry the new column, live and in pulls.
        await target.exec("INSERT INTO todos (id, title, notes) VALUES ('b', 'second', 'written elsewhere')");
        await target.exec("UPDATE todos SET notes = 'noted' WHERE id = 'a'");
        await waitFor(() => liveChanges(live).length >= 2, 10_000, 'both writes live');
        assert.deepEqual(
          liveChanges(live).map((change) => [change.id, change.action, change.data.notes]),
          [
            ['b', 'create', 'written elsewhere'],
            ['a', 'update', 'noted'],
          ],
        );
        const next = await pull(served, reset.version);
        assert.equal(next.reset, undefined);
        assert.deepEqual(
          next.changes.map((change: { id: string; data: Record<string, unknown> }) => [change.id, change.data.notes]),
          [
            ['b', 'written elsewhere'],
            ['a', 'noted'],
          ],
        );

        // A push may set the new column (entity and field level).
        const pushed = await postJson(`${served.url}/api/sync/todos`, {
          client_id: 'tab-1',
          changes: [{ mutation_id: 1, id: 'c', action: 'create', data: { title: 'pushed', notes: 'from a push' } }],
        });
        assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
        assert.equal(pushed.body.results[0].status, 'applied');
        const fieldPush = await postJson(`${served.url}/api/field-sync/todos`, {
          client_id: 'tab-1',
          changes: [{ mutation_id: 1, entity_id: 'b', field: 'notes', value: 'a field push', timestamp: Date.now() }],
        });
        assert.equal(fieldPush.status, 200, JSON.stringify(fieldPush.body));
        assert.equal(fieldPush.body.results[0].status, 'applied');
        await waitFor(() => liveChanges(live).length >= 4, 10_000, 'the pushes live');
        assert.deepEqual(
          liveChanges(live)
            .slice(2)
            .map((change) => [change.id, change.data.notes]),
          [
            ['c', 'from a push'],
            ['b', 'a field push'],
          ],
        );

        // Field sync: an old field cursor gets a reset snapshot holding the new field; a fresh one sees its changes.
        const fieldReset = (await getJson(`${served.url}/api/field-sync/todos?since=${fieldBefore.version}`)).body;
        assert.equal(fieldReset.reset, true);
        const notes = (changes: Array<{ entity_id: string; field: string; value: unknown }>) =>
          Object.fromEntries(changes.filter((change) => change.field === 'notes').map((change) => [change.entity_id, change.value]));
        assert.deepEqual(notes(fieldReset.changes), { a: 'noted', b: 'a field push', c: 'from a push' });
        await target.exec("UPDATE todos SET notes = 'again' WHERE id = 'c'");
        const fieldNext = await waitFor(
          async () => {
            const page = (await getJson(`${served.url}/api/field-sync/todos?since=${fieldReset.version}`)).body;
            return page.changes.length > 0 && page;
          },
          10_000,
          'the field change',
        );
        assert.equal(fieldNext.reset, undefined);
        assert.deepEqual(
          fieldNext.changes.map((change: { entity_id: string; field: string; value: unknown }) => [
            change.entity_id,
            change.field,
            change.value,
          ]),
          [['c', 'notes', 'again']],
        );
        entitySocket.close();
        fieldSocket.close();
        live.close();
      } finally {
        await served.close();
        await target.dispose();
      }
    });

    test('DROP COLUMN and RENAME COLUMN: a client at an old cursor gets a reset and ends with rows equal to the table', async () => {
      const target = await flavour.open();
      const served = await serve(target.handle());
      try {
        await target.exec(
          "INSERT INTO todos (id, title, updated_at) VALUES ('a', 'first', '2026-01-01'), ('b', 'second', '2026-01-02'), ('c', 'third', NULL)",
        );
        const browser = browserReplica(served);
        await browser.pull();
        assert.deepEqual(browser.rows(), await target.rows());
        const old = (await pull(served, 0)).version;

        if (flavour.name === 'sqlite') {
          // SQLite itself refuses to drop a column the capture triggers name (hence the migration above).
          await assert.rejects(target.exec('ALTER TABLE todos DROP COLUMN updated_at'), /error in trigger/);
        }
        await target.exec(flavour.dropColumn('updated_at'));
        await untilColumn(served, 'updated_at', false);
        const afterDrop = await pull(served, old);
        assert.equal(afterDrop.reset, true, 'a cursor from before the change must refetch');
        assert.ok(afterDrop.changes.every((change: { data: Record<string, unknown> }) => !('updated_at' in change.data)));
        await browser.pull();
        assert.deepEqual(browser.rows(), await target.rows());
        assert.ok(
          browser.rows().every((row) => !('updated_at' in row)),
          'the dropped column is gone from the copy',
        );

        // Writes after the drop are captured again (SQLite: the engine re-installed the triggers).
        await target.exec("UPDATE todos SET title = 'first, edited' WHERE id = 'a'; DELETE FROM todos WHERE id = 'c'");
        await waitFor(async () => (await pull(served, afterDrop.version)).changes.length === 2, 10_000, 'writes after the drop');

        await target.exec('ALTER TABLE todos RENAME COLUMN title TO label');
        await untilColumn(served, 'label');
        await target.exec("UPDATE todos SET label = 'relabelled' WHERE id = 'b'");
        await browser.pull();
        const rows = await target.rows();
        assert.deepEqual(
          rows.map((row) => row.label),
          ['first, edited', 'relabelled'],
        );
        assert.deepEqual(browser.rows(), rows);
        assert.ok(
          browser.rows().every((row) => !('title' in row)),
          'no row keeps the old name',
        );

        // From its new cursor the client continues incrementally, in the new shape.
        await target.exec("UPDATE todos SET label = 'last' WHERE id = 'a'");
        const cursor = await browser.pull();
        assert.equal((await pull(served, cursor)).reset, undefined);
        assert.deepEqual(browser.rows(), await target.rows());
        const pushed = await postJson(`${served.url}/api/sync/todos`, {
          changes: [{ id: 'd', action: 'create', data: { label: 'pushed', done: true } }],
        });
        assert.equal(pushed.body.results[0].status, 'applied');
        const refused = await postJson(`${served.url}/api/sync/todos`, {
          changes: [{ id: 'e', action: 'create', data: { title: 'old name' } }],
        });
        assert.equal(refused.status, 400);
        assert.equal(refused.body.error.code, 'unknown_column');
        await browser.pull();
        assert.deepEqual(browser.rows(), await target.rows());
      } finally {
        await served.close();
        await target.dispose();
      }
    });

    test('renaming the primary key column is followed when the entity does not name its primaryKey; writes never fail meanwhile', async () => {
      const target = await flavour.open();
      const served = await serve(target.handle());
      try {
        await target.exec("INSERT INTO todos (id, title) VALUES ('a', 'first')");
        const browser = browserReplica(served);
        const old = await browser.pull();
        // The rename and writes in one go: the capture triggers are still the old ones for these.
        await target.exec(
          "BEGIN; ALTER TABLE todos RENAME COLUMN id TO key; INSERT INTO todos (key, title) VALUES ('b', 'second'); UPDATE todos SET title = 'first, edited' WHERE key = 'a'; COMMIT;",
        );
        await waitFor(
          async () => (await getJson(`${served.url}/api/sync/schema`)).body.entities[0].primaryKey === 'key',
          10_000,
          'new key',
        );
        assert.equal((await pull(served, old)).reset, true);
        const pushed = await postJson(`${served.url}/api/sync/todos`, {
          changes: [{ id: 'c', action: 'create', data: { title: 'third' } }],
        });
        assert.equal(pushed.body.results[0].status, 'applied');
        await browser.pull();
        // Our client keys rows by `id` whatever the key column is called; the row data is the table's.
        assert.deepEqual(
          browser.rows(),
          (await target.rows()).map((row) => ({ ...row, id: row.key })),
        );
      } finally {
        await served.close();
        await target.dispose();
      }
    });

    test('the horizon survives a restart, and a migration made while no engine ran is followed at start', async () => {
      const target = await flavour.open();
      let served = await serve(target.handle());
      try {
        await target.exec("INSERT INTO todos (id, title) VALUES ('a', 'first')");
        const old = (await pull(served, 0)).version;
        await target.exec('ALTER TABLE todos ADD COLUMN notes TEXT');
        await untilColumn(served, 'notes');
        const current = (await pull(served, old)).version;
        await served.close();

        // A new process on the same database: the persisted horizon still sends the old cursor a reset.
        served = await serve(target.handle());
        assert.equal((await pull(served, old)).reset, true);
        const fresh = await pull(served, current);
        assert.equal(fresh.reset, undefined);
        assert.deepEqual(fresh.changes, []);
        await served.close();

        // Migrated while no engine ran: the next start notices and sends older cursors a reset.
        await target.exec('ALTER TABLE todos ADD COLUMN tags TEXT');
        served = await serve(target.handle());
        assert.ok((await columnsOf(served)).includes('tags'));
        const reset = await pull(served, current);
        assert.equal(reset.reset, true);
        assert.equal(reset.changes.length, 1, JSON.stringify(reset));
        assert.deepEqual(reset.changes[0].data, { id: 'a', title: 'first', done: false, updated_at: null, notes: null, tags: null });
        const live = await WsClient.connect(served.wsUrl);
        await live.request({ type: 'subscribe', entities: ['todos'], since: reset.version });
        await target.exec("UPDATE todos SET tags = 'x' WHERE id = 'a'");
        await waitFor(() => liveChanges(live).length > 0, 10_000, 'the write live');
        assert.equal(liveChanges(live)[0].data.tags, 'x');
        live.close();
      } finally {
        await served.close();
        await target.dispose();
      }
    });
  });
}

if (FLAVOURS.includes(postgres)) {
  describe('schema changes on several nodes [postgres]', () => {
    let target: Target;
    let nodes: Served[] = [];
    before(async () => {
      target = await postgres.open();
      await target.exec("INSERT INTO todos (id, title) VALUES ('a', 'first')");
      // The safety poll is off: the DDL notice is what wakes them.
      nodes = await Promise.all([serve(target.handle(), { pollMs: 600_000 }), serve(target.handle(), { pollMs: 600_000 })]);
    });
    after(async () => {
      await Promise.all(nodes.map((node) => node.close()));
      await target.dispose();
    });

    test('an ALTER TABLE wakes every node: each refetches its subscribers, serves the new column, and the horizon is raised once', async () => {
      const old = (await pull(nodes[0] as Served, 0)).version;
      const sockets = await Promise.all(nodes.map((node) => WsClient.connect(node.wsUrl)));
      for (const socket of sockets) await socket.request({ type: 'subscribe', entities: ['todos'], since: old });
      const closes = sockets.map(closed);
      const claimed = async () => Number((await target.query('SELECT last_value FROM _rhtmx_sync_version'))[0]?.last_value);
      const before = await claimed();

      await target.exec('ALTER TABLE todos ADD COLUMN notes TEXT');

      for (const close of closes) assert.equal((await close).code, CLOSE_MUST_REFETCH);
      for (const node of nodes) await untilColumn(node, 'notes');
      assert.equal(await claimed(), before + 1, 'one version reserved as the horizon, by one node');
      for (const node of nodes) assert.equal((await pull(node, old)).reset, true);

      // A push with the new column on one node reaches a subscriber of the other.
      const onB = await WsClient.connect((nodes[1] as Served).wsUrl);
      const since = (await pull(nodes[1] as Served, old)).version;
      await onB.request({ type: 'subscribe', entities: ['todos'], since });
      const pushed = await postJson(`${(nodes[0] as Served).url}/api/sync/todos`, {
        changes: [{ id: 'b', action: 'create', data: { title: 'via A', notes: 'new column' } }],
      });
      assert.equal(pushed.body.results[0].status, 'applied');
      await waitFor(() => liveChanges(onB).length > 0, 10_000, 'the push on the other node');
      assert.equal(liveChanges(onB)[0].data.notes, 'new column');
      onB.close();
    });
  });
}

if (FLAVOURS.includes(postgres)) {
  describe('schema changes without a superuser [postgres]', () => {
    test('an app role that may not create the event trigger still follows ALTER TABLE, found by the safety poll', async () => {
      const database = await createTestDatabase(null);
      const role = `rhtmx_app_${database.name.slice('rhtmx_test_'.length)}`;
      await rawSql(database.url, `CREATE ROLE ${role} LOGIN NOSUPERUSER; ALTER DATABASE ${database.name} OWNER TO ${role}`);
      const url = new URL(database.url);
      url.username = role;
      const pool = new pg.Pool({ connectionString: url.toString(), max: 5 });
      pool.on('error', () => {});
      let served: Served | null = null;
      try {
        await rawSql(url.toString(), PG_TODOS_SQL);
        await rawSql(url.toString(), "INSERT INTO todos (id, title) VALUES ('a', 'first')");
        served = await serve(pool, { pollMs: 20 });
        const events = await rawSql(database.url, 'SELECT evtname FROM pg_event_trigger');
        assert.equal(events.rowCount, 0, 'only a superuser may create event triggers');
        const old = (await pull(served, 0)).version;
        const socket = await WsClient.connect(served.wsUrl);
        await socket.request({ type: 'subscribe', entities: ['todos'], since: old });
        const socketClosed = closed(socket);

        await rawSql(url.toString(), 'ALTER TABLE todos ADD COLUMN notes TEXT');

        assert.equal((await socketClosed).code, CLOSE_MUST_REFETCH);
        await untilColumn(served, 'notes');
        const reset = await pull(served, old);
        assert.equal(reset.reset, true);
        assert.deepEqual(reset.changes[0].data, { id: 'a', title: 'first', done: false, updated_at: null, notes: null });
      } finally {
        await served?.close();
        await pool.end().catch(() => {});
        await database.dispose();
        await rawSql(PG_ADMIN_URL, `DROP ROLE IF EXISTS ${role}`);
      }
    });
  });
}

if (FLAVOURS.includes(sqlite)) {
  describe('schema changes with two engines on one SQLite file [sqlite]', () => {
    test('both follow an ALTER TABLE made by a third connection; the horizon is raised once', async () => {
      const target = await sqlite.open();
      const engines = [await serve(target.handle()), await serve(target.handle())];
      try {
        await target.exec("INSERT INTO todos (id, title) VALUES ('a', 'first')");
        const old = (await pull(engines[0] as Served, 0)).version;
        const sockets = await Promise.all(engines.map((engine) => WsClient.connect(engine.wsUrl)));
        for (const socket of sockets) await socket.request({ type: 'subscribe', entities: ['todos'], since: old });
        const closes = sockets.map(closed);
        const claimed = async () => Number((await target.query("SELECT seq FROM sqlite_sequence WHERE name = '_rhtmx_sync_log'"))[0]?.seq);
        const before = await claimed();

        await target.exec('ALTER TABLE todos ADD COLUMN notes TEXT');

        for (const close of closes) assert.equal((await close).code, CLOSE_MUST_REFETCH);
        for (const engine of engines) await untilColumn(engine, 'notes');
        assert.equal(await claimed(), before + 1, 'one version reserved as the horizon, by one engine');
        for (const engine of engines) assert.equal((await pull(engine, old)).reset, true);
        await target.exec("INSERT INTO todos (id, title, notes) VALUES ('b', 'second', 'n')");
        for (const engine of engines) {
          const page = await pull(engine, before + 1);
          assert.deepEqual(
            page.changes.map((change: { id: string; data: Record<string, unknown> }) => [change.id, change.data.notes]),
            [['b', 'n']],
          );
        }
      } finally {
        for (const engine of engines) await engine.close();
        await target.dispose();
      }
    });
  });
}
