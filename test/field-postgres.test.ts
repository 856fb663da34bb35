/**
 * Field-level sync on PostgreSQL (src/stores/postgres/fields.ts), over real HTTP
 * and WebSocket: per-field merges, strategies, HLC clamping, exactly-once,
 * writes from psql bumping only what they change, deletes, /latest, live
 * field_change, and cursors that stay correct when commits land out of order.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import { hlcWallMs } from '../src/core/hlc.js';
import { getJson, postJson, WsClient, waitFor, writer } from './helpers.js';
import { connect, type PgTestServer, rawSql, startPgServer } from './pg-helpers.js';

const fieldUrl = (server: PgTestServer, path = '') => `${server.url}/api/field-sync/todos${path}`;

async function createTodo(server: PgTestServer, id: string, data: Record<string, unknown>) {
  const { body } = await postJson(`${server.url}/api/sync/todos`, { changes: [{ id, action: 'create', data }] });
  assert.equal(body.results[0].status, 'applied');
}

async function pushFields(server: PgTestServer, clientId: string | null, changes: unknown[]) {
  const { status, body } = await postJson(fieldUrl(server), clientId === null ? { changes } : { client_id: clientId, changes });
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function latest(server: PgTestServer, id: string) {
  const { status, body } = await getJson(fieldUrl(server, `/${id}/latest`));
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

const tableRow = async (server: PgTestServer, id: string) => (await server.pool.query('SELECT * FROM todos WHERE id = $1', [id])).rows[0];

describe('field sync on PostgreSQL: last-write-wins', () => {
  let server: PgTestServer;
  before(async () => {
    server = await startPgServer({ fieldSync: FieldMergeStrategy.LastWriteWins, pollMs: 50 });
  });
  after(() => server.close());

  test('two clients editing different fields of one row concurrently both keep their edits', async () => {
    await createTodo(server, 'r1', { title: 'draft', done: false });
    const start = await latest(server, 'r1');
    const [alice, bob] = await Promise.all([
      pushFields(server, 'alice', [{ entity_id: 'r1', field: 'title', value: 'Alice', base_version: start.fields.title.version }]),
      pushFields(server, 'bob', [{ entity_id: 'r1', field: 'done', value: true, base_version: start.fields.done.version }]),
    ]);
    assert.deepEqual([alice.results[0].status, bob.results[0].status], ['applied', 'applied']);
    const row = await tableRow(server, 'r1');
    assert.deepEqual([row.title, row.done], ['Alice', true]);
    const pull = await getJson(`${server.url}/api/sync/todos?since=0`);
    const merged = pull.body.changes.find((change: any) => change.id === 'r1').data;
    assert.deepEqual([merged.title, merged.done], ['Alice', true]);
    const now = await latest(server, 'r1');
    assert.deepEqual([now.fields.title.client_id, now.fields.done.client_id], [writer('alice'), writer('bob')]);
    assert.equal(now.fields.updated_at.version, start.fields.updated_at.version);
  });

  test('same field: the older write is a conflict carrying both values; a skewed clock does not win', async () => {
    await createTodo(server, 'r2', { title: 'start', done: false });
    await pushFields(server, 'alice', [{ entity_id: 'r2', field: 'title', value: 'newer', timestamp: Date.now() }]);
    const older = await pushFields(server, 'bob', [{ entity_id: 'r2', field: 'title', value: 'older', timestamp: Date.now() - 10_000 }]);
    assert.equal(older.results[0].status, 'conflict');
    assert.deepEqual([older.results[0].server_value, older.results[0].client_value], ['newer', 'older']);
    const skewed = await pushFields(server, 'skewed', [
      { entity_id: 'r2', field: 'title', value: 'future', timestamp: Date.now() + 3_600_000 },
    ]);
    assert.equal(skewed.results[0].status, 'applied');
    const stampedAt = hlcWallMs(skewed.results[0].hlc);
    await waitFor(() => Date.now() > stampedAt, 5000, 'the next millisecond');
    const honest = await pushFields(server, 'honest', [{ entity_id: 'r2', field: 'title', value: 'honest', timestamp: Date.now() }]);
    assert.equal(honest.results[0].status, 'applied');
    assert.equal((await tableRow(server, 'r2')).title, 'honest');
  });

  test('a retried push is applied once; bad input is refused and nothing is written', async () => {
    await createTodo(server, 'r3', { title: 'start', done: false });
    const body = { client_id: 'carol', changes: [{ mutation_id: 1, entity_id: 'r3', field: 'title', value: 'once' }] };
    const first = await postJson(fieldUrl(server), body);
    await pushFields(server, 'dave', [{ entity_id: 'r3', field: 'title', value: 'dave' }]);
    const retry = await postJson(fieldUrl(server), body);
    assert.equal(retry.body.results[0].duplicate, true);
    assert.equal(retry.body.results[0].value, 'dave');
    assert.ok(first.body.results[0].version < retry.body.version);
    assert.equal((await tableRow(server, 'r3')).title, 'dave');
    const logCount = async () => Number((await server.pool.query('SELECT count(*) FROM _rhtmx_sync_log')).rows[0].count);
    const before = await logCount();
    for (const bad of [
      { changes: [{ entity_id: 'r3', field: 'nope', value: 1 }] },
      { changes: [{ entity_id: 'r3', field: 'id', value: 'x' }] },
      '{"changes":',
    ]) {
      const response = await postJson(fieldUrl(server), bad);
      assert.equal(response.status, 400);
    }
    assert.equal((await postJson(`${server.url}/api/field-sync/nope`, { changes: [] })).status, 404);
    // A value its column cannot hold refuses the whole push (docs/protocol.md, "Values"); form words are booleans.
    const untyped = await postJson(fieldUrl(server), {
      changes: [
        { entity_id: 'r3', field: 'done', value: 'true' },
        { entity_id: 'r3', field: 'done', value: 'maybe' },
      ],
    });
    assert.deepEqual([untyped.status, untyped.body.error.code], [400, 'bad_request']);
    assert.match(untyped.body.error.message, /^changes\[1\]: done must be a boolean/);
    const typed = await pushFields(server, null, [{ entity_id: 'r3', field: 'done', value: 'true' }]);
    assert.deepEqual(
      typed.results.map((result: any) => result.status),
      ['applied'],
    );
    assert.equal(typed.results[0].value, true);
    assert.equal(await logCount(), before + 1);
  });

  test('writes from psql bump only the fields they change; deletes are ordered like writes', async () => {
    await createTodo(server, 'x1', { title: 'x', done: false });
    const start = await latest(server, 'x1');
    await rawSql(server.dbUrl, `UPDATE todos SET done = true WHERE id = 'x1'`);
    const afterSql = await latest(server, 'x1');
    assert.ok(afterSql.fields.done.version > start.fields.done.version);
    assert.equal(afterSql.fields.done.client_id, null);
    assert.equal(afterSql.fields.title.version, start.fields.title.version);
    const deleted = await pushFields(server, 'ivan', [{ entity_id: 'x1', field: '*', action: 'delete', timestamp: Date.now() }]);
    assert.equal(deleted.results[0].status, 'applied');
    const late = await pushFields(server, 'judy', [
      { entity_id: 'x1', field: 'title', value: 'zombie', timestamp: Date.now() - 30_000, base_version: start.fields.title.version },
    ]);
    assert.equal(late.results[0].status, 'conflict');
    assert.equal(await tableRow(server, 'x1'), undefined);
    const gone = await latest(server, 'x1');
    assert.deepEqual([gone.deleted, gone.version], [true, deleted.results[0].version]);
    await waitFor(async () => (await getJson(fieldUrl(server, `?since=${start.version}`))).body.version >= gone.version, 5000, 'horizon');
    const page = await getJson(fieldUrl(server, `?since=${start.version}`));
    const x1 = page.body.changes.filter((change: any) => change.entity_id === 'x1');
    assert.deepEqual(
      x1.map((change: any) => [change.field, change.action]),
      [['*', 'delete']],
    );
    // A new row created field by field in one push: one INSERT.
    const created = await pushFields(server, 'lea', [
      { entity_id: 'n1', field: 'title', value: 'new' },
      { entity_id: 'n1', field: 'done', value: 1 },
    ]);
    assert.deepEqual(
      created.results.map((result: any) => result.status),
      ['applied', 'applied'],
    );
    assert.equal(created.results[0].version, created.results[1].version);
    const partial = await pushFields(server, 'lea', [{ entity_id: 'n2', field: 'done', value: true }]);
    assert.equal(partial.results[0].status, 'rejected');
    assert.match(partial.results[0].reason, /NOT NULL/);
  });

  test('snapshot, then incremental pulls; a WebSocket subscriber receives field_change for an HTTP push', async () => {
    await createTodo(server, 'w1', { title: 'w', done: false });
    const snapshot = await getJson(fieldUrl(server, '?since=0&limit=2'));
    assert.equal(snapshot.body.reset, true);
    assert.ok(snapshot.body.next, 'paged');
    const ws = await WsClient.connect(server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws'));
    try {
      await ws.request({ type: 'subscribe', entities: ['todos'] });
      const push = await pushFields(server, 'mia', [{ entity_id: 'w1', field: 'title', value: 'live' }]);
      const message = await waitFor(
        () => ws.messages.find((m) => m.type === 'field_change' && m.changes.some((c: any) => c.entity_id === 'w1')),
        10_000,
        'field_change',
      );
      assert.deepEqual(message.change, {
        entity: 'todos',
        entity_id: 'w1',
        field: 'title',
        value: 'live',
        version: push.results[0].version,
        hlc: push.results[0].hlc,
        client_id: writer('mia'),
        action: 'update',
      });
      const ack = await ws.request({
        type: 'push_fields',
        entity: 'todos',
        entity_id: 'w1',
        client_id: 'mia',
        // New to field pushes, starting at 3.
        fresh: true,
        mutation_id: 3,
        fields: [{ field: 'done', value: true, timestamp: new Date().toISOString() }],
      });
      assert.deepEqual([ack.type, ack.applied, ack.conflicts], ['push_ack', 1, 0]);
    } finally {
      ws.close();
    }
  });

  test('a field cursor never passes a write that commits later with a lower version', async () => {
    await createTodo(server, 'o1', { title: 'o', done: false });
    await createTodo(server, 'o2', { title: 'o', done: false });
    const cursor = (await getJson(fieldUrl(server, '?since=0'))).body.version;
    // A slow transaction takes the lower version and holds it...
    const slow = await connect(server.dbUrl);
    try {
      await slow.query('BEGIN');
      await slow.query(`UPDATE todos SET title = 'slow' WHERE id = 'o1'`);
      // ...a fast one takes a higher version and commits first.
      await pushFields(server, 'fast', [{ entity_id: 'o2', field: 'title', value: 'fast' }]);
      const early = await getJson(fieldUrl(server, `?since=${cursor}`));
      assert.ok(
        early.body.changes.every((change: any) => change.value !== 'fast'),
        'the fast write is held back while a lower version may still commit',
      );
      await slow.query('COMMIT');
    } finally {
      await slow.end();
    }
    let since = cursor;
    const seen: string[] = [];
    await waitFor(
      async () => {
        const page = await getJson(fieldUrl(server, `?since=${since}`));
        for (const change of page.body.changes) seen.push(change.value);
        since = page.body.version;
        return seen.includes('slow') && seen.includes('fast');
      },
      10_000,
      'both writes',
    );
  });
});

describe('field sync on PostgreSQL: keep-both', () => {
  let server: PgTestServer;
  before(async () => {
    server = await startPgServer({ fieldSync: FieldMergeStrategy.KeepBoth, pollMs: 50 });
  });
  after(() => server.close());

  test('concurrent edits of the same field: no overwrite, the conflict carries both values', async () => {
    await createTodo(server, 'k1', { title: 'base', done: false });
    const base = (await latest(server, 'k1')).fields.title.version;
    const [a, b] = await Promise.all([
      pushFields(server, 'alice', [{ entity_id: 'k1', field: 'title', value: 'alice', base_version: base }]),
      pushFields(server, 'bob', [{ entity_id: 'k1', field: 'title', value: 'bob', base_version: base }]),
    ]);
    const results = [a.results[0], b.results[0]];
    const winner = results.find((result) => result.status === 'applied');
    const loser = results.find((result) => result.status === 'conflict');
    assert.ok(winner && loser, JSON.stringify(results));
    assert.equal(loser.server_value, winner.value);
    assert.equal(loser.client_value, winner.value === 'alice' ? 'bob' : 'alice');
    assert.equal((await tableRow(server, 'k1')).title, winner.value);
  });
});
