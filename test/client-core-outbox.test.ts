/**
 * The browser client's sync core in Node, over the memory store: the storage
 * contract, the one outbox flusher (order, batching, refused versus
 * retryable answers), the replica's pull and live-batch cursor rules. The
 * soak (soak/device.ts) runs the same modules against real servers; these
 * pin the rules one by one.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { memoryDb, type Write } from '../src/client/local/memory.js';
import { type Cursor, cursorKey, liveApplier, type OutboxEntry, pullEntity, type StoredRow } from '../src/client/local/replica.js';
import { META, OUTBOX } from '../src/client/local/store.js';
import { type Http, SyncHttpError } from '../src/client/net/http.js';
import { type ConflictDetail, enqueue, type OutboxOptions, outboxFlusher } from '../src/client/queue/outbox.js';
import type { Change, PullResponse, PushChange, PushResult } from '../src/core/protocol.js';

const ENTITY = 'todos';

/** An outbox flusher over `db` whose pushes go to `send`. */
function flusherFor(db: ReturnType<typeof memoryDb>, send: OutboxOptions['send'], conflicts: ConflictDetail[] = []) {
  return outboxFlusher({
    db,
    send,
    integerKey: async () => false,
    changed: () => {},
    refetch: () => {},
    conflict: (detail) => conflicts.push(detail),
    online: () => true,
    error: () => {},
    log: () => {},
  });
}

const applied = (changes: PushChange[], version = 10): PushResult[] =>
  changes.map(({ mutation_id, id }, index) => ({ mutation_id, id: String(id), status: 'applied', version: version + index }));

