import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { getJson, type TestServer, WsClient } from './helpers.js';
import { STORES } from './stores.js';

/**
 * Property-based fuzzing of every endpoint and message type: whatever arrives,
 * the answer is a 2xx or a 4xx with a JSON error (never a 5xx, a crash or a
 * hang), no SQL text leaks, and the database stays consistent with the log.
 */
const hostileStrings = fc.constantFrom(
  '__proto__',
  'constructor',
  'prototype',
  'a"; DROP TABLE todos;--',
  "' OR 1=1 --",
  'sqlite_master',
  '../x',
  '..%2F..%2Fetc%2Fpasswd',
  '\u0000',
  '-1',
  'NaN',
  '1e309',
  'Infinity',
  '9'.repeat(400),
  '💥',
);
const anyKey = fc.oneof(hostileStrings, fc.constantFrom('id', 'title', 'done', 'updated_at'), fc.string({ maxLength: 12 }));
const anyScalar = fc.oneof(fc.string({ maxLength: 40 }), hostileStrings, fc.integer(), fc.double(), fc.boolean(), fc.constant(null));
const anyValue = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, anyScalar, tie('array'), tie('object')),
  array: fc.array(tie('value'), { maxLength: 4 }),
  object: fc.dictionary(anyKey, tie('value'), { maxKeys: 4 }),
})).value;
const anyChange = fc.record(
  {
    mutation_id: fc.oneof(fc.nat(), anyScalar),
    id: fc.oneof(fc.string({ maxLength: 10 }), fc.integer(), anyScalar, anyValue),
    action: fc.oneof(fc.constantFrom('create', 'update', 'delete'), anyScalar),
    data: fc.oneof(fc.dictionary(anyKey, anyScalar, { maxKeys: 5 }), anyValue),
    base_version: fc.oneof(fc.nat(), anyScalar),
    timestamp: fc.oneof(fc.nat(), anyScalar),
  },
  { requiredKeys: [] },
);
const anyPushBody = fc.oneof(
  fc.record({ client_id: fc.oneof(fc.uuid(), anyScalar), changes: fc.array(anyChange, { maxLength: 5 }) }, { requiredKeys: ['changes'] }),
  anyValue,
);

/** SQL statements, SQLite error codes and stack frames must never reach a client (echoed input may). */
const SQL_LEAK = /SELECT .* FROM|INSERT INTO|UPDATE \S+ SET|near "|syntax error|SQLITE_[A-Z]{3,}|\bat \w+ \(/;

