import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { SyncEngine } from '../src/engine.js';
import { getJson, SseClient, startServer, type TestServer, tempDb, waitFor } from './helpers.js';

describe('change capture by triggers [sqlite]', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  test('writes from another process reach live clients and pulls', async () => {
    const sse = new SseClient(`${server.url}/api/sync/events`);
    await waitFor(() => sse.status === 200);
    // A separate Node process with its own connection, as a cron job or the sqlite3 CLI would be.
    const script = `
      const Database = require('better-sqlite3');
      const db = new Database(process.argv[1]);
      db.pragma('busy_timeout = 5000');
      db.prepare("INSERT INTO todos (id, title, done) VALUES ('proc1', 'from another process', 0)").run();
      db.prepare("UPDATE todos SET title = 'edited elsewhere' WHERE id = 'proc1'").run();
      db.close();
    `;
    const child = spawn(process.execPath, ['-e', script, server.dbPath], { stdio: 'inherit' });
    const code = await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(code, 0);
    await waitFor(() => sse.changes().filter((change) => change.id === 'proc1').length >= 2, 5000, 'changes from the other process');
    assert.deepEqual(
      sse.changes().map((change) => [change.id, change.action, change.data.title]),
      [
        ['proc1', 'create', 'from another process'],
        ['proc1', 'update', 'edited elsewhere'],
      ],
    );
    sse.close();
  });

  test('writes by app code on the same connection are captured too', async () => {
    const sse = new SseClient(`${server.url}/api/sync/events`);
    await waitFor(() => sse.status === 200);
    server.db.prepare("INSERT INTO todos (id, title, done) VALUES ('same', 'same connection', 1)").run();
    server.db.prepare("DELETE FROM todos WHERE id = 'same'").run();
    await waitFor(() => sse.changes().length >= 2);
    assert.deepEqual(
      sse.changes().map((change) => [change.id, change.action]),
      [
        ['same', 'create'],
        ['same', 'delete'],
      ],
    );
    sse.close();
  });

  test('a primary key change is logged as a delete of the old id and an update of the new one', async () => {
    const start = (await getJson(`${server.url}/api/sync/todos?since=0`)).body.version;
    server.db.prepare("INSERT INTO todos (id, title, done) VALUES ('old-key', 'k', 0)").run();
    server.db.prepare("UPDATE todos SET id = 'new-key' WHERE id = 'old-key'").run();
    const { body } = await getJson(`${server.url}/api/sync/todos?since=${start}`);
    assert.deepEqual(
      body.changes.map((change: any) => [change.id, change.action]),
      [
        ['old-key', 'delete'],
        ['new-key', 'update'],
      ],
    );
  });

  test('restarting the engine keeps the log and reinstalls triggers for new columns', async () => {
    const temp = tempDb('CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)');
    try {
      const first = await SyncEngine.create({ db: temp.db, entities: ['items'] });
      temp.db.prepare("INSERT INTO items (name) VALUES ('a')").run();
      await first.close();
      temp.db.exec('ALTER TABLE items ADD COLUMN price REAL');
      const second = await SyncEngine.create({ db: temp.db, entities: ['items'] });
      temp.db.prepare("INSERT INTO items (name, price) VALUES ('b', 2.5)").run();
      const pulled = await second.pull('items', 0);
      assert.deepEqual(
        pulled.changes.map((change) => change.data),
        [
          { id: 1, name: 'a', price: null },
          { id: 2, name: 'b', price: 2.5 },
        ],
      );
      // Integer keys travel as strings on the wire; the row keeps its number.
      assert.deepEqual(
        pulled.changes.map((change) => change.id),
        ['1', '2'],
      );
      await second.close();
    } finally {
      temp.dispose();
    }
  });

  test('a table without a primary key, or a missing table, is refused at start-up', async () => {
    const temp = tempDb('CREATE TABLE loose (name TEXT)');
    try {
      await assert.rejects(SyncEngine.create({ db: temp.db, entities: ['loose'] }), /primary key/);
      await assert.rejects(SyncEngine.create({ db: temp.db, entities: ['missing'] }), /does not exist/);
      assert.throws(() => new SyncEngine({ db: temp.db, entities: ['bad name; DROP'] }), /invalid entity name/);
    } finally {
      temp.dispose();
    }
  });

  test('the sqlite3 database file stays readable by other tools while the engine runs', () => {
    const other = new Database(server.dbPath, { readonly: true });
    try {
      const count = other.prepare('SELECT COUNT(*) AS n FROM _rhtmx_sync_log').get() as { n: number };
      assert.ok(count.n > 0);
      assert.equal(other.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      other.close();
    }
  });
});
