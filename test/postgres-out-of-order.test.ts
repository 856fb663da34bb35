/**
 * PostgreSQL assigns log versions (a sequence) before commit, so commits land
 * out of version order. These tests hold transactions open on purpose and
 * prove no change is skipped: not by pulls, not by live delivery, not under
 * many concurrent writers and readers.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import pg from 'pg';
import type { Change } from '../src/core/protocol.js';
import { PostgresStore } from '../src/stores/postgres/index.js';
import { getJson, postJson, WsClient, waitFor } from './helpers.js';
import { connect, type PgTestServer, rawSql, startPgServer } from './pg-helpers.js';

const versionOf = async (client: pg.Client | string, id: string): Promise<number> => {
  const sql = `SELECT max(version)::int AS v FROM _rhtmx_sync_log WHERE entity_id = $1`;
  const result = typeof client === 'string' ? await rawSql(client, sql, [id]) : await client.query(sql, [id]);
  return result.rows[0].v as number;
};

describe('out-of-order commits [postgres]', () => {
  let server: PgTestServer;
  /** Connections holding transactions open; rolled back if a test fails midway, so later tests are not stalled. */
  const held: pg.Client[] = [];
  const hold = async () => {
    const client = await connect(server.dbUrl);
    held.push(client);
    return client;
  };
  before(async () => {
    server = await startPgServer();
    // Cursors start past 0 (since=0 asks for a snapshot, not the log).
    await rawSql(server.dbUrl, "INSERT INTO todos (id, title) VALUES ('seed', 'seed')");
  });
  afterEach(async () => {
    for (const client of held.splice(0)) await client.end().catch(() => {});
  });
  after(() => server.close());

  const pull = async (since: number) => (await getJson(`${server.url}/api/sync/todos?since=${since}`)).body;
  /** A cursor at the current end of the log, as a client that is up to date holds it. */
  const current = async () => {
    const snapshot = await pull(0);
    assert.ok(snapshot.version > 0);
    return snapshot.version as number;
  };

  test('a transaction holding a lower version is delivered after a later one commits first', async () => {
    const start = await current();
    const live = await WsClient.connect(server.wsUrl);
    await live.request({ type: 'subscribe', entities: ['todos'], since: start });

    const slow = await hold();
    await slow.query('BEGIN');
    await slow.query("INSERT INTO todos (id, title) VALUES ('slow', 'took the lower version')");
    const slowVersion = await versionOf(slow, 'slow');
    await rawSql(server.dbUrl, "INSERT INTO todos (id, title) VALUES ('fast', 'committed first')");
    const fastVersion = await versionOf(server.dbUrl, 'fast');
    assert.ok(fastVersion > slowVersion, 'the committed row has the higher version');

    // In between: 'fast' is committed and visible, but serving it would move the cursor past 'slow'.
    const between = await pull(start);
    assert.ok(between.version < slowVersion, `cursor ${between.version} must stay below the in-flight version ${slowVersion}`);
    assert.ok(!between.changes.some((change: Change) => change.id === 'fast'));
    assert.ok((await server.engine.currentVersion()) < slowVersion);
    // A push answered meanwhile reports a safe version too.
    const pushed = await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'pushed', action: 'create', data: { title: 'p' } }] });
    assert.equal(pushed.body.results[0].status, 'applied');
    assert.ok(pushed.body.version < slowVersion);

    await slow.query('COMMIT');
    const rest = await pull(between.version);
    assert.deepEqual(
      rest.changes.map((change: Change) => change.id),
      ['slow', 'fast', 'pushed'],
    );
    assert.ok(rest.version >= Math.max(slowVersion, fastVersion));
    await waitFor(() => live.changes().length >= 3, 5000, 'live delivery of all three');
    assert.deepEqual(
      live.changes().map((change) => change.id),
      ['slow', 'fast', 'pushed'],
    );
    live.close();
  });

  test('txid < xmin alone is not a safe rule: an old transaction can take a higher version than a young one', async () => {
    const start = await current();
    const old = await hold();
    const young = await hold();
    await old.query('BEGIN');
    await old.query('SELECT pg_current_xact_id()'); // the old transaction gets its (lower) xid first
    await young.query('BEGIN');
    await young.query("INSERT INTO todos (id, title) VALUES ('young', 'lower version, higher xid')");
    await old.query("INSERT INTO todos (id, title) VALUES ('old', 'higher version, lower xid')");
    const youngVersion = await versionOf(young, 'young');
    await old.query('COMMIT');
    // 'old' is committed, has the higher version and the lower xid: once 'young' is the oldest running
    // transaction, a "txid < xmin" reader would serve 'old' and move its cursor past 'young' for good.
    const oldRow = (
      await rawSql(server.dbUrl, "SELECT version::int AS version, txid::text AS txid FROM _rhtmx_sync_log WHERE entity_id = 'old'")
    ).rows[0] as { version: number; txid: string };
    const youngTxid = (await young.query('SELECT pg_current_xact_id()::text AS txid')).rows[0].txid as string;
    assert.ok(oldRow.version > youngVersion);
    assert.ok(BigInt(oldRow.txid) < BigInt(youngTxid));

    const between = await pull(start);
    assert.ok(between.version < youngVersion, 'our cursor does not pass the young transaction');
    assert.deepEqual(between.changes, []);
    await young.query('COMMIT');
    const rest = await pull(between.version);
    assert.deepEqual(
      rest.changes.map((change: Change) => change.id),
      ['young', 'old'],
    );
  });

  test('an open transaction that never wrote a synced table holds nothing back', async () => {
    const start = await current();
    const bystander = await hold();
    await bystander.query('BEGIN');
    await bystander.query('CREATE TEMP TABLE scratch (n int)');
    await bystander.query('INSERT INTO scratch VALUES (1)'); // it has an xid, below every later writer's
    await rawSql(server.dbUrl, "INSERT INTO todos (id, title) VALUES ('not-held', 'x')");
    const delivered = await waitFor(
      async () => {
        const body = await pull(start);
        return body.changes.some((change: Change) => change.id === 'not-held') ? body : null;
      },
      5000,
      'delivery while the bystander is still open',
    );
    assert.ok(delivered.version > start);
    await bystander.query('ROLLBACK');
  });

  test('randomized: concurrent writers (commits, rollbacks, savepoints, pushes) and readers miss and repeat nothing', async () => {
    const url = server.dbUrl;
    const from = await current();
    // Readers: other "nodes" reading the log directly, a live WebSocket, and HTTP pullers.
    const pools = Array.from({ length: 2 }, () => new pg.Pool({ connectionString: url, max: 3 }));
    const stores = pools.map((pool) => new PostgresStore(pool));
    for (const store of stores) await store.init([{ entity: 'todos', table: 'todos' }]);
    const live = await WsClient.connect(server.wsUrl);
    await live.request({ type: 'subscribe', entities: ['todos'], since: from });

    let writing = true;
    const storeSeen: number[][] = stores.map(() => []);
    const storeReaders = stores.map(async (store, index) => {
      let cursor = from;
      const seen = storeSeen[index] as number[];
      // Stop only after a read that *started* once writing was over came back with nothing more.
      for (;;) {
        const last = !writing;
        const page = await store.readLog(cursor, 1 + Math.floor(Math.random() * 40));
        for (const change of page.changes) {
          assert.ok(change.version > cursor, 'only versions after the cursor');
          seen.push(change.version);
        }
        assert.ok(page.version >= cursor, 'cursors never move back');
        cursor = page.version;
        if (last && !page.hasMore) break;
        await new Promise((resolve) => setImmediate(resolve));
      }
      return cursor;
    });
    const pullerRows: Array<Map<string, unknown>> = [new Map(), new Map()];
    const pullers = pullerRows.map(async (rows) => {
      let cursor = from;
      const versions = new Set<number>();
      for (;;) {
        const last = !writing;
        const body = await pull(cursor);
        for (const change of body.changes as Change[]) {
          assert.ok(!versions.has(change.version), `version ${change.version} pulled twice`);
          versions.add(change.version);
          if (change.action === 'delete') rows.delete(change.id);
          else rows.set(change.id, change.data);
        }
        cursor = body.version;
        if (last && !body.has_more) break;
      }
    });

    const expectedVersions = new Set<number>();
    const writer = async (writerId: number) => {
      const client = await connect(url);
      const mine: string[] = [];
      for (let n = 0; n < 25; n++) {
        await client.query('BEGIN');
        const made: string[] = [];
        for (let k = 0; k < 1 + Math.floor(Math.random() * 3); k++) {
          const roll = Math.random();
          if (roll < 0.15 && mine.length > 0) {
            const id = mine.splice(Math.floor(Math.random() * mine.length), 1)[0] as string;
            await client.query('DELETE FROM todos WHERE id = $1', [id]);
          } else if (roll < 0.35 && mine.length > 0) {
            await client.query('UPDATE todos SET done = NOT done WHERE id = $1', [mine[Math.floor(Math.random() * mine.length)]]);
          } else if (roll < 0.45) {
            // A rolled-back savepoint leaves a permanent gap inside a committed transaction.
            await client.query('SAVEPOINT s');
            await client.query('INSERT INTO todos (id, title) VALUES ($1, $2)', [`gap-${writerId}-${n}-${k}`, 'never']);
            await client.query('ROLLBACK TO SAVEPOINT s');
          } else {
            const id = `w${writerId}-${n}-${k}`;
            await client.query('INSERT INTO todos (id, title) VALUES ($1, $2)', [id, id]);
            made.push(id);
          }
          if (Math.random() < 0.5) await new Promise((resolve) => setTimeout(resolve, Math.random() * 15));
        }
        if (Math.random() < 0.15) {
          await client.query('ROLLBACK');
        } else {
          await client.query('COMMIT');
          mine.push(...made);
        }
      }
      await client.end();
    };
    const pusher = async (pusherId: number) => {
      for (let n = 0; n < 20; n++) {
        await postJson(`${server.url}/api/sync/todos`, {
          client_id: `pusher-${pusherId}`,
          changes: [{ mutation_id: n + 1, id: `p${pusherId}-${n}`, action: 'create', data: { title: 'pushed' } }],
        });
      }
    };
    try {
      await Promise.all([...Array.from({ length: 6 }, (_, index) => writer(index)), pusher(1), pusher(2)]);
    } finally {
      setTimeout(() => {
        writing = false;
      }, 15_000).unref();
    }
    const committed = await rawSql(url, 'SELECT version::int AS v FROM _rhtmx_sync_log WHERE version > $1 ORDER BY version', [from]);
    for (const row of committed.rows as Array<{ v: number }>) expectedVersions.add(row.v);
    const finalVersion = Math.max(...expectedVersions);
    // Let every reader reach the end of the log, then stop them (one more empty round each).
    await waitFor(async () => (await server.engine.currentVersion()) >= finalVersion, 10_000, 'engine at the final version');
    await waitFor(
      () => new Set(live.changes().map((change) => change.version)).size >= expectedVersions.size,
      10_000,
      'live delivery of every change',
    );
    writing = false;
    await Promise.all([...storeReaders, ...pullers]);

    const expected = [...expectedVersions].sort((a, b) => a - b);
    assert.ok(expected.length > 100, `a meaningful amount of traffic (${expected.length} changes)`);
    for (const seen of storeSeen) assert.deepEqual(seen, expected, 'each reader saw every committed change exactly once, in order');
    assert.deepEqual(
      live.changes().map((change) => change.version),
      expected,
      'the live WebSocket got every committed change exactly once, in order',
    );
    const table = await rawSql(url, 'SELECT id, title, done, updated_at FROM todos');
    const truth = new Map(table.rows.map((row: { id: string }) => [row.id, row]));
    for (const rows of pullerRows) {
      // Pullers started after earlier tests: compare the rows this test wrote.
      const ours = new Map([...rows].filter(([id]) => /^[wp]\d/.test(id)));
      const theirs = new Map([...truth].filter(([id]) => /^[wp]\d/.test(id)));
      assert.deepEqual(ours, theirs, 'pulling converges to the table');
    }
    assert.ok(![...truth.keys()].some((id) => id.startsWith('gap-')), 'rolled-back writes never appear');
    live.close();
    for (const store of stores) await store.close();
    for (const pool of pools) await pool.end();
  });
});
