/**
 * Field-level sync over real HTTP and WebSocket on loopback, on a real SQLite
 * file: per-field merges, each strategy, HLC clamping, exactly-once, bad
 * input, /latest, live field_change, and writes made outside field sync.
 */

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import { HybridClock, hlcWallMs } from '../src/core/hlc.js';
import type { Store } from '../src/core/store.js';
import { getJson, postJson, startServer, type TestServer, WsClient, waitFor, writer } from './helpers.js';

const fieldUrl = (server: TestServer, path = '') => `${server.url}/api/field-sync/todos${path}`;
const fieldWsUrl = (server: TestServer) => `${server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws')}`;

async function createTodo(server: TestServer, id: string, data: Record<string, unknown>) {
  const { status, body } = await postJson(`${server.url}/api/sync/todos`, { changes: [{ id, action: 'create', data }] });
  assert.equal(status, 200);
  assert.equal(body.results[0].status, 'applied');
}

async function pushFields(server: TestServer, clientId: string | null, changes: unknown[]) {
  const { status, body } = await postJson(fieldUrl(server), clientId === null ? { changes } : { client_id: clientId, changes });
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function latest(server: TestServer, id: string) {
  const { status, body } = await getJson(fieldUrl(server, `/${id}/latest`));
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

const tableRow = (server: TestServer, id: string) => server.db.prepare('SELECT * FROM todos WHERE id = ?').get(id) as any;
const count = (server: TestServer, table: string) => server.db.prepare(`SELECT COUNT(*) FROM ${table}`).pluck().get() as number;
const counts = (server: TestServer) => ({
  log: count(server, '_rhtmx_sync_log'),
  fields: count(server, '_rhtmx_field_versions'),
  rows: count(server, 'todos'),
});

describe('field sync: last-write-wins', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.LastWriteWins });
  });
  after(() => server.close());

  test('two clients editing different fields of one row concurrently both keep their edits', async () => {
    await createTodo(server, 'r1', { title: 'draft', done: false });
    const before = await latest(server, 'r1');
    const [alice, bob] = await Promise.all([
      pushFields(server, 'alice', [
        { entity_id: 'r1', field: 'title', value: 'Alice title', timestamp: Date.now(), base_version: before.fields.title.version },
      ]),
      pushFields(server, 'bob', [
        { entity_id: 'r1', field: 'done', value: true, timestamp: Date.now(), base_version: before.fields.done.version },
      ]),
    ]);
    assert.equal(alice.results[0].status, 'applied');
    assert.equal(bob.results[0].status, 'applied');
    assert.equal(alice.applied, 1);
    assert.equal(bob.conflicts, 0);

    // Both edits are in the real table...
    const row = tableRow(server, 'r1');
    assert.equal(row.title, 'Alice title');
    assert.equal(row.done, 1);
    // ...the entity-level pull shows the merged row...
    const pull = await getJson(`${server.url}/api/sync/todos?since=0`);
    assert.deepEqual(pull.body.changes.find((change: any) => change.id === 'r1').data, {
      id: 'r1',
      title: 'Alice title',
      done: true,
      updated_at: null,
    });
    // ...and each field carries its own version and writer.
    const now = await latest(server, 'r1');
    assert.equal(now.fields.title.client_id, writer('alice'));
    assert.equal(now.fields.done.client_id, writer('bob'));
    assert.equal(now.fields.title.value, 'Alice title');
    assert.equal(now.fields.done.value, true);
    assert.notEqual(now.fields.title.version, now.fields.done.version);
    assert.ok(now.fields.title.version > before.fields.title.version);
    assert.equal(now.fields.updated_at.version, before.fields.updated_at.version, 'an untouched field keeps its version');
    assert.equal(now.version, Math.max(now.fields.title.version, now.fields.done.version));
  });

  test('same field: the newer HLC wins; the older write is a conflict carrying both values', async () => {
    await createTodo(server, 'r2', { title: 'start', done: false });
    const newer = await pushFields(server, 'alice', [{ entity_id: 'r2', field: 'title', value: 'newer', timestamp: Date.now() }]);
    assert.equal(newer.results[0].status, 'applied');
    // Bob edited ten seconds ago, offline; his push arrives now.
    const older = await pushFields(server, 'bob', [{ entity_id: 'r2', field: 'title', value: 'older', timestamp: Date.now() - 10_000 }]);
    assert.equal(older.results[0].status, 'conflict');
    assert.equal(older.results[0].server_value, 'newer');
    assert.equal(older.results[0].client_value, 'older');
    assert.equal(older.conflicts, 1);
    assert.equal(tableRow(server, 'r2').title, 'newer');
    // With base_version the client says it saw the current value: its edit is not concurrent and applies.
    const seen = await pushFields(server, 'bob', [
      { entity_id: 'r2', field: 'title', value: 'after seeing it', timestamp: Date.now() - 10_000, base_version: newer.results[0].version },
    ]);
    assert.equal(seen.results[0].status, 'applied');
    assert.equal(tableRow(server, 'r2').title, 'after seeing it');
  });

  test('a client clock running an hour ahead does not beat a later honest write', async () => {
    await createTodo(server, 'r3', { title: 'start', done: false });
    const skewed = await pushFields(server, 'skewed', [
      { entity_id: 'r3', field: 'title', value: 'from the future', timestamp: Date.now() + 3_600_000 },
    ]);
    assert.equal(skewed.results[0].status, 'applied');
    // The server ordered it by its arrival, not by the claimed time.
    assert.ok(hlcWallMs(skewed.results[0].hlc) <= Date.now());
    // An honest write made after it (a later millisecond) must win.
    const stampedAt = hlcWallMs(skewed.results[0].hlc);
    await waitFor(() => Date.now() > stampedAt, 5000, 'the next millisecond');
    const honest = await pushFields(server, 'honest', [{ entity_id: 'r3', field: 'title', value: 'honest', timestamp: Date.now() }]);
    assert.equal(honest.results[0].status, 'applied', JSON.stringify(honest.results[0]));
    assert.equal(tableRow(server, 'r3').title, 'honest');
    assert.equal((await latest(server, 'r3')).fields.title.client_id, writer('honest'));
  });

  test('a retried push is applied once, even after someone else changed the field', async () => {
    await createTodo(server, 'r4', { title: 'start', done: false });
    const push = { client_id: 'carol', changes: [{ mutation_id: 1, entity_id: 'r4', field: 'title', value: 'once' }] };
    const first = await postJson(fieldUrl(server), push);
    assert.equal(first.body.results[0].status, 'applied');
    const logCount = () => server.db.prepare(`SELECT COUNT(*) FROM _rhtmx_sync_log WHERE entity_id = 'r4'`).pluck().get();
    const afterFirst = logCount();
    const retry = await postJson(fieldUrl(server), push);
    assert.equal(retry.body.results[0].status, 'applied');
    assert.equal(retry.body.results[0].duplicate, true);
    assert.equal(retry.body.results[0].version, first.body.results[0].version);
    assert.equal(logCount(), afterFirst, 'nothing was written again');
    // Someone else edits; a late retry of Carol's old mutation must not revert it.
    await pushFields(server, 'dave', [{ entity_id: 'r4', field: 'title', value: 'dave', timestamp: Date.now() }]);
    const late = await postJson(fieldUrl(server), push);
    assert.equal(late.body.results[0].duplicate, true);
    assert.equal(late.body.results[0].value, 'dave');
    assert.equal(tableRow(server, 'r4').title, 'dave');
    // Several fields as one mutation (equal ids), then a longer retry applies only the new tail.
    const grouped = await postJson(fieldUrl(server), {
      client_id: 'carol',
      changes: [
        { mutation_id: 1, entity_id: 'r4', field: 'title', value: 'once' },
        { mutation_id: 2, entity_id: 'r4', field: 'title', value: 'two', timestamp: Date.now() },
        { mutation_id: 2, entity_id: 'r4', field: 'done', value: 1, timestamp: Date.now() },
      ],
    });
    assert.deepEqual(
      grouped.body.results.map((result: any) => [result.status, result.duplicate ?? false]),
      [
        ['applied', true],
        ['applied', false],
        ['applied', false],
      ],
    );
    assert.deepEqual([tableRow(server, 'r4').title, tableRow(server, 'r4').done], ['two', 1]);
  });

  test('bad input is refused with a 4xx and nothing is written', async () => {
    await createTodo(server, 'r5', { title: 'untouched', done: false });
    const before = counts(server);
    const refused: Array<[unknown, number, string]> = [
      [{ changes: [{ entity_id: 'r5', field: 'nope', value: 1 }] }, 400, 'unknown_column'],
      [{ changes: [{ entity_id: 'r5', field: 'id', value: 'r6' }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: 'title' }] }, 400, 'bad_request'],
      [{ changes: [{ field: 'title', value: 'x' }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: '*', value: 'x' }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: 'title', value: 'x', action: 'create' }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: 'title', value: 'x', mutation_id: 1 }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: 'title', value: 'x', timestamp: 'yesterday-ish' }] }, 400, 'bad_request'],
      [{ changes: [{ entity_id: 'r5', field: 'title', value: 'x', base_version: -1 }] }, 400, 'bad_request'],
      [{ client_id: 'bad id!', changes: [] }, 400, 'bad_request'],
      [{ changes: 'nope' }, 400, 'bad_request'],
      // One bad change refuses the whole push: the valid one before it is not written either.
      [
        {
          changes: [
            { entity_id: 'r5', field: 'title', value: 'written?' },
            { entity_id: 'r5', field: 'nope', value: 1 },
          ],
        },
        400,
        'unknown_column',
      ],
      ['{"changes": [', 400, 'bad_json'],
    ];
    for (const [body, status, code] of refused) {
      const response = await postJson(fieldUrl(server), body);
      assert.equal(response.status, status, JSON.stringify(body));
      assert.equal(response.body.error.code, code, JSON.stringify(body));
      assert.equal(typeof response.body.error.message, 'string');
    }
    const unknownEntity = await postJson(`${server.url}/api/field-sync/nope`, { changes: [] });
    assert.equal(unknownEntity.status, 404);
    assert.equal(unknownEntity.body.error.code, 'unknown_entity');
    assert.equal((await getJson(`${server.url}/api/field-sync/nope?since=0`)).status, 404);
    assert.equal((await getJson(fieldUrl(server, '?since=-1'))).body.error.code, 'bad_cursor');
    assert.equal((await getJson(fieldUrl(server, '/r5/oldest'))).status, 404);
    assert.equal((await getJson(fieldUrl(server), { method: 'DELETE' })).status, 405);
    assert.deepEqual(counts(server), before);
    assert.equal(tableRow(server, 'r5').title, 'untouched');

    // A value its column cannot hold refuses the whole push, like any malformed change (docs/protocol.md, "Values").
    const untyped = await postJson(fieldUrl(server), {
      changes: [
        { entity_id: 'r5', field: 'title', value: 'written?' },
        { entity_id: 'r5', field: 'done', value: 'maybe' },
      ],
    });
    assert.deepEqual([untyped.status, untyped.body.error.code], [400, 'bad_request']);
    assert.match(untyped.body.error.message, /^changes\[1\]: done must be a boolean/);
    assert.equal(tableRow(server, 'r5').title, 'untouched');
    // What the database refuses (NULL in a NOT NULL column) rejects that change only; the rest of the push applies.
    const mixed = await pushFields(server, null, [
      { entity_id: 'r5', field: 'title', value: null },
      { entity_id: 'r5', field: 'title', value: 42 },
    ]);
    assert.deepEqual(
      mixed.results.map((result: any) => result.status),
      ['rejected', 'applied'],
    );
    assert.equal(mixed.results[0].reason, 'NOT NULL constraint failed: todos.title');
    assert.equal(mixed.results[1].value, '42', 'coerced to the text column');
    assert.equal(mixed.rejected, 1);
    assert.deepEqual([tableRow(server, 'r5').title, tableRow(server, 'r5').done], ['42', 0]);
  });

  test('/latest returns every field with its own version, HLC and writer', async () => {
    await createTodo(server, 'l1', { title: 'a', done: false });
    const created = await latest(server, 'l1');
    assert.equal(created.entity, 'todos');
    assert.equal(created.entity_id, 'l1');
    assert.equal(created.deleted, false);
    assert.deepEqual(Object.keys(created.fields).sort(), ['done', 'title', 'updated_at'], 'every column but the primary key');
    const push = await pushFields(server, 'erin', [{ entity_id: 'l1', field: 'updated_at', value: '2024-01-01T12:00:00Z' }]);
    const now = await latest(server, 'l1');
    assert.deepEqual(now.fields.updated_at, {
      value: '2024-01-01T12:00:00Z',
      version: push.results[0].version,
      hlc: push.results[0].hlc,
      client_id: writer('erin'),
    });
    assert.equal(now.fields.title.version, created.fields.title.version);
    assert.ok(now.fields.updated_at.hlc > now.fields.title.hlc);
    assert.equal((await getJson(fieldUrl(server, '/never/latest'))).status, 404);
  });

  test('field pull: snapshot for since=0, then only the fields changed after the cursor', async () => {
    await createTodo(server, 'p1', { title: 'p', done: false });
    const snapshot = await getJson(fieldUrl(server, '?since=0'));
    assert.equal(snapshot.body.reset, true);
    const p1 = snapshot.body.changes.filter((change: any) => change.entity_id === 'p1');
    assert.deepEqual(p1.map((change: any) => [change.field, change.value, change.action]).sort(), [
      ['done', false, 'update'],
      ['title', 'p', 'update'],
      ['updated_at', null, 'update'],
    ]);
    const cursor = snapshot.body.version;
    await pushFields(server, 'frank', [{ entity_id: 'p1', field: 'title', value: 'p2' }]);
    const page = await getJson(fieldUrl(server, `?since=${cursor}`));
    assert.equal(page.body.has_more, false);
    assert.deepEqual(
      page.body.changes.map((change: any) => [
        change.entity,
        change.entity_id,
        change.field,
        change.value,
        change.client_id,
        change.action,
      ]),
      [['todos', 'p1', 'title', 'p2', writer('frank'), 'update']],
    );
    assert.ok(page.body.version > cursor);
    // Paged snapshot: small limits walk every row once.
    const seen = new Set<string>();
    let next: string | undefined;
    let pages = 0;
    do {
      const response = await getJson(fieldUrl(server, `?since=0&limit=3${next ? `&snapshot=${next}` : ''}`));
      for (const change of response.body.changes) seen.add(`${change.entity_id}.${change.field}`);
      next = response.body.next;
      pages++;
    } while (next);
    assert.ok(pages > 1);
    assert.equal(seen.size, counts(server).rows * 3);
  });

  test('raw SQL and entity-level writes bump only the fields they change', async () => {
    await createTodo(server, 'x1', { title: 'x', done: false });
    const before = await latest(server, 'x1');
    // Another connection, as another process would.
    const { default: Database } = await import('better-sqlite3');
    const other = new Database(server.dbPath);
    try {
      other.pragma('busy_timeout = 5000');
      other.prepare(`UPDATE todos SET done = 1 WHERE id = 'x1'`).run();
    } finally {
      other.close();
    }
    const afterSql = await latest(server, 'x1');
    assert.ok(afterSql.fields.done.version > before.fields.done.version);
    assert.equal(afterSql.fields.done.client_id, null);
    assert.equal(afterSql.fields.title.version, before.fields.title.version);
    // An entity-level push with the whole row changes only what differs.
    await postJson(`${server.url}/api/sync/todos`, {
      client_id: 'entity-client',
      changes: [{ mutation_id: 1, id: 'x1', action: 'update', data: { title: 'renamed', done: true } }],
    });
    const afterPush = await latest(server, 'x1');
    assert.ok(afterPush.fields.title.version > afterSql.fields.title.version);
    assert.equal(afterPush.fields.title.client_id, writer('entity-client'));
    assert.equal(afterPush.fields.done.version, afterSql.fields.done.version);
    // A field push based on the old title is concurrent with the entity-level rename.
    const stale = await pushFields(server, 'grace', [
      { entity_id: 'x1', field: 'title', value: 'stale', timestamp: Date.now() - 60_000, base_version: before.fields.title.version },
    ]);
    assert.equal(stale.results[0].status, 'conflict');
    assert.equal(stale.results[0].server_value, 'renamed');
  });

  test('row deletes are ordered like other writes: an older update does not resurrect the row', async () => {
    await createTodo(server, 'd1', { title: 'doomed', done: false });
    const start = await latest(server, 'd1');
    // A delete stamped before the latest field write loses to it.
    await pushFields(server, 'henry', [{ entity_id: 'd1', field: 'title', value: 'edited', timestamp: Date.now() }]);
    const early = await pushFields(server, 'ivan', [{ entity_id: 'd1', field: '*', action: 'delete', timestamp: Date.now() - 60_000 }]);
    assert.equal(early.results[0].status, 'conflict');
    assert.ok(tableRow(server, 'd1'));
    // A current delete applies.
    const deleted = await pushFields(server, 'ivan', [{ entity_id: 'd1', field: '*', action: 'delete', timestamp: Date.now() }]);
    assert.equal(deleted.results[0].status, 'applied');
    assert.equal(tableRow(server, 'd1'), undefined);
    // An update made before the delete arrives late: a conflict, not a resurrection.
    const late = await pushFields(server, 'judy', [
      { entity_id: 'd1', field: 'title', value: 'zombie', timestamp: Date.now() - 30_000, base_version: start.fields.title.version },
    ]);
    assert.equal(late.results[0].status, 'conflict');
    assert.match(late.results[0].reason, /deleted/);
    assert.equal(tableRow(server, 'd1'), undefined);
    const gone = await latest(server, 'd1');
    assert.equal(gone.deleted, true);
    assert.equal(gone.version, deleted.results[0].version);
    // Field pull reports the delete as one row-level change.
    const page = await getJson(fieldUrl(server, `?since=${start.version}`));
    const d1 = page.body.changes.filter((change: any) => change.entity_id === 'd1');
    assert.deepEqual(
      d1.map((change: any) => [change.field, change.action, change.value]),
      [['*', 'delete', null]],
    );
    // Deleting again is idempotent.
    const again = await pushFields(server, 'ivan', [{ entity_id: 'd1', field: '*', action: 'delete' }]);
    assert.equal(again.results[0].status, 'applied');
    // An update ordered after the delete re-creates the row (last write wins).
    const revived = await pushFields(server, 'kim', [{ entity_id: 'd1', field: 'title', value: 'reborn', timestamp: Date.now() }]);
    assert.equal(revived.results[0].status, 'applied');
    assert.equal(tableRow(server, 'd1').title, 'reborn');
  });

  test('a new row can be created field by field in one push', async () => {
    const push = await pushFields(server, 'lea', [
      { entity_id: 'n1', field: 'title', value: 'new row' },
      { entity_id: 'n1', field: 'done', value: 'true' },
    ]);
    assert.deepEqual(
      push.results.map((result: any) => result.status),
      ['applied', 'applied'],
    );
    assert.deepEqual([tableRow(server, 'n1').title, tableRow(server, 'n1').done], ['new row', 1]);
    // Without its NOT NULL column the row cannot be created: rejected with the constraint, nothing written.
    const partial = await pushFields(server, 'lea', [{ entity_id: 'n2', field: 'done', value: true }]);
    assert.equal(partial.results[0].status, 'rejected');
    assert.match(partial.results[0].reason, /NOT NULL/);
    assert.equal(tableRow(server, 'n2'), undefined);
  });

  test('a WebSocket subscriber receives field_change for a push made over HTTP', async () => {
    await createTodo(server, 'w1', { title: 'w', done: false });
    const ws = await WsClient.connect(fieldWsUrl(server));
    try {
      const hello = ws.messages.find((message) => message.type === 'hello');
      assert.equal(hello.strategy, 'last-write-wins');
      const subscribed = await ws.request({ type: 'subscribe', entities: ['todos'] });
      assert.equal(subscribed.type, 'subscribed');
      assert.deepEqual(subscribed.entities, ['todos']);
      const push = await pushFields(server, 'mia', [{ entity_id: 'w1', field: 'title', value: 'live' }]);
      // The create's own field changes may still be in flight when the subscription starts (the feed
      // fans out what it has read, a poll behind the database), so look for the pushed change itself.
      const isPushed = (c: any) => c.entity_id === 'w1' && c.field === 'title' && c.value === 'live';
      const message = await waitFor(
        () => ws.messages.find((m) => m.type === 'field_change' && m.changes.some(isPushed)),
        5000,
        'field_change',
      );
      const delivered = ws.messages.filter((m) => m.type === 'field_change').flatMap((m) => m.changes.filter(isPushed));
      assert.equal(delivered.length, 1, 'delivered once');
      assert.deepEqual(delivered[0], {
        entity: 'todos',
        entity_id: 'w1',
        field: 'title',
        value: 'live',
        version: push.results[0].version,
        hlc: push.results[0].hlc,
        client_id: writer('mia'),
        action: 'update',
      });
      assert.equal(message.version >= push.results[0].version, true);

      // push_fields over the socket: one reply with the seed's counts.
      const ack = await ws.request({
        type: 'push_fields',
        entity: 'todos',
        entity_id: 'w1',
        client_id: 'mia',
        // New to field pushes, starting at 7.
        fresh: true,
        mutation_id: 7,
        fields: [
          { field: 'title', value: 'over ws', action: 'update', timestamp: new Date().toISOString() },
          { field: 'done', value: true, action: 'update', timestamp: new Date().toISOString() },
        ],
      });
      assert.equal(ack.type, 'push_ack');
      assert.equal(ack.entity, 'todos');
      assert.equal(ack.entity_id, 'w1');
      assert.equal(ack.applied, 2);
      assert.equal(ack.conflicts, 0);
      assert.equal(ack.results.length, 2);
      // The same mutation again: applied once.
      const retry = await ws.request({
        type: 'push_fields',
        entity: 'todos',
        entity_id: 'w1',
        client_id: 'mia',
        mutation_id: 7,
        fields: [{ field: 'title', value: 'over ws' }],
      });
      assert.equal(retry.results[0].duplicate, true);
      await waitFor(
        () => ws.messages.some((m) => m.type === 'field_change' && m.changes.some((c: any) => c.field === 'done' && c.value === true)),
        5000,
        'field_change for the socket push',
      );

      // Requests always get one reply; errors carry code and ref.
      const pong = await ws.request({ type: 'ping', t: 5 });
      assert.deepEqual([pong.type, pong.t], ['pong', 5]);
      const bad = await ws.request({ type: 'push_fields', entity: 'todos', entity_id: 'w1', fields: [{ field: 'id', value: 'x' }] });
      assert.equal(bad.type, 'error');
      assert.equal(bad.code, 'bad_request');
      const unknown = await ws.request({ type: 'subscribe', entities: ['nope'] });
      assert.equal(unknown.code, 'unknown_entity');
      const latestReply = await ws.request({ type: 'latest', entity: 'todos', entity_id: 'w1' });
      assert.equal(latestReply.fields.title.value, 'over ws');
      ws.sendRaw('{not json');
      await waitFor(() => ws.messages.find((m) => m.type === 'error' && m.code === 'bad_json'), 5000, 'bad_json error');
    } finally {
      ws.close();
    }
  });

  test('a subscriber joining with an old cursor catches up, then goes live', async () => {
    await createTodo(server, 'c1', { title: 'c', done: false });
    const cursor = (await latest(server, 'c1')).version;
    await pushFields(server, 'noah', [{ entity_id: 'c1', field: 'title', value: 'missed' }]);
    const ws = await WsClient.connect(fieldWsUrl(server));
    try {
      await ws.request({ type: 'subscribe', entities: ['todos'], since: cursor });
      await waitFor(
        () => ws.messages.some((m) => m.type === 'field_change' && m.changes.some((c: any) => c.value === 'missed')),
        5000,
        'catch-up',
      );
      await pushFields(server, 'noah', [{ entity_id: 'c1', field: 'title', value: 'live again' }]);
      await waitFor(
        () => ws.messages.some((m) => m.type === 'field_change' && m.changes.some((c: any) => c.value === 'live again')),
        5000,
        'live after catch-up',
      );
      const values = ws.messages.filter((m) => m.type === 'field_change').flatMap((m) => m.changes.map((c: any) => c.value));
      assert.equal(values.filter((value: unknown) => value === 'missed').length, 1, 'nothing repeated');
    } finally {
      ws.close();
    }
  });
});

