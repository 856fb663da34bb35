import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { describe, test } from 'node:test';
import WebSocket from 'ws';
import type { SyncLimits } from '../src/core/config.js';
import { CloseCode } from '../src/core/protocol.js';
import { getJson, startServer, type TestServer, WsClient, waitFor } from './helpers.js';

/**
 * Limits by cost on a WebSocket (src/transports/socket/endpoint.ts): bytes
 * waiting to be sent (replies included) close the socket with 4008, messages
 * per second and requests waiting for an answer close it with 4029, and the
 * row budget delays requests instead of refusing them. Through all of it a
 * client that reads normally keeps being served.
 *
 * Nothing here asserts how long anything takes: waitFor waits for arrival only.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const TITLE = 't'.repeat(200);

/** Insert `count` rows straight into the database (change capture sees them), then wait for the hub to pass them. */
async function seed(server: TestServer, count: number, prefix = 'seed'): Promise<void> {
  const insert = server.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
  server.db.transaction(() => {
    for (let index = 0; index < count; index++) insert.run(`${prefix}-${String(index).padStart(5, '0')}`, TITLE);
  })();
  server.engine.notify();
  await server.engine.fannedOut(await server.engine.currentVersion());
}

/**
 * A server with these limits, closed after the test. Sockets passed to `track`
 * are terminated first: a stalled socket would otherwise hold the server's
 * close handshake open (ws waits 30 s for it).
 */
async function start(t: { after(fn: () => Promise<void>): void }, limits: Partial<SyncLimits>) {
  const server = await startServer({ limits });
  const sockets: WebSocket[] = [];
  t.after(async () => {
    for (const socket of sockets) socket.terminate();
    await server.close();
  });
  return { server, track: (socket: WebSocket) => sockets.push(socket) };
}

/** A raw `ws` client that records what it receives and how it was closed. */
class RawSocket {
  readonly messages: any[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => this.messages.push(JSON.parse(String(data))));
    ws.on('error', () => {});
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
  }

  static async open(url: string, { pauseOnOpen = false } = {}): Promise<RawSocket> {
    // No compression: what the server queues is what the limits count.
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const client = new RawSocket(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => {
        if (pauseOnOpen) client.tcp.pause();
        resolve();
      });
      ws.once('error', reject);
    });
    return client;
  }

  get tcp(): Socket {
    return (this.ws as unknown as { _socket: Socket })._socket;
  }

  count(type: string): number {
    return this.messages.filter((message) => message.type === type).length;
  }
}

/**
 * A well-behaved client next to the hostile one: subscribed to todos, reading.
 * `check` proves it is still served: a pull answers 200 and a row inserted
 * on the server arrives as a live change.
 */
async function normalReader(server: TestServer) {
  const reader = await WsClient.connect(server.wsUrl);
  const subscribed = await reader.request({ type: 'subscribe', entities: ['todos'] });
  assert.equal(subscribed.type, 'subscribed');
  let round = 0;
  return {
    reader,
    async check(what: string) {
      const pull = await getJson(`${server.url}/api/sync/todos?since=0&limit=10`);
      assert.equal(pull.status, 200, `${what}: pull answered ${pull.status}`);
      assert.ok(pull.body.changes.length > 0, `${what}: pull returned rows`);
      const id = `live-${what.replace(/\W+/g, '-')}-${round++}`;
      server.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)').run(id, 'still live');
      server.engine.notify();
      await waitFor(() => reader.changes().some((change) => change.id === id), 10_000, `${what}: live change ${id} on the normal socket`);
      assert.equal(reader.socket.readyState, WebSocket.OPEN, `${what}: the normal socket stayed open`);
    },
  };
}

