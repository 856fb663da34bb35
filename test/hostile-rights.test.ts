/**
 * Rights are current on every connection. An open WebSocket or SSE stream
 * never keeps the rights it opened with: requests on it run under the rights
 * of the moment, `engine.refreshRights(userId)` (and the periodic
 * `rightsRecheckMs` re-check) re-scopes its live view or closes it when the
 * session ended (4401) or was refused (4403), and live batches are shared
 * between connections only when their rights are equal, never by user id.
 *
 * The app's sessions are a mutable Map (session id → user) read by the
 * authorize hook from a `sid` cookie or an `x-session` header, as a real app
 * would read its session store. Rows are written with raw SQL, outside the
 * engine, so their live delivery is the engine's change capture at work.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { EntityConfig, SyncEngineOptions, SyncUser } from '../src/core/config.js';
import { FieldMergeStrategy } from '../src/core/config.js';
import { CloseCode } from '../src/core/protocol.js';
import { SseClient, startServer, type TestServer, WsClient, waitFor } from './helpers.js';

interface AppUser extends SyncUser {
  id: string;
  role: 'user' | 'admin';
  team: string;
}

/** The app's session store: a session id names a user, or `false` for a user who is banned (403). */
type Sessions = Map<string, AppUser | false>;

const TABLE_SQL = `CREATE TABLE todos (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  owner TEXT NOT NULL,
  team TEXT NOT NULL DEFAULT ''
)`;

/** Users see their own rows; admins see every row. */
const byRole: EntityConfig = {
  name: 'todos',
  read: (row, user) => user?.role === 'admin' || row.owner === user?.id,
};

/** The session id of a request: the `x-session` header, else the `sid` cookie. */
function sessionId(request: Request): string | null {
  const header = request.headers.get('x-session');
  if (header) return header;
  return /(?:^|;\s*)sid=([^;]+)/.exec(request.headers.get('cookie') ?? '')?.[1] ?? null;
}

interface Harness {
  server: TestServer;
  sessions: Sessions;
  /** Every user the authorize hook answered with, in order (to see a re-check happen). */
  answers: AppUser[];
  close(): Promise<void>;
}

/**
 * `shareObjects`: the hook hands back the app's own user object (a session
 * cache), which the app then mutates in place, instead of a fresh copy.
 */
async function start(options: Partial<SyncEngineOptions> & { setupSql?: string; shareObjects?: boolean } = {}): Promise<Harness> {
  const { shareObjects = false, ...engineOptions } = options;
  const sessions: Sessions = new Map();
  const answers: AppUser[] = [];
  const server = await startServer({
    setupSql: TABLE_SQL,
    entities: [byRole],
    ...engineOptions,
    authorize: (request) => {
      const sid = sessionId(request);
      const entry = sid === null ? undefined : sessions.get(sid);
      if (entry === false) return false;
      if (!entry) return null;
      // A fresh object per call, as an app reading its session store would build one (unless shared).
      const user = shareObjects ? entry : { ...entry };
      answers.push(user);
      return user;
    },
  });
  return { server, sessions, answers, close: () => server.close() };
}

const cookie = (sid: string) => ({ cookie: `sid=${sid}` });

async function insert(server: TestServer, id: string, owner: string, team = ''): Promise<void> {
  server.db.prepare('INSERT INTO todos (id, title, owner, team) VALUES (?, ?, ?, ?)').run(id, `title of ${id}`, owner, team);
  server.engine.notify();
}

/** Open an entity socket as the session `sid` and subscribe to todos. */
async function subscribed(server: TestServer, sid: string): Promise<WsClient> {
  const client = await WsClient.connect(server.wsUrl, { headers: cookie(sid) });
  const reply = await client.request({ type: 'subscribe', entities: ['todos'] });
  assert.equal(reply.type, 'subscribed', JSON.stringify(reply));
  return client;
}

/** Resolves with the close code and reason of a socket (listen before causing the close). */
function closeOf(client: WsClient): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => client.socket.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
}

