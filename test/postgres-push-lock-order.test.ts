/**
 * Pushes lock the rows they write in key order, up front: two pushes that
 * write overlapping rows in different orders (or a push and the app's own
 * UPDATE) must wait for each other, never deadlock. PostgreSQL breaks a
 * deadlock only after deadlock_timeout (1 s by default) by killing one side;
 * the store retried, so nothing was lost, but under a busy table (the
 * convergence soak, docs/reliability.md) pushes took seconds and the demo's
 * own UPDATEs failed with "deadlock detected".
 *
 * The interleaving is forced: a third connection holds row `g`; push 1
 * writes a, g, b in that order, push 2 writes b, a. Locking in batch order,
 * push 1 would hold a and wait for g, push 2 would hold b and wait for a, and
 * releasing g would close the cycle.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import type { PushResponse } from '../src/core/protocol.js';
import { SyncEngine } from '../src/engine.js';
import { waitFor } from './helpers.js';
import { connect, createTestDatabase, rawSql, type TestDatabase } from './pg-helpers.js';

describe('push lock order [postgres]', () => {
  let database: TestDatabase;
  let engine: SyncEngine;
  /** SQLSTATEs of every failed statement the engine ran. */
  const failures: string[] = [];

  before(async () => {
    database = await createTestDatabase();
    await database.pool.query("INSERT INTO todos (id, title) VALUES ('a', 'a'), ('b', 'b'), ('g', 'g')");
    // See every statement error of the engine's connections, retried ones included.
    const pool = database.pool;
    const connectPool = pool.connect.bind(pool) as (...args: unknown[]) => Promise<pg.PoolClient>;
    const wrapped = new WeakSet<object>();
    (pool as { connect: (...args: unknown[]) => unknown }).connect = async (...args: unknown[]) => {
      // pool.query() connects with a callback: leave that path alone.
      if (args.length > 0) return connectPool(...args);
      const client = await connectPool();
      if (!wrapped.has(client)) {
        wrapped.add(client);
        const query = client.query.bind(client) as (...args: unknown[]) => unknown;
        (client as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
          const result = query(...args);
          // Callback and submittable forms return nothing to watch.
          if (!(result instanceof Promise)) return result;
          return result.catch((error: { code?: string }) => {
            failures.push(error.code ?? 'unknown');
            throw error;
          });
        };
      }
      return client;
    };
    engine = new SyncEngine({ db: pool, entities: ['todos'] });
    await engine.ready;
  });

  after(async () => {
    await engine?.close();
    await database?.dispose();
  });

  /** Backends of this database waiting for a lock. */
  const lockWaiters = async () =>
    Number(
      (
        await rawSql(
          database.url,
          `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        )
      ).rows[0].n,
    );

  test('two pushes writing the same rows in opposite orders do not deadlock', async () => {
    const holder = await connect(database.url);
    try {
      await holder.query('BEGIN');
      await holder.query("SELECT 1 FROM todos WHERE id = 'g' FOR UPDATE");
      const update = (id: string, title: string, mutation: number) => ({ mutation_id: mutation, id, action: 'update', data: { title } });
      const first = engine.push('todos', {
        client_id: 'one',
        changes: [update('a', 'one', 1), update('g', 'one', 2), update('b', 'one', 3)],
      });
      await waitFor(async () => (await lockWaiters()) >= 1, 10_000, 'push 1 waiting');
      const second = engine.push('todos', { client_id: 'two', changes: [update('b', 'two', 1), update('a', 'two', 2)] });
      await waitFor(async () => (await lockWaiters()) >= 2, 10_000, 'push 2 waiting');
      await holder.query('COMMIT');
      const answers: PushResponse[] = await Promise.all([first, second]);
      for (const answer of answers)
        assert.deepEqual(
          answer.results.map((result) => result.status),
          answer.results.map(() => 'applied'),
        );
    } finally {
      await holder.end();
    }
    assert.deepEqual(
      failures.filter((code) => code === '40P01'),
      [],
      'no push was killed as a deadlock victim',
    );
    const rows = (await rawSql(database.url, 'SELECT id, title FROM todos ORDER BY id')).rows;
    assert.deepEqual(rows, [
      { id: 'a', title: 'two' },
      { id: 'b', title: 'two' },
      { id: 'g', title: 'one' },
    ]);
  });
});