describe('field sync: catch-up is paced, not counted as a slow consumer', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.LastWriteWins, limits: { maxBufferedBytes: 32 * 1024 } });
  });
  after(() => server.close());

  test('a subscriber resuming from cursor 0 receives a backlog far larger than the buffer limit', async () => {
    const insert = server.db.prepare('INSERT INTO todos (id, title) VALUES (?, ?)');
    server.db.transaction(() => {
      for (let i = 0; i < 3000; i++) insert.run(`b${i}`, 'x'.repeat(200));
    })();
    const ws = await WsClient.connect(fieldWsUrl(server));
    let closeCode = 0;
    ws.socket.on('close', (code) => {
      closeCode = code;
    });
    try {
      await ws.request({ type: 'subscribe', entities: ['todos'], since: 0 });
      const received = () => ws.messages.filter((m) => m.type === 'field_change').reduce((sum, m) => sum + m.changes.length, 0);
      await waitFor(() => received() >= 3000 * 3 || closeCode !== 0, 20_000, 'the backlog');
      assert.equal(closeCode, 0, 'not dropped as a slow consumer');
      assert.equal(received(), 3000 * 3);
    } finally {
      ws.close();
    }
  });
});

describe('field sync: keep-both', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.KeepBoth });
  });
  after(() => server.close());

  test('concurrent edits of the same field: no overwrite, the conflict carries both values', async () => {
    await createTodo(server, 'k1', { title: 'base', done: false });
    const base = (await latest(server, 'k1')).fields.title.version;
    const first = await pushFields(server, 'alice', [
      { entity_id: 'k1', field: 'title', value: 'alice', timestamp: Date.now(), base_version: base },
    ]);
    assert.equal(first.results[0].status, 'applied');
    // Bob's edit is newer by the clock but was made on the same base: keep-both never overwrites it.
    const second = await pushFields(server, 'bob', [
      { entity_id: 'k1', field: 'title', value: 'bob', timestamp: Date.now() + 500, base_version: base },
    ]);
    assert.equal(second.results[0].status, 'conflict');
    assert.equal(second.results[0].server_value, 'alice');
    assert.equal(second.results[0].client_value, 'bob');
    assert.equal(second.results[0].version, first.results[0].version);
    assert.match(second.results[0].reason, /keep-both/);
    assert.equal(tableRow(server, 'k1').title, 'alice');
    // Having seen Alice's value (the app chose), Bob's resolution applies.
    const resolved = await pushFields(server, 'bob', [
      { entity_id: 'k1', field: 'title', value: 'alice + bob', base_version: second.results[0].version },
    ]);
    assert.equal(resolved.results[0].status, 'applied');
    assert.equal(tableRow(server, 'k1').title, 'alice + bob');
  });

  test('different fields of one row merge without a conflict', async () => {
    await createTodo(server, 'k2', { title: 'base', done: false });
    const state = await latest(server, 'k2');
    const [a, b] = await Promise.all([
      pushFields(server, 'alice', [{ entity_id: 'k2', field: 'title', value: 'A', base_version: state.fields.title.version }]),
      pushFields(server, 'bob', [{ entity_id: 'k2', field: 'done', value: true, base_version: state.fields.done.version }]),
    ]);
    assert.deepEqual([a.results[0].status, b.results[0].status], ['applied', 'applied']);
    assert.deepEqual([tableRow(server, 'k2').title, tableRow(server, 'k2').done], ['A', 1]);
  });

  test('the same value pushed concurrently is not a conflict', async () => {
    await createTodo(server, 'k3', { title: 'base', done: false });
    const base = (await latest(server, 'k3')).fields.title.version;
    await pushFields(server, 'alice', [{ entity_id: 'k3', field: 'title', value: 'same', base_version: base }]);
    const bob = await pushFields(server, 'bob', [{ entity_id: 'k3', field: 'title', value: 'same', base_version: base }]);
    assert.equal(bob.results[0].status, 'applied');
  });
});