/** Reject after `ms` if `promise` has not settled: a bound on arrival, never a timing assertion. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

type Receiver = { changes(): any[] };

const changesOf = (receiver: Receiver, id: string) => receiver.changes().filter((change) => change.id === id);

/** Wait until `id` reaches the receiver as a create carrying its data; returns that change. */
async function arrivesWithData(receiver: Receiver, id: string, what: string): Promise<any> {
  const change = await waitFor(
    () => changesOf(receiver, id).find((each) => each.action === 'create' && each.data !== null),
    5000,
    `${id} with data (${what})`,
  ).catch((error: Error) => {
    const seen = changesOf(receiver, id).map((each) => `${each.action} data=${JSON.stringify(each.data)}`);
    throw new Error(`${error.message}; ${id} arrived as: ${seen.length ? seen.join(', ') : 'nothing'}`);
  });
  assert.equal(change.data.id, id);
  return change;
}

/**
 * `hidden` must reach the receiver only as a delete without data, or not at
 * all. Changes arrive in version order, so once `marker` (written after
 * `hidden`, and visible to the receiver) has arrived, whatever `hidden` was
 * going to produce has arrived too.
 */
async function staysHidden(receiver: Receiver, hidden: string, marker: string, what: string): Promise<void> {
  await arrivesWithData(receiver, marker, `marker after ${hidden}, ${what}`);
  for (const change of changesOf(receiver, hidden)) {
    assert.equal(change.action, 'delete', `${what}: ${hidden} must not reach this user as ${JSON.stringify(change)}`);
    assert.equal(change.data, null, `${what}: a hidden row carries no data`);
  }
}

const ids = (page: { changes: Array<{ id: string }> }) => page.changes.map((change) => change.id).sort();