const until = async (check: () => boolean, ms = 5_000) => {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

describe('memory store', () => {
  test('a body that throws leaves nothing behind; a commit is seen whole and replays', async () => {
    const commits: Write[][] = [];
    const db = memoryDb([], (writes) => commits.push(writes));
    await db.write([ENTITY], (tx) => tx.put(ENTITY, { id: 'a', n: 1 }));
    await assert.rejects(
      db.write([ENTITY], (tx) => {
        tx.put(ENTITY, { id: 'a', n: 2 });
        tx.put(ENTITY, { id: 'b', n: 2 });
        throw new Error('abort');
      }),
    );
    assert.deepEqual([...db.peek(ENTITY).values()], [{ id: 'a', n: 1 }]);
    assert.equal(commits.length, 1);
    const again = memoryDb(commits);
    assert.deepEqual(await again.read([ENTITY], (tx) => tx.all(ENTITY)), [{ id: 'a', n: 1 }]);
  });

  test('keys sort as IndexedDB sorts them, reads see the transaction’s own writes, values are copies', async () => {
    const db = memoryDb();
    const seen = await db.write([META], async (tx) => {
      for (const key of ['b', 10, 'a', 2]) tx.put(META, { key }, key);
      tx.delete(META, 'a');
      return tx.all<{ key: string | number }>(META);
    });
    assert.deepEqual(
      seen.map(({ key }) => key),
      [2, 10, 'b'],
    );
    const row = (await db.read([META], (tx) => tx.get<{ key: string }>(META, 'b'))) as { key: string };
    row.key = 'changed';
    assert.deepEqual(db.peek(META).get('b'), { key: 'b' });
  });

  test('closed, it refuses every transaction, as a page that went away', async () => {
    const db = memoryDb();
    db.close();
    await assert.rejects(
      db.write([META], (tx) => tx.put(META, 1, 'x')),
      (error: Error) => error.name === 'InvalidStateError',
    );
    assert.equal(db.peek(META).size, 0);
  });
});

describe('the outbox flusher', () => {
  test('sends in mutation order, never two changes of one row in a batch, and settles the answers', async () => {
    const db = memoryDb();
    for (const [id, title] of [
      ['a', 'one'],
      ['b', 'two'],
      ['a', 'three'],
    ]) {
      await enqueue(db, ENTITY, { id, action: id === 'a' && title === 'one' ? 'create' : 'update', data: { title } });
    }
    const batches: PushChange[][] = [];
    await flusherFor(db, async (_entity, changes) => {
      batches.push(changes);
      return applied(changes);
    })();
    assert.deepEqual(
      batches.map((batch) => batch.map((change) => [change.id, change.mutation_id])),
      [
        [
          ['a', 1],
          ['b', 2],
        ],
        [['a', 3]],
      ],
    );
    // The later change of `a` was based on the version the earlier one produced.
    assert.equal(batches[1]?.[0]?.base_version, 10);
    assert.equal(db.peek(OUTBOX).size, 0);
    assert.equal((db.peek(ENTITY).get('a') as StoredRow).title, 'three');
  });

  test('a refused batch is split; the bad mutation alone is rejected (its row restored), the rest applies', async () => {
    const db = memoryDb();
    await db.write([ENTITY], (tx) => tx.put(ENTITY, { id: 'bad', title: 'server', _v: 3 }));
    await enqueue(db, ENTITY, { id: 'good', action: 'create', data: { title: 'fine' } });
    await enqueue(db, ENTITY, { id: 'bad', action: 'update', data: { nope: 1 } });
    await enqueue(db, ENTITY, { id: 'later', action: 'create', data: { title: 'also fine' } });
    const conflicts: ConflictDetail[] = [];
    const sizes: number[] = [];
    await flusherFor(
      db,
      async (_entity, changes) => {
        sizes.push(changes.length);
        if (changes.some((change) => change.id === 'bad')) {
          throw new SyncHttpError('http://server/api/sync/todos', 400, { error: { code: 'unknown_column', message: 'no column nope' } });
        }
        return applied(changes);
      },
      conflicts,
    )();
    assert.deepEqual(sizes, [3, 1, 1, 1]);
    assert.equal(db.peek(OUTBOX).size, 0);
    assert.deepEqual(db.peek(ENTITY).get('bad'), { id: 'bad', title: 'server', _v: 3 });
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0]?.result.status, 'rejected');
    assert.equal(conflicts[0]?.result.reason, 'no column nope');
    assert.ok(db.peek(ENTITY).has('later'));
  });

  test('network failures and 5xx keep the outbox and retry until the server answers', async () => {
    const db = memoryDb();
    await enqueue(db, ENTITY, { id: 'a', action: 'create', data: { title: 'x' } });
    const failures = [new TypeError('fetch failed'), new SyncHttpError('http://server/api/sync/todos', 503, null)];
    let calls = 0;
    const flush = flusherFor(db, async (_entity, changes) => {
      calls++;
      const failure = failures.shift();
      if (failure) throw failure;
      return applied(changes);
    });
    await flush();
    assert.equal(db.peek(OUTBOX).size, 1, 'kept after a network failure');
    await until(() => db.peek(OUTBOX).size === 0);
    assert.equal(calls, 3);
  });

  test('an answer with fewer results than mutations settles nothing', async () => {
    const db = memoryDb();
    await enqueue(db, ENTITY, { id: 'a', action: 'create', data: {} });
    await enqueue(db, ENTITY, { id: 'b', action: 'create', data: {} });
    let calls = 0;
    await flusherFor(db, async (_entity, changes) => {
      calls++;
      return calls === 1 ? applied(changes).slice(0, 1) : applied(changes);
    })();
    assert.equal(db.peek(OUTBOX).size, 2);
    await until(() => db.peek(OUTBOX).size === 0);
  });
});