for (const store of STORES) {
  describe(`fuzzing every endpoint [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({ fieldSync: 'last-write-wins' });
    });
    after(() => server.close());

    const expectSane = async (response: Response) => {
      const text = await response.text();
      assert.ok(response.status < 500, `status ${response.status}: ${text.slice(0, 200)}`);
      const body = JSON.parse(text);
      if (response.status >= 400) {
        assert.equal(typeof body.error?.code, 'string');
        assert.equal(typeof body.error?.message, 'string');
      }
      assert.doesNotMatch(text.slice(0, 100_000), SQL_LEAK);
      return body;
    };

    test('POST /api/sync/:entity with arbitrary bodies', async () => {
      await fc.assert(
        fc.asyncProperty(fc.oneof(anyPushBody, fc.string({ maxLength: 60 })), async (body) => {
          const response = await fetch(`${server.url}/api/sync/todos`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: typeof body === 'string' ? body : JSON.stringify(body),
          });
          const answer = await expectSane(response);
          if (response.status === 200) {
            for (const result of answer.results) assert.ok(['applied', 'conflict', 'rejected'].includes(result.status));
          }
        }),
        { numRuns: 300 },
      );
    });

    test('GET /api/sync/:entity with arbitrary entities and query strings', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(fc.constant('todos'), hostileStrings, fc.string({ maxLength: 10 })),
          fc.dictionary(fc.constantFrom('since', 'limit', 'snapshot', 'entities'), fc.oneof(anyScalar.map(String), fc.nat().map(String))),
          async (entity, query) => {
            const url = new URL(`${server.url}/api/sync/${encodeURIComponent(entity)}`);
            for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
            await expectSane(await fetch(url));
          },
        ),
        { numRuns: 200 },
      );
    });

    test('GET /api/sync/events with arbitrary resume points and filters', async () => {
      await fc.assert(
        fc.asyncProperty(anyScalar.map(String), fc.oneof(fc.constant('todos'), hostileStrings), async (lastId, entities) => {
          const response = await fetch(`${server.url}/api/sync/events?entities=${encodeURIComponent(entities)}`, {
            // Header values are bytes: keep what a client could actually send.
            headers: { 'last-event-id': lastId.replace(/[^\x20-\x7e]/g, '') },
          });
          if (response.status === 200) {
            assert.match(response.headers.get('content-type') ?? '', /event-stream/);
            await response.body?.cancel();
          } else {
            await expectSane(response);
          }
        }),
        { numRuns: 100 },
      );
    });

    test('WebSocket messages of every type with arbitrary fields', async () => {
      const client = await WsClient.connect(server.wsUrl);
      const messageTypes = fc.constantFrom('subscribe', 'unsubscribe', 'sync', 'push', 'ping', 'push_fields', 'nonsense');
      await fc.assert(
        fc.asyncProperty(
          messageTypes,
          fc.dictionary(
            fc.constantFrom('entity', 'entities', 'since', 'limit', 'changes', 'entity_id', 'action', 'data', 'client_id', 'snapshot'),
            anyValue,
          ),
          async (type, fields) => {
            const reply = await client.request({ ...fields, type });
            assert.ok(['pong', 'subscribed', 'unsubscribed', 'sync', 'push_ack', 'error'].includes(reply.type), JSON.stringify(reply));
            assert.doesNotMatch(JSON.stringify(reply).slice(0, 100_000), SQL_LEAK);
          },
        ),
        { numRuns: 300 },
      );
      assert.equal(client.socket.readyState, client.socket.OPEN, 'the socket survived every message');
      client.close();
    });

    const anyFieldChange = fc.record(
      {
        mutation_id: fc.oneof(fc.nat(), anyScalar),
        entity_id: fc.oneof(fc.string({ maxLength: 10 }), fc.integer(), anyScalar),
        field: fc.oneof(anyKey, fc.constant('*')),
        value: anyValue,
        action: fc.oneof(fc.constantFrom('update', 'delete'), anyScalar),
        timestamp: fc.oneof(fc.nat(), anyScalar),
        base_version: fc.oneof(fc.nat(), anyScalar),
      },
      { requiredKeys: [] },
    );

    test('field-sync HTTP endpoints with arbitrary bodies, entities and ids', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(fc.constant('todos'), hostileStrings),
          fc.oneof(fc.record({ client_id: fc.oneof(fc.uuid(), anyScalar), changes: fc.array(anyFieldChange, { maxLength: 4 }) }), anyValue),
          fc.oneof(fc.string({ maxLength: 10 }), hostileStrings),
          fc.oneof(anyScalar.map(String), fc.nat().map(String)),
          async (entity, body, id, since) => {
            const base = `${server.url}/api/field-sync/${encodeURIComponent(entity)}`;
            await expectSane(
              await fetch(base, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
            );
            await expectSane(await fetch(`${base}?since=${encodeURIComponent(since)}`));
            await expectSane(await fetch(`${base}/${encodeURIComponent(id)}/latest`));
          },
        ),
        { numRuns: 150 },
      );
    });

    test('field-sync WebSocket messages of every type with arbitrary fields', async () => {
      const client = await WsClient.connect(server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws'));
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom('subscribe', 'unsubscribe', 'sync', 'latest', 'push_fields', 'ping', 'push', 'nonsense'),
          fc.dictionary(fc.constantFrom('entity', 'entities', 'entity_id', 'fields', 'since', 'client_id', 'mutation_id'), anyValue),
          async (type, fields) => {
            const reply = await client.request({ ...fields, type });
            assert.ok(
              ['pong', 'subscribed', 'unsubscribed', 'sync', 'latest', 'push_ack', 'error'].includes(reply.type),
              JSON.stringify(reply),
            );
            assert.doesNotMatch(JSON.stringify(reply).slice(0, 100_000), SQL_LEAK);
          },
        ),
        { numRuns: 200 },
      );
      assert.equal(client.socket.readyState, client.socket.OPEN, 'the socket survived every message');
      client.close();
    });

    test('afterwards the database is consistent: every row has a log entry and pulls agree', async () => {
      const snapshot = (await getJson(`${server.url}/api/sync/todos?since=0&limit=10000`)).body;
      for (const change of snapshot.changes) {
        assert.ok(change.version > 0, `row ${change.id} has no log entry`);
        assert.equal(typeof change.data.title, 'string', 'NOT NULL held');
      }
      assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false);
    });
  });
}