describe('rights are current on an open WebSocket', () => {
  test('a request on the same open socket runs under the rights of this moment', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    await insert(server, 'a1', 'alice');
    await insert(server, 'b1', 'bob');
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');

    const before = await alice.request({ type: 'sync', entity: 'todos', since: 0 });
    assert.equal(before.type, 'sync', JSON.stringify(before));
    assert.deepEqual(ids(before), ['a1'], 'as a user, alice sees only her row');

    // Promoted by the app; the socket is not reopened and nobody calls refreshRights.
    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    const promoted = await alice.request({ type: 'sync', entity: 'todos', since: 0 });
    assert.equal(promoted.type, 'sync', JSON.stringify(promoted));
    assert.deepEqual(ids(promoted), ['a1', 'b1'], 'the next request on the same socket sees what an admin sees');

    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const demoted = await alice.request({ type: 'sync', entity: 'todos', since: 0 });
    assert.deepEqual(ids(demoted), ['a1'], 'and a demotion is just as immediate');
    assert.equal(alice.socket.readyState, alice.socket.OPEN);
    alice.close();
  });

  test('after refreshRights, live delivery follows a promotion and a demotion', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');

    await insert(server, 'bob-before', 'bob');
    await insert(server, 'alice-1', 'alice');
    await staysHidden(alice, 'bob-before', 'alice-1', 'alice as a user');

    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    await server.engine.refreshRights('alice');
    await insert(server, 'bob-promoted', 'bob');
    const seen = await arrivesWithData(alice, 'bob-promoted', 'alice as an admin');
    assert.equal(seen.data.owner, 'bob');
    assert.equal(alice.socket.readyState, alice.socket.OPEN, 'a change of rights re-scopes the socket; it does not close it');

    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    await server.engine.refreshRights('alice');
    await insert(server, 'bob-demoted', 'bob');
    await insert(server, 'alice-2', 'alice');
    await staysHidden(alice, 'bob-demoted', 'alice-2', 'alice demoted again');
    assert.equal(alice.socket.readyState, alice.socket.OPEN);
    alice.close();
  });

  test('without refreshRights, the periodic re-check (rightsRecheckMs) picks up a promotion', async (t) => {
    const { server, sessions, answers, close } = await start({ rightsRecheckMs: 200 });
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');
    await insert(server, 'bob-before', 'bob');
    await insert(server, 'alice-1', 'alice');
    await staysHidden(alice, 'bob-before', 'alice-1', 'alice as a user');

    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    // No request is made on the socket: only the engine's own re-check can ask authorize again.
    await waitFor(() => answers.some((user) => user.role === 'admin'), 5000, 'the periodic re-check to run authorize');
    await insert(server, 'bob-after', 'bob');
    await arrivesWithData(alice, 'bob-after', 'alice promoted, picked up by the periodic re-check');
    alice.close();
  });

  test('a session that ended closes the WebSocket with 4401 and ends the SSE stream', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    sessions.set('s-bob', { id: 'bob', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');
    const bob = await subscribed(server, 's-bob');
    const sse = new SseClient(`${server.url}/api/sync/events?entities=todos`, cookie('s-alice'));
    await waitFor(() => sse.status === 200, 5000, 'alice stream open');
    await waitFor(() => server.engine.connections().sse === 1 && server.engine.connections().websocket === 2, 5000, 'connections counted');

    const closed = closeOf(alice);
    sessions.delete('s-alice'); // signed out
    await server.engine.refreshRights('alice');
    const { code } = await within(closed, 5000, 'alice socket to close');
    assert.equal(code, CloseCode.SessionEnded);
    assert.equal(code, 4401);
    await within(sse.done, 5000, 'alice stream to end');
    await waitFor(() => server.engine.connections().sse === 0 && server.engine.connections().websocket === 1, 5000, 'alice counted out');

    // Bob's socket was not touched, and alice cannot come back on her old session.
    assert.equal(bob.socket.readyState, bob.socket.OPEN);
    await insert(server, 'bob-1', 'bob');
    await arrivesWithData(bob, 'bob-1', 'bob unaffected');
    await assert.rejects(WsClient.connect(server.wsUrl, { headers: cookie('s-alice') }), /401/);
    bob.close();
  });

  test('authorize answering false for an open socket closes it with 4403 (and ends the stream)', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');
    const sse = new SseClient(`${server.url}/api/sync/events?entities=todos`, { 'x-session': 's-alice' });
    await waitFor(() => sse.status === 200 && server.engine.connections().sse === 1, 5000, 'alice stream open');

    const closed = closeOf(alice);
    sessions.set('s-alice', false); // banned
    await server.engine.refreshRights('alice');
    const { code } = await within(closed, 5000, 'alice socket to close');
    assert.equal(code, CloseCode.Forbidden);
    assert.equal(code, 4403);
    await within(sse.done, 5000, 'alice stream to end');
  });

  test('a session that now names another user closes the socket with 4401', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');
    const closed = closeOf(alice);
    // The session id was reissued to an admin: the socket must not carry on as them.
    sessions.set('s-alice', { id: 'mallory', role: 'admin', team: 'red' });
    await server.engine.refreshRights('alice');
    assert.equal((await within(closed, 5000, 'socket to close')).code, CloseCode.SessionEnded);
  });
});