describe('field sync: server-wins', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.ServerWins });
  });
  after(() => server.close());

  test('a change based on an older field version is refused; a current one applies', async () => {
    await createTodo(server, 's1', { title: 'base', done: false });
    const base = (await latest(server, 's1')).fields.title.version;
    const first = await pushFields(server, 'alice', [{ entity_id: 's1', field: 'title', value: 'alice', base_version: base }]);
    assert.equal(first.results[0].status, 'applied');
    const stale = await pushFields(server, 'bob', [
      { entity_id: 's1', field: 'title', value: 'bob', timestamp: Date.now() + 500, base_version: base },
    ]);
    assert.equal(stale.results[0].status, 'conflict');
    assert.equal(stale.results[0].server_value, 'alice');
    assert.match(stale.results[0].reason, /server-wins/);
    const current = await pushFields(server, 'bob', [
      { entity_id: 's1', field: 'title', value: 'bob', base_version: first.results[0].version },
    ]);
    assert.equal(current.results[0].status, 'applied');
    assert.equal(tableRow(server, 's1').title, 'bob');
    // Another field of the same row is not affected by the title's version.
    const other = await pushFields(server, 'carol', [{ entity_id: 's1', field: 'done', value: true, base_version: base }]);
    assert.equal(other.results[0].status, 'applied');
  });
});

