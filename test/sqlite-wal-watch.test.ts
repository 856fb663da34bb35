/**
 * A write by another process wakes the server at once (stores/sqlite/watch.ts):
 * the WAL file's directory is watched, the poll is only the safety net. The
 * poll here is a minute long, so a change that arrives within seconds came
 * through the file watch. A real engine on a SQLite file, a real child
 * process writing with its own better-sqlite3 connection, a real WebSocket.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { startServer, type TestServer, WsClient, waitFor } from './helpers.js';

const run = promisify(execFile);

/** `sql` run by a separate Node process on the database file. */
async function otherProcess(path: string, sql: string): Promise<void> {
  const script = `const Database = require('better-sqlite3'); const db = new Database(process.argv[1]);
    db.pragma('busy_timeout = 5000'); db.exec(process.argv[2]); db.close();`;
  await run(process.execPath, ['-e', script, path, sql], { cwd: process.cwd() });
}

describe('SQLite: writes by other processes', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ pollMs: 60_000 });
  });
  after(() => server?.close());

  test('reach a subscriber at once, though the poll is a minute long', async () => {
    const client = await WsClient.connect(server.wsUrl);
    try {
      await client.request({ type: 'subscribe', entities: ['todos'] });
      for (const id of Array.from({ length: 10 }, (_, index) => `w${index + 1}`)) {
        await otherProcess(server.dbPath, `INSERT INTO todos (id, title, done) VALUES ('${id}', 'from another process', 0)`);
        await waitFor(() => client.changes().some((change) => change.id === id), 10_000, `the write of ${id}`);
      }
      // A checkpoint that truncates the WAL (another process's) does not stop the watch.
      await otherProcess(server.dbPath, "PRAGMA wal_checkpoint(TRUNCATE); UPDATE todos SET title = 'after checkpoint' WHERE id = 'w1'");
      await waitFor(
        () => client.changes().some((change) => change.id === 'w1' && change.data?.title === 'after checkpoint'),
        10_000,
        'the write after a checkpoint',
      );
    } finally {
      client.close();
    }
  });
});