describe('WebSocket limits by cost', () => {
  test('bytes bound covers replies: a stalled socket asking for big pages is closed with 4008, memory stays bounded', async (t) => {
    const maxBufferedBytes = 256 * 1024;
    const { server, track } = await start(t, { maxBufferedBytes, wsMessagesPerSecond: 10_000 });
    await seed(server, 5000);
    const normal = await normalReader(server);
    track(normal.reader.socket);
    const baseline = server.engine.connections().websocket;
    // Every raw socket the server upgrades, seen from the server side: what it has queued for the client.
    const serverSockets: Socket[] = [];
    server.server.on('upgrade', (_request, socket) => serverSockets.push(socket as Socket));
    // A message is always accepted onto an empty queue, so the bound is the limit plus one reply.
    const oneReply = (await (await fetch(`${server.url}/api/sync/todos?since=0&limit=5000`)).text()).length + 64;
    const rssBefore = process.memoryUsage().rss;

    const hostile = await RawSocket.open(server.wsUrl, { pauseOnOpen: true });
    track(hostile.ws);
    for (let ref = 0; ref < 50; ref++) hostile.ws.send(JSON.stringify({ type: 'sync', entity: 'todos', since: 0, limit: 5000, ref }));
    // Stay stalled a while (not measured): the server reads and answers meanwhile.
    await sleep(1000);
    const rssStalled = process.memoryUsage().rss;
    const queued = Math.max(...serverSockets.map((socket) => socket.writableLength));
    t.diagnostic(`rss grew ${((rssStalled - rssBefore) / 1e6).toFixed(1)} MB while stalled; largest server-side queue ${queued} bytes`);
    assert.ok(rssStalled - rssBefore < 200 * 1024 * 1024, `rss grew by ${rssStalled - rssBefore} bytes while one socket was stalled`);
    assert.ok(
      queued <= maxBufferedBytes + oneReply,
      `the server queued ${queued} bytes for a stalled socket (limit ${maxBufferedBytes}, one reply ${oneReply})`,
    );
    // A normal client is served while the hostile socket is stalled: pulls answer, live changes arrive.
    await normal.check('while a socket is stalled');

    hostile.tcp.resume();
    const { code } = await hostile.closed;
    assert.equal(code, CloseCode.SlowConsumer);
    assert.ok(hostile.count('sync') < 50, `the server queued all 50 replies (${hostile.count('sync')} arrived)`);
    await waitFor(() => server.engine.connections().websocket === baseline, 10_000, 'the stalled connection to be gone on the server');
    await normal.check('after the byte bound');
  });

  test('bytes bound covers replies that each fit: a stalled socket is closed with 4008 once they pile up', async (t) => {
    const maxBufferedBytes = 256 * 1024;
    const { server, track } = await start(t, { maxBufferedBytes, wsMessagesPerSecond: 10_000 });
    await seed(server, 5000);
    const normal = await normalReader(server);
    track(normal.reader.socket);
    const baseline = server.engine.connections().websocket;
    const serverSockets: Socket[] = [];
    server.server.on('upgrade', (_request, socket) => serverSockets.push(socket as Socket));

    // ~200 KB per reply: each fits the limit alone; 50 of them (~10 MB) are far past it and past loopback buffers.
    const hostile = await RawSocket.open(server.wsUrl, { pauseOnOpen: true });
    track(hostile.ws);
    for (let ref = 0; ref < 50; ref++) hostile.ws.send(JSON.stringify({ type: 'sync', entity: 'todos', since: 0, limit: 600, ref }));
    await sleep(1000);
    const queued = Math.max(...serverSockets.map((socket) => socket.writableLength));
    t.diagnostic(`largest server-side queue while stalled: ${queued} bytes`);
    assert.ok(queued <= maxBufferedBytes + 1024, `the server queued ${queued} bytes for a stalled socket (limit ${maxBufferedBytes})`);

    hostile.tcp.resume();
    const { code } = await hostile.closed;
    assert.equal(code, CloseCode.SlowConsumer);
    t.diagnostic(`${hostile.count('sync')} of 50 replies were delivered before the close`);
    assert.ok(hostile.count('sync') < 50, `the server queued all 50 replies (${hostile.count('sync')} arrived)`);
    await waitFor(() => server.engine.connections().websocket === baseline, 10_000, 'the stalled connection to be gone on the server');
    await normal.check('after replies piled up');
  });

  test('message rate: a burst of 100 pings over wsMessagesPerSecond is closed with 4029, not answered in full', async (t) => {
    const { server, track } = await start(t, { wsMessagesPerSecond: 20 });
    await seed(server, 10);
    const normal = await normalReader(server);
    track(normal.reader.socket);
    const hostile = await RawSocket.open(server.wsUrl);
    track(hostile.ws);
    await waitFor(() => hostile.count('hello') === 1, 5000, 'hello');
    for (let ref = 0; ref < 100; ref++) hostile.ws.send(JSON.stringify({ type: 'ping', ref }));
    const { code } = await hostile.closed;
    assert.equal(code, CloseCode.RateLimited);
    t.diagnostic(`${hostile.count('pong')} of 100 pings answered`);
    assert.ok(hostile.count('pong') < 100, 'every ping of the burst was answered');
    await normal.check('after the message-rate close');
  });

  test('maxPendingRequests: a burst of 50 big sync requests over the limit is closed with 4029', async (t) => {
    const { server, track } = await start(t, { maxPendingRequests: 4, wsMessagesPerSecond: 10_000 });
    await seed(server, 5000);
    const normal = await normalReader(server);
    track(normal.reader.socket);
    const hostile = await RawSocket.open(server.wsUrl);
    track(hostile.ws);
    await waitFor(() => hostile.count('hello') === 1, 5000, 'hello');
    for (let ref = 0; ref < 50; ref++) hostile.ws.send(JSON.stringify({ type: 'sync', entity: 'todos', since: 0, limit: 5000, ref }));
    const { code } = await hostile.closed;
    assert.equal(code, CloseCode.RateLimited);
    t.diagnostic(`${hostile.count('sync')} of 50 requests answered before the close`);
    assert.ok(hostile.count('sync') < 50, 'every request was answered');
    await normal.check('after the pending-requests close');
  });

  test('row budget paces: sequential big sync requests past wsRowsPerSecond are all answered on an open socket', async (t) => {
    const { server, track } = await start(t, { wsRowsPerSecond: 2000 });
    await seed(server, 5000);
    const normal = await normalReader(server);
    track(normal.reader.socket);
    const client = await WsClient.connect(server.wsUrl);
    track(client.socket);
    const closed: number[] = [];
    client.socket.on('close', (code) => closed.push(code));
    const ids = new Set<string>();
    let snapshot: string | undefined;
    for (let page = 0; page < 3; page++) {
      const reply = await client.request({ type: 'sync', entity: 'todos', since: 0, limit: 2000, ...(snapshot ? { snapshot } : {}) });
      assert.equal(reply.type, 'sync', `page ${page}: ${JSON.stringify(reply).slice(0, 200)}`);
      for (const change of reply.changes) ids.add(change.id);
      snapshot = reply.next;
      if (page < 2) assert.ok(reply.has_more && snapshot, `page ${page} says more follows`);
    }
    assert.equal(ids.size, 5000, 'the three pages hold every seeded row');
    assert.deepEqual(closed, [], 'the socket was not closed');
    assert.equal(client.socket.readyState, WebSocket.OPEN);
    // The budget delays, it does not refuse: the socket still answers afterwards.
    assert.equal((await client.request({ type: 'ping' })).type, 'pong');
    client.close();
    await normal.check('after paced pages');
  });

  test("the row budget is the principal's: a reconnect does not refill it, another user is not held back", async (t) => {
    const users = new Map([
      ['spender', { id: 'spender' }],
      ['other', { id: 'other' }],
    ]);
    const server = await startServer({
      limits: { wsRowsPerSecond: 2000 },
      authorize: (request) => users.get(new URL(request.url).searchParams.get('user') ?? '') ?? null,
    });
    t.after(() => server.close());
    await seed(server, 4000);
    const page = { type: 'sync', entity: 'todos', since: 0, limit: 2000 };
    // Two pages spend the budget and put it 2,000 rows (a second) in debt, then the socket goes away.
    const first = await WsClient.connect(`${server.wsUrl}?user=spender`);
    assert.equal((await first.request(page)).type, 'sync');
    assert.equal((await first.request(page)).type, 'sync');
    first.close();
    const again = await WsClient.connect(`${server.wsUrl}?user=spender`);
    const other = await WsClient.connect(`${server.wsUrl}?user=other`);
    t.after(() => {
      again.socket.terminate();
      other.socket.terminate();
    });
    const order: string[] = [];
    await Promise.all([
      again.request(page).then((reply) => order.push(`spender:${reply.type}`)),
      other.request(page).then((reply) => order.push(`other:${reply.type}`)),
    ]);
    // Ordering, not timing: the reconnected spender waits for its budget; the other user does not wait for it.
    assert.deepEqual(order, ['other:sync', 'spender:sync']);
  });

  test('catch-up is paced by the reader: a reading socket whose catch-up pages exceed maxBufferedBytes still catches up', async (t) => {
    // docs/security.md: "catch-up itself is paced by the reader, never buffered". The hub replays
    // the log 1000 changes a page; with 256 KiB and ~330-byte changes one page is ~330 KB, more
    // than the whole bound. A client that reads normally must still receive every change: a 4008
    // here would repeat on every reconnect from the same cursor, and it could never catch up.
    const maxBufferedBytes = 256 * 1024;
    const { server, track } = await start(t, { maxBufferedBytes });
    const since = await server.engine.currentVersion();
    await seed(server, 3000);
    const total = (await server.engine.currentVersion()) - since;
    // Our client's batch protocol (an undeclared socket gets one message per change).
    const client = await RawSocket.open(`${server.wsUrl}?protocol=2`);
    track(client.ws);
    client.ws.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since, ref: 1 }));
    const changes = () => client.messages.filter((m) => m.type === 'change').reduce((sum, m) => sum + m.changes.length, 0);
    const outcome = await Promise.race([
      waitFor(() => changes() >= total, 20_000, 'catch-up').then(() => 'caught up'),
      client.closed.then(({ code, reason }) => `closed ${code} ${reason} after ${changes()} of ${total} changes`),
    ]);
    assert.equal(outcome, 'caught up');
    assert.equal(client.ws.readyState, WebSocket.OPEN);
    client.ws.close();
  });
});