describe('field sync: client-wins', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.ClientWins });
  });
  after(() => server.close());

  test('a stale, older change is applied anyway', async () => {
    await createTodo(server, 'c1', { title: 'base', done: false });
    const base = (await latest(server, 'c1')).fields.title.version;
    await pushFields(server, 'alice', [{ entity_id: 'c1', field: 'title', value: 'alice', timestamp: Date.now() }]);
    const late = await pushFields(server, 'bob', [
      { entity_id: 'c1', field: 'title', value: 'bob', timestamp: Date.now() - 60_000, base_version: base },
    ]);
    assert.equal(late.results[0].status, 'applied');
    assert.equal(tableRow(server, 'c1').title, 'bob');
    // The winner is ordered after what it replaced, so per-field stamps only move forward.
    const now = await latest(server, 'c1');
    assert.equal(now.fields.title.client_id, writer('bob'));
    assert.ok(now.fields.title.hlc > 0);
  });
});

describe('field sync on a custom store without field bookkeeping', () => {
  test('field routes and the field socket answer a clear 501; entity-level sync is unaffected', async () => {
    const plain = await startServer();
    const inner = await plain.engine.store();
    // A custom Store: every method of the built-in one but the optional field capability.
    const store: Store = Object.create(inner, { openFieldStore: { value: undefined } });
    const warnings: unknown[] = [];
    const logger = { debug() {}, info() {}, warn: (message: unknown) => warnings.push(message), error() {} };
    const server = await startServer({ db: store, fieldSync: FieldMergeStrategy.LastWriteWins, logger });
    try {
      const { status, body } = await getJson(fieldUrl(server));
      assert.equal(status, 501);
      assert.equal(body.error.code, 'not_implemented');
      assert.match(body.error.message, /needs a store with field bookkeeping/);
      // The field socket is refused the same way as the routes.
      const refusal = await WsClient.connect(fieldWsUrl(server)).then(
        (client) => {
          client.close();
          return 'opened';
        },
        (error: Error) => error.message,
      );
      assert.match(refusal, /501/);
      const pull = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.equal(pull.status, 200);
      assert.equal(warnings.length, 1);
    } finally {
      await server.close();
      await plain.close();
    }
  });
});