describe('the push gate', () => {
  test('a live batch arriving while a push waits for its answer is applied after the answer', async () => {
    const db = memoryDb();
    await db.write([META, ENTITY], (tx) => {
      tx.put(META, { v: 1 }, cursorKey(ENTITY));
      tx.put(ENTITY, { id: 'a', title: 'old', _v: 1 });
    });
    await enqueue(db, ENTITY, { id: 'a', action: 'update', data: { title: 'mine' } });
    let answer!: () => void;
    const flush = flusherFor(db, async (_entity, changes) => {
      await new Promise<void>((resolve) => {
        answer = resolve;
      });
      // The server row as this push left it; a newer delete of the row is already on its way.
      return changes.map(({ mutation_id }) => ({
        mutation_id,
        id: 'a',
        status: 'applied',
        duplicate: true,
        version: 2,
        row: { title: 'mine' },
      }));
    });
    const pushed = flush();
    await until(() => answer !== undefined);
    const live = liveApplier({ db, idle: () => flush.idle(), changed: () => {} }, [ENTITY], (error) => assert.fail(String(error)));
    live.apply({
      type: 'change',
      version: 3,
      changes: [{ entity: ENTITY, id: 'a', entity_id: 'a', action: 'delete', data: null, version: 3 }],
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal((db.peek(META).get(cursorKey(ENTITY)) as Cursor).v, 1, 'the batch waits');
    answer();
    await pushed;
    await until(() => (db.peek(META).get(cursorKey(ENTITY)) as Cursor).v === 3);
    assert.equal(db.peek(ENTITY).has('a'), false, 'the delete is not overwritten by the older answer');
  });
});

describe('replica cursors', () => {
  const change = (id: string, version: number, title: string): Change => ({
    entity: ENTITY,
    id,
    entity_id: id,
    action: 'update',
    data: { id, title },
    version,
  });

  test('a snapshot of several pages keeps its token beside the cursor, and a reset keeps pending local changes', async () => {
    const db = memoryDb();
    await enqueue(db, ENTITY, { id: 'mine', action: 'create', data: { title: 'local' } });
    const pages: Record<string, PullResponse> = {
      '/todos?since=0&stream=1': {
        entity: ENTITY,
        changes: [change('a', 5, 'A')],
        version: 9,
        has_more: true,
        reset: true,
        next: 't1',
        total: 2,
      },
      '/todos?since=0&snapshot=t1&stream=1': { entity: ENTITY, changes: [change('b', 7, 'B')], version: 9, has_more: false },
    } as unknown as Record<string, PullResponse>;
    const asked: string[] = [];
    const http = (async (path: string) => {
      asked.push(path);
      const page = pages[path];
      if (!page) throw new Error(`unexpected ${path}`);
      return page;
    }) as Http;
    const progress: Array<[number, number]> = [];
    const replica = { db, idle: async () => {}, changed: () => {} };
    const reached = await pullEntity(replica, http, ENTITY, ({ loaded, total }) => progress.push([loaded, total]));
    assert.equal(reached, 9);
    assert.deepEqual(asked, ['/todos?since=0&stream=1', '/todos?since=0&snapshot=t1&stream=1']);
    assert.deepEqual(db.peek(META).get(cursorKey(ENTITY)), { v: 9 } satisfies Cursor);
    assert.deepEqual([...db.peek(ENTITY).keys()].sort(), ['a', 'b', 'mine']);
    assert.deepEqual(progress, [
      [1, 2],
      [2, 2],
    ]);
  });

  test('live batches wait for the catch-up, skip what the cursor covers, and rebase pending changes', async () => {
    const db = memoryDb();
    const live = liveApplier({ db, idle: async () => {}, changed: () => {} }, [ENTITY], (error) => assert.fail(String(error)));
    const batch = (version: number, changes: Change[]) => ({ type: 'change' as const, version, changes });
    live.apply(batch(3, [change('a', 3, 'too early')]));
    await db.write([META], (tx) => tx.put(META, { v: 4 }, cursorKey(ENTITY)));
    await enqueue(db, ENTITY, { id: 'b', action: 'update', data: { done: true } });
    live.apply(batch(4, [change('a', 4, 'covered')]));
    live.apply(batch(6, [change('b', 6, 'server')]));
    await until(() => (db.peek(META).get(cursorKey(ENTITY)) as Cursor).v === 6);
    assert.equal(db.peek(ENTITY).has('a'), false);
    const b = db.peek(ENTITY).get('b') as StoredRow;
    assert.deepEqual([b.title, b.done, b._v], ['server', true, 6]);
    assert.equal((db.peek(OUTBOX).values().next().value as OutboxEntry).id, 'b');
  });
});