describe('live batches are shared by rights, never by user id', () => {
  test('two sockets of one user, the second opened after a promotion: both see the new view', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const first = await subscribed(server, 's-alice');
    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    const second = await subscribed(server, 's-alice');

    // The second socket opened as an admin: it must not be handed the batch encoded for the first one.
    await insert(server, 'bob-1', 'bob');
    await arrivesWithData(second, 'bob-1', 'second socket, opened as an admin');

    await server.engine.refreshRights('alice');
    await insert(server, 'bob-2', 'bob');
    await arrivesWithData(first, 'bob-2', 'first socket, re-checked');
    await arrivesWithData(second, 'bob-2', 'second socket');
    first.close();
    second.close();
  });

  test('an admin and a user connected at once each get only what their own rights select', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    sessions.set('s-carol', { id: 'carol', role: 'user', team: 'red' });
    const alice = await subscribed(server, 's-alice');
    const carol = await subscribed(server, 's-carol');

    await insert(server, 'bob-1', 'bob');
    await insert(server, 'carol-1', 'carol');
    await arrivesWithData(alice, 'bob-1', 'alice, an admin');
    await arrivesWithData(alice, 'carol-1', 'alice, an admin');
    await staysHidden(carol, 'bob-1', 'carol-1', 'carol, a user');
    alice.close();
    carol.close();
  });

  test('a scopeKey lets users with equal keys share, and each still gets exactly their view', async (t) => {
    const { server, sessions, close } = await start({
      entities: [{ name: 'todos', read: (row, user) => row.team === user?.team, scopeKey: (user) => String(user?.team) }],
    });
    t.after(close);
    sessions.set('s-carol', { id: 'carol', role: 'user', team: 'red' });
    sessions.set('s-dave', { id: 'dave', role: 'user', team: 'red' });
    sessions.set('s-erin', { id: 'erin', role: 'user', team: 'blue' });
    const carol = await subscribed(server, 's-carol');
    const dave = await subscribed(server, 's-dave');
    const erin = await subscribed(server, 's-erin');

    await insert(server, 'blue-1', 'bob', 'blue');
    await insert(server, 'red-1', 'bob', 'red');
    await insert(server, 'blue-2', 'bob', 'blue');
    await staysHidden(carol, 'blue-1', 'red-1', 'carol, team red');
    await staysHidden(dave, 'blue-1', 'red-1', 'dave, team red (same key as carol)');
    await staysHidden(erin, 'red-1', 'blue-2', 'erin, team blue');
    await arrivesWithData(erin, 'blue-1', 'erin, team blue');

    // Carol moves to team blue: her key changes, so she leaves the red view.
    sessions.set('s-carol', { id: 'carol', role: 'user', team: 'blue' });
    await server.engine.refreshRights('carol');
    await insert(server, 'red-2', 'bob', 'red');
    await insert(server, 'blue-3', 'bob', 'blue');
    await staysHidden(carol, 'red-2', 'blue-3', 'carol, moved to team blue');
    await staysHidden(erin, 'red-2', 'blue-3', 'erin, team blue');
    await arrivesWithData(dave, 'red-2', 'dave, still team red');
    carol.close();
    dave.close();
    erin.close();
  });
});

describe('live batches are shared by rights, even when the app mutates its user objects', () => {
  // Apps often keep user objects in a session cache and change a field in place
  // (`user.team = 'blue'`); authorize then returns that same object. Whatever the
  // engine does about the changed user, another user whose rights did not change
  // must keep getting exactly their own view: a key computed from the object's old
  // state must never sit next to a rule reading its new state.
  const teamScoped: EntityConfig = { name: 'todos', read: (row, user) => row.team === user?.team, scopeKey: (user) => String(user?.team) };

  /** Dave (team red) must get red rows with data and never a blue row's data. */
  async function daveKeepsHisView(dave: Receiver): Promise<void> {
    // red-1 arrives in some form (with data when all is well): by then blue-1 has arrived too.
    await waitFor(() => changesOf(dave, 'red-1').length > 0, 5000, 'red-1 at dave');
    for (const change of changesOf(dave, 'blue-1')) {
      assert.equal(change.data, null, `dave (team red) received team blue's row: ${JSON.stringify(change)}`);
    }
    await arrivesWithData(dave, 'red-1', 'dave, team red');
  }

  test('WebSocket: a user object changed in place, then refreshRights: each socket gets exactly its own view', async (t) => {
    const { server, sessions, close } = await start({ shareObjects: true, entities: [teamScoped] });
    t.after(close);
    sessions.set('s-carol', { id: 'carol', role: 'user', team: 'red' });
    sessions.set('s-dave', { id: 'dave', role: 'user', team: 'red' });
    const carol = await subscribed(server, 's-carol');
    const dave = await subscribed(server, 's-dave');

    (sessions.get('s-carol') as AppUser).team = 'blue'; // in place
    await server.engine.refreshRights('carol');
    await insert(server, 'blue-1', 'bob', 'blue');
    await insert(server, 'red-1', 'bob', 'red');
    await insert(server, 'blue-2', 'bob', 'blue');
    await daveKeepsHisView(dave);
    await staysHidden(carol, 'red-1', 'blue-2', 'carol, moved to team blue in place');
    await arrivesWithData(carol, 'blue-1', 'carol, moved to team blue in place');
    carol.close();
    dave.close();
  });

  test('SSE: a user object changed in place: another user sharing the old key keeps his own view', async (t) => {
    const { server, sessions, close } = await start({ shareObjects: true, entities: [teamScoped] });
    t.after(close);
    sessions.set('s-carol', { id: 'carol', role: 'user', team: 'red' });
    sessions.set('s-dave', { id: 'dave', role: 'user', team: 'red' });
    const carol = new SseClient(`${server.url}/api/sync/events?entities=todos`, cookie('s-carol'));
    await waitFor(() => server.engine.connections().sse === 1, 5000, 'carol stream open');
    const dave = new SseClient(`${server.url}/api/sync/events?entities=todos`, cookie('s-dave'));
    await waitFor(() => server.engine.connections().sse === 2, 5000, 'dave stream open');

    // Carol's rights changed and have not been re-checked yet: that is about carol, never about dave.
    (sessions.get('s-carol') as AppUser).team = 'blue'; // in place
    await insert(server, 'blue-1', 'bob', 'blue');
    await insert(server, 'red-1', 'bob', 'red');
    await daveKeepsHisView(dave);
    carol.close();
    dave.close();
  });
});

