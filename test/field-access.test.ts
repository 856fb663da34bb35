/**
 * Field-level sync honours the engine's access control exactly like the
 * entity routes: the authorize hook (401), origin checks (403), per-user
 * exactly-once keys, the entity's write rule and Standard Schema. Read
 * scopes are in field-scopes.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { FieldMergeStrategy, type SyncUser } from '../src/core/config.js';
import type { StandardSchemaV1 } from '../src/core/standard-schema.js';
import { startServer, type TestServer, WsClient, writer } from './helpers.js';

const sessions = new Map<string, SyncUser>([
  ['token-alice', { id: 'alice' }],
  ['token-bob', { id: 'bob' }],
]);

/** A hand-written Standard Schema: trims titles, refuses long ones. */
const noteSchema: StandardSchemaV1 = {
  '~standard': {
    version: 1,
    vendor: 'test',
    validate(value) {
      const row = value as Record<string, unknown>;
      const title = typeof row.title === 'string' ? row.title.trim() : row.title;
      if (typeof title === 'string' && title.length > 10) return { issues: [{ message: 'title too long', path: ['title'] }] };
      return { value: { ...row, title } };
    },
  },
};

async function call(url: string, token: string | null, init: RequestInit = {}) {
  const headers = {
    'content-type': 'application/json',
    ...(token ? { authorization: `Bearer ${token}` } : {}),
    ...(init.headers as object),
  };
  const response = await fetch(url, { ...init, headers });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const push = (server: TestServer, entity: string, token: string | null, body: unknown, headers: Record<string, string> = {}) =>
  call(`${server.url}/api/field-sync/${entity}`, token, { method: 'POST', body: JSON.stringify(body), headers });

describe('field sync: access control', () => {
  let server: TestServer;
  const row = (table: string, id: string) => server.db.prepare(`SELECT * FROM ${table} WHERE id = ?`).get(id) as any;
  before(async () => {
    server = await startServer({
      setupSql: `CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT);
                `,
      entities: [
        // Anyone signed in may read notes; only the owner may change one.
        { name: 'notes', write: (attempt, user) => (attempt.current ?? attempt.data).owner === user?.id, schema: noteSchema },
      ],
      fieldSync: FieldMergeStrategy.LastWriteWins,
      authorize: (request) => sessions.get(request.headers.get('authorization')?.replace(/^Bearer /, '') ?? '') ?? null,
    });
    server.db.exec(`INSERT INTO notes (id, owner, title) VALUES ('n1', 'alice', 'hello');`);
  });
  after(() => server.close());

  test('no session is 401 on every field route and on the field WebSocket; nothing is written', async () => {
    const change = { changes: [{ entity_id: 'n1', field: 'title', value: 'hacked' }] };
    assert.equal((await push(server, 'notes', null, change)).status, 401);
    assert.equal((await push(server, 'notes', 'forged', change)).status, 401);
    assert.equal((await call(`${server.url}/api/field-sync/notes?since=0`, null)).status, 401);
    assert.equal((await call(`${server.url}/api/field-sync/notes/n1/latest`, null)).status, 401);
    const wsUrl = server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws');
    const status = await new Promise<number>((resolve) => {
      const socket = new WebSocket(wsUrl);
      socket.on('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
      socket.on('open', () => resolve(101));
    });
    assert.equal(status, 401);
    const ws = await WsClient.connect(wsUrl, { headers: { authorization: 'Bearer token-alice' } });
    ws.close();
    assert.equal(row('notes', 'n1').title, 'hello');
  });

  test('a cross-site POST is refused', async () => {
    const response = await push(
      server,
      'notes',
      'token-alice',
      { changes: [{ entity_id: 'n1', field: 'title', value: 'csrf' }] },
      { origin: 'http://evil.example' },
    );
    assert.equal(response.status, 403);
    assert.equal(row('notes', 'n1').title, 'hello');
  });

  test("the write rule applies: another user's row is refused (403, whole push), the owner's applies", async () => {
    const bob = await push(server, 'notes', 'token-bob', {
      changes: [
        { entity_id: 'b-new', field: 'owner', value: 'bob' },
        { entity_id: 'n1', field: 'title', value: 'bob was here' },
      ],
    });
    assert.equal(bob.status, 403);
    assert.equal(bob.body.error.code, 'forbidden');
    assert.equal(row('notes', 'n1').title, 'hello');
    assert.equal(row('notes', 'b-new'), undefined, 'the whole push rolled back');
    const alice = await push(server, 'notes', 'token-alice', { changes: [{ entity_id: 'n1', field: 'title', value: 'mine' }] });
    assert.equal(alice.status, 200);
    assert.equal(alice.body.results[0].status, 'applied');
    assert.equal(row('notes', 'n1').title, 'mine');
  });

  test("the entity's schema sees the whole row; its output is written and its issues reported", async () => {
    const trimmed = await push(server, 'notes', 'token-alice', { changes: [{ entity_id: 'n1', field: 'title', value: '  trim me ' }] });
    assert.equal(trimmed.body.results[0].status, 'applied');
    assert.equal(trimmed.body.results[0].value, 'trim me');
    assert.equal(row('notes', 'n1').title, 'trim me');
    const long = await push(server, 'notes', 'token-alice', {
      changes: [{ entity_id: 'n1', field: 'title', value: 'far too long a title' }],
    });
    assert.equal(long.body.results[0].status, 'rejected');
    assert.deepEqual(long.body.results[0].issues, [{ message: 'title too long', path: 'title' }]);
    assert.equal(row('notes', 'n1').title, 'trim me');
  });

  test('exactly-once bookkeeping is per user: one client id used by two users never collides', async () => {
    const first = await push(server, 'notes', 'token-alice', {
      client_id: 'shared',
      changes: [{ mutation_id: 1, entity_id: 'a2', field: 'owner', value: 'alice' }],
    });
    const second = await push(server, 'notes', 'token-bob', {
      client_id: 'shared',
      changes: [{ mutation_id: 1, entity_id: 'b2', field: 'owner', value: 'bob' }],
    });
    assert.equal(first.body.results[0].duplicate, undefined);
    assert.equal(second.body.results[0].duplicate, undefined);
    assert.equal(row('notes', 'b2').owner, 'bob');
    // The written change carries the writer as a digest of the client id (never the id itself).
    assert.equal(
      server.db.prepare(`SELECT client_id FROM _rhtmx_field_versions WHERE entity_id = 'b2' AND field = 'owner'`).pluck().get(),
      writer('shared'),
    );
  });
});
