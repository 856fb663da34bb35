import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import type { SyncUser } from '../src/core/config.js';
import { SseClient, type TestServer, WsClient, waitFor } from './helpers.js';
import { STORES } from './stores.js';

/** Bearer tokens stand in for the app's sessions; revoking one ends the session. */
const sessions = new Map<string, SyncUser>([
  ['token-alice', { id: 'alice' }],
  ['token-bob', { id: 'bob' }],
  ['token-admin', { id: 'admin', admin: true }],
]);

const auth = (token: string) => ({ authorization: `Bearer ${token}` });

async function call(url: string, token: string | null, init: RequestInit = {}) {
  const json: Record<string, string> = init.body === undefined ? {} : { 'content-type': 'application/json' };
  const response = await fetch(url, { ...init, headers: { ...json, ...(token ? auth(token) : {}), ...(init.headers as object) } });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

for (const store of STORES) {
  describe(`authorization, scopes and origin checks [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({
        setupSql: 'CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)',
        entities: [
          {
            name: 'notes',
            // Users see their own notes; the admin sees everything.
            read: (row, user) => user?.admin === true || row.owner === user?.id,
          },
        ],
        authorize: (request) => {
          const token = request.headers.get('authorization')?.replace(/^Bearer /, '') ?? '';
          return sessions.get(token) ?? null;
        },
        limits: { maxConnectionsPerUser: 3 },
      });
      await store.externalWrite(
        server,
        "INSERT INTO notes (id, owner, body) VALUES ('a1', 'alice', 'alice secret'), ('b1', 'bob', 'bob secret')",
      );
    });
    after(() => server.close());

    test('no session is 401 on pulls, pushes, SSE and WebSocket; the client script stays public', async () => {
      assert.equal((await call(`${server.url}/api/sync/notes?since=0`, null)).status, 401);
      assert.equal((await call(`${server.url}/api/sync/notes?since=0`, 'forged')).status, 401);
      const push = await call(`${server.url}/api/sync/notes`, null, {
        method: 'POST',
        body: JSON.stringify({ changes: [{ id: 'x', action: 'create', data: { owner: 'alice', body: 'x' } }] }),
      });
      assert.equal(push.status, 401);
      assert.equal(push.body.error.code, 'unauthorized');
      assert.equal((await call(`${server.url}/api/sync/events`, null)).status, 401);
      const status = await new Promise<number>((resolve) => {
        const socket = new WebSocket(server.wsUrl);
        socket.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
        socket.once('open', () => resolve(101));
      });
      assert.equal(status, 401);
      assert.equal((await fetch(`${server.url}/api/sync/client.js`)).status, 200);
    });

    test('each user pulls only the rows in their scope', async () => {
      const alice = await call(`${server.url}/api/sync/notes?since=0`, 'token-alice');
      assert.deepEqual(
        alice.body.changes.map((change: any) => change.id),
        ['a1'],
      );
      const admin = await call(`${server.url}/api/sync/notes?since=0`, 'token-admin');
      assert.deepEqual(
        admin.body.changes.map((change: any) => change.id),
        ['a1', 'b1'],
      );
    });

    test("writing another user's row, or writing a row out of your scope, is 403 and writes nothing", async () => {
      const before = await server.engine.currentVersion();
      const attempts = [
        { id: 'b1', action: 'update', data: { body: 'hacked' } },
        { id: 'b1', action: 'delete' },
        { id: 'new', action: 'create', data: { owner: 'bob', body: 'planted' } },
        { id: 'a1', action: 'update', data: { owner: 'bob' } },
        // A create naming an existing id is an update of that row: no taking over bob's note.
        { id: 'b1', action: 'create', data: { owner: 'alice', body: 'mine now' } },
      ];
      for (const change of attempts) {
        const response = await call(`${server.url}/api/sync/notes`, 'token-alice', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ changes: [{ id: 'ok', action: 'create', data: { owner: 'alice', body: 'fine' } }, change] }),
        });
        assert.equal(response.status, 403, JSON.stringify(change));
        assert.equal(response.body.error.code, 'forbidden');
        assert.equal(response.body.error.details.id, change.id);
      }
      assert.equal(await server.engine.currentVersion(), before, 'the allowed change in each batch was rolled back too');
      const bob = await call(`${server.url}/api/sync/notes?since=0`, 'token-bob');
      assert.deepEqual(
        bob.body.changes.map((change: any) => [change.id, change.data.body]),
        [['b1', 'bob secret']],
      );
    });

    test('live changes are scoped, and a row leaving a scope arrives as a delete', async () => {
      const aliceWs = await WsClient.connect(server.wsUrl, { headers: auth('token-alice') });
      await aliceWs.request({ type: 'subscribe', entities: ['notes'] });
      const bobSse = new SseClient(`${server.url}/api/sync/events`, auth('token-bob'));
      await waitFor(() => bobSse.status === 200);
      const pushed = await aliceWs.request({
        type: 'push',
        entity: 'notes',
        client_id: 'alice-laptop',
        changes: [{ mutation_id: 1, id: 'a2', action: 'create', data: { owner: 'alice', body: 'new for alice' } }],
      });
      assert.equal(pushed.results[0].status, 'applied');
      // The admin hands a2 over to bob, outside alice's scope.
      await store.externalWrite(server, "UPDATE notes SET owner = 'bob' WHERE id = 'a2'");
      await waitFor(() => aliceWs.changes().length >= 2 && bobSse.changes().length >= 2, 5000, 'both live streams');
      assert.deepEqual(
        aliceWs.changes().map((change) => [change.id, change.action, change.data?.body ?? null]),
        [
          ['a2', 'create', 'new for alice'],
          ['a2', 'delete', null],
        ],
      );
      assert.deepEqual(
        bobSse.changes().map((change) => [change.id, change.action, change.data?.body ?? null]),
        [
          ['a2', 'delete', null],
          ['a2', 'update', 'new for alice'],
        ],
        'bob never saw the row while it was alice’s, then gets it',
      );
      aliceWs.close();
      bobSse.close();
    });

    test('client ids are bound to the user: the same id from another user is separate bookkeeping', async () => {
      const body = (owner: string) =>
        JSON.stringify({
          client_id: 'shared-id',
          changes: [{ mutation_id: 1, id: `cid-${owner}`, action: 'create', data: { owner, body: 'x' } }],
        });
      const alice = await call(`${server.url}/api/sync/notes`, 'token-alice', { method: 'POST', body: body('alice') });
      const bob = await call(`${server.url}/api/sync/notes`, 'token-bob', { method: 'POST', body: body('bob') });
      assert.equal(alice.body.results[0].duplicate, undefined);
      assert.equal(bob.body.results[0].duplicate, undefined, "bob's mutation 1 is not mistaken for alice's");
      assert.equal(bob.body.results[0].status, 'applied');
    });

    test('a WebSocket whose session ends is closed; messages after that are refused', async () => {
      sessions.set('token-temp', { id: 'alice' });
      const client = await WsClient.connect(server.wsUrl, { headers: auth('token-temp') });
      assert.equal((await client.request({ type: 'ping' })).type, 'pong');
      sessions.delete('token-temp');
      const closed = new Promise<number>((resolve) => client.socket.once('close', (code) => resolve(code)));
      client.socket.send(JSON.stringify({ type: 'sync', entity: 'notes', since: 0, ref: 'late' }));
      assert.equal(await closed, 4401);
      assert.ok(!client.messages.some((message) => message.type === 'sync'), 'no data after the session ended');
    });

    test('cross-site POSTs and WebSockets from foreign origins are refused', async () => {
      const foreign = await call(`${server.url}/api/sync/notes`, 'token-alice', {
        method: 'POST',
        headers: { origin: 'https://evil.example', 'content-type': 'application/json' },
        body: JSON.stringify({ changes: [{ id: 'evil', action: 'create', data: { owner: 'alice', body: 'csrf' } }] }),
      });
      assert.equal(foreign.status, 403);
      const crossSite = await call(`${server.url}/api/sync/notes`, 'token-alice', {
        method: 'POST',
        headers: { 'sec-fetch-site': 'cross-site' },
        body: JSON.stringify({ changes: [{ id: 'evil', action: 'create', data: { owner: 'alice', body: 'csrf' } }] }),
      });
      assert.equal(crossSite.status, 403);
      const sameOrigin = await call(`${server.url}/api/sync/notes`, 'token-alice', {
        method: 'POST',
        headers: { origin: server.url },
        body: JSON.stringify({ changes: [{ id: 'mine', action: 'create', data: { owner: 'alice', body: 'ok' } }] }),
      });
      assert.equal(sameOrigin.status, 200);
      const status = await new Promise<number>((resolve) => {
        const socket = new WebSocket(server.wsUrl, { headers: { ...auth('token-alice'), origin: 'https://evil.example' } });
        socket.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
        socket.once('open', () => resolve(101));
      });
      assert.equal(status, 403);
    });

    test('connections per user are limited', async () => {
      const sockets = await Promise.all([1, 2, 3].map(() => WsClient.connect(server.wsUrl, { headers: auth('token-bob') })));
      const fourth = await call(`${server.url}/api/sync/events`, 'token-bob');
      assert.equal(fourth.status, 429);
      assert.equal(fourth.body.error.code, 'rate_limited');
      // Other users are not affected.
      const alice = new SseClient(`${server.url}/api/sync/events`, auth('token-alice'));
      await waitFor(() => alice.status === 200);
      alice.close();
      for (const socket of sockets) socket.close();
      await waitFor(
        async () =>
          await fetch(`${server.url}/api/sync/events`, { headers: auth('token-bob'), signal: AbortSignal.timeout(2000) }).then((r) => {
            void r.body?.cancel();
            return r.status === 200;
          }),
      );
    });
  });
}