describe('rights are current on an open SSE stream', () => {
  test('after refreshRights, a promoted user gets rows on her stream with their data', async (t) => {
    const { server, sessions, close } = await start();
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const sse = new SseClient(`${server.url}/api/sync/events?entities=todos`, cookie('s-alice'));
    await waitFor(() => sse.status === 200 && server.engine.connections().sse === 1, 5000, 'alice stream open');

    await insert(server, 'bob-before', 'bob');
    await insert(server, 'alice-1', 'alice');
    await staysHidden(sse, 'bob-before', 'alice-1', 'alice as a user, over SSE');

    sessions.set('s-alice', { id: 'alice', role: 'admin', team: 'red' });
    await server.engine.refreshRights('alice');
    await insert(server, 'bob-after', 'bob');
    const seen = await arrivesWithData(sse, 'bob-after', 'alice as an admin, over SSE');
    assert.equal(seen.data.owner, 'bob');

    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    await server.engine.refreshRights('alice');
    await insert(server, 'bob-demoted', 'bob');
    await insert(server, 'alice-2', 'alice');
    await staysHidden(sse, 'bob-demoted', 'alice-2', 'alice demoted, over SSE');
    sse.close();
  });
});

describe('rights are current on an open field-sync socket', () => {
  test('a session that ended closes /api/field-sync/ws with 4401', async (t) => {
    // Field sync refuses read-scoped entities, so this entity has no read rule.
    const { server, sessions, close } = await start({ entities: ['todos'], fieldSync: FieldMergeStrategy.LastWriteWins });
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const fieldWs = server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws');
    const alice = await WsClient.connect(fieldWs, { headers: cookie('s-alice') });
    const reply = await alice.request({ type: 'subscribe', entities: ['todos'] });
    assert.equal(reply.type, 'subscribed', JSON.stringify(reply));

    const closed = closeOf(alice);
    sessions.delete('s-alice');
    await server.engine.refreshRights('alice');
    assert.equal((await within(closed, 5000, 'field socket to close')).code, CloseCode.SessionEnded);
    await waitFor(() => server.engine.connections().websocket === 0, 5000, 'field socket counted out');
  });

  test('authorize answering false closes /api/field-sync/ws with 4403', async (t) => {
    const { server, sessions, close } = await start({ entities: ['todos'], fieldSync: FieldMergeStrategy.LastWriteWins });
    t.after(close);
    sessions.set('s-alice', { id: 'alice', role: 'user', team: 'red' });
    const fieldWs = server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws');
    const alice = await WsClient.connect(fieldWs, { headers: { 'x-session': 's-alice' } });
    const closed = closeOf(alice);
    sessions.set('s-alice', false);
    await server.engine.refreshRights('alice');
    assert.equal((await within(closed, 5000, 'field socket to close')).code, CloseCode.Forbidden);
  });
});
