/**
 * Several engine processes on one PostgreSQL database (a load-balanced
 * deployment): each node sees every write, whichever node or tool made it,
 * and a node whose LISTEN connection dies catches up from the log.
 *
 * The nodes run with the safety poll effectively off (POLL_MS=600000), so
 * everything here is delivered by NOTIFY or by the catch-up after reconnecting.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { Change } from '../src/core/protocol.js';
import { getJson, postJson, SseClient, WsClient, waitFor, writer } from './helpers.js';
import { connect, createTestDatabase, listenerPids, type PgNode, rawSql, spawnPgNode, type TestDatabase } from './pg-helpers.js';

const run = promisify(execFile);
const ids = (changes: Change[]) => changes.map((change) => change.id);

describe('several nodes on one database [postgres]', () => {
  let database: TestDatabase;
  let a: PgNode;
  let b: PgNode;
  before(async () => {
    database = await createTestDatabase();
    // Both nodes install their triggers at the same time.
    [a, b] = await Promise.all([spawnPgNode(database.url, { POLL_MS: '600000' }), spawnPgNode(database.url, { POLL_MS: '600000' })]);
    // Cursors start past 0 (since=0 asks for a snapshot, not the log).
    await database.pool.query("INSERT INTO todos (id, title) VALUES ('seed', 'seed')");
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await database.dispose();
  });

  test('a client on node A sees pushes to node B and writes from psql; cursors are valid on every node', async () => {
    const start = (await getJson(`${a.url}/api/sync/todos?since=0`)).body.version;
    const onA = await WsClient.connect(a.wsUrl);
    await onA.request({ type: 'subscribe', entities: ['todos'], since: start });
    const onB = new SseClient(`${b.url}/api/sync/events?entities=todos&since=${start}`);
    await waitFor(() => onB.status === 200, 5000, 'SSE on B');

    const pushed = await postJson(`${b.url}/api/sync/todos`, {
      client_id: 'tab-1',
      changes: [{ mutation_id: 1, id: 'from-b', action: 'create', data: { title: 'pushed to B', done: false } }],
    });
    assert.equal(pushed.body.results[0].status, 'applied');
    await run('psql', [
      database.url,
      '-v',
      'ON_ERROR_STOP=1',
      '-qc',
      "INSERT INTO todos (id, title) VALUES ('from-psql', 'typed in psql')",
    ]);
    const ack = await onA.request({ type: 'push', entity: 'todos', entity_id: 'from-a', action: 'create', data: { title: 'pushed to A' } });
    assert.equal(ack.type, 'push_ack');

    await waitFor(() => onA.changes().length >= 3 && onB.changes().length >= 3, 10_000, 'both nodes deliver all three');
    assert.deepEqual(ids(onA.changes()), ['from-b', 'from-psql', 'from-a']);
    assert.deepEqual(ids(onB.changes()), ['from-b', 'from-psql', 'from-a']);
    assert.equal(onA.changes()[0].client_id, writer('tab-1'), 'the pushing client is known on the other node, as a digest');
    assert.equal(onA.changes()[1].client_id, null);

    // A cursor handed out by node B continues on node A (and the other way round).
    const fromB = (await getJson(`${b.url}/api/sync/todos?since=${start}`)).body;
    assert.deepEqual(ids(fromB.changes), ['from-b', 'from-psql', 'from-a']);
    await rawSql(database.url, "UPDATE todos SET done = true WHERE id = 'from-b'");
    const onNodeA = (await getJson(`${a.url}/api/sync/todos?since=${fromB.version}`)).body;
    assert.deepEqual(
      onNodeA.changes.map((change: Change) => [change.id, change.action, change.data?.done]),
      [['from-b', 'update', true]],
    );
    // A retried push to the other node is recognised as already applied.
    const retried = await postJson(`${a.url}/api/sync/todos`, {
      client_id: 'tab-1',
      changes: [{ mutation_id: 1, id: 'from-b', action: 'create', data: { title: 'pushed to B', done: false } }],
    });
    assert.equal(retried.body.results[0].duplicate, true);
    assert.equal(retried.body.results[0].row.done, true);
    onA.close();
    onB.close();
  });

  test('a killed LISTEN connection reconnects and catches up on the write whose NOTIFY it missed', async () => {
    const start = (await getJson(`${a.url}/api/sync/todos?since=0`)).body.version;
    const onA = await WsClient.connect(a.wsUrl);
    await onA.request({ type: 'subscribe', entities: ['todos'], since: start });
    const onB = new SseClient(`${b.url}/api/sync/events?entities=todos&since=${start}`);
    await waitFor(() => onB.status === 200, 5000, 'SSE on B');
    await waitFor(async () => (await listenerPids(database.url)).length === 2, 5000, 'two listeners');

    // Kill both nodes' listeners and write at once. Proof that the NOTIFY went to nobody: every new
    // listener connection started after the write committed. (If a node was quicker, try again.)
    let written: string | null = null;
    for (let attempt = 1; attempt <= 5 && written === null; attempt++) {
      const before = await listenerPids(database.url);
      const writer = await connect(database.url);
      try {
        await writer.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid', [before]);
        const id = `while-deaf-${attempt}`;
        await writer.query('INSERT INTO todos (id, title) VALUES ($1, $2)', [id, 'nobody listened']);
        const committedAt = (await writer.query('SELECT clock_timestamp() AS t')).rows[0].t as Date;
        const fresh = await waitFor(
          async () => {
            const { rows } = await writer.query(
              `SELECT pid, backend_start FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'rhtmx-sync-listen' AND NOT (pid = ANY ($1::int[]))`,
              [before],
            );
            return rows.length === 2 ? (rows as Array<{ backend_start: Date }>) : null;
          },
          10_000,
          'both listeners back',
        );
        if (fresh.every((row) => row.backend_start > committedAt)) written = id;
      } finally {
        await writer.end();
      }
    }
    assert.ok(written, 'the write landed while both nodes were not listening');
    await waitFor(
      () => onA.changes().some((change) => change.id === written) && onB.changes().some((change) => change.id === written),
      10_000,
      'catch-up after reconnecting',
    );
    // Nothing was delivered twice, and live delivery keeps working on the new connections.
    await postJson(`${b.url}/api/sync/todos`, { changes: [{ id: 'after-reconnect', action: 'create', data: { title: 'x' } }] });
    await waitFor(() => onA.changes().some((change) => change.id === 'after-reconnect'), 10_000, 'live again');
    const versions = onA.changes().map((change) => change.version);
    assert.equal(new Set(versions).size, versions.length);
    onA.close();
    onB.close();
  });
});
