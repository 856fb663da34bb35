import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { FieldMergeStrategy } from '../src/core/config.js';
import { startServer, type TestServer, WsClient, waitFor } from './helpers.js';

/**
 * Connections abandoned at every step of their life give back everything they
 * took: their per-user slot, their session count, their hub subscription and
 * their place in `admitting`. `authorize` is slow on purpose (100 ms), so a
 * client can go away while it runs; it tells the test when it starts, so each
 * abandonment happens at the step it names, not at a guessed moment.
 *
 * Every connection is user u1 with maxConnectionsPerUser 3: a leaked slot
 * shows up as a 429 for a later connection that needs one, and at the end the
 * count must be exact (3 at once open, the 4th refused).
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const VALID_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const MAX_PER_USER = 3;
const ROWS = 4000;

/** Resolvers waiting for authorize to start on a request carrying `x-probe: <id>`. */
const authorizing = new Map<string, () => void>();
let probes = 0;
function probe(): { id: string; started: Promise<void> } {
  const id = `p${++probes}`;
  const started = new Promise<void>((resolve) => authorizing.set(id, resolve));
  return { id, started };
}

let server: TestServer;
let port: number;

/** A raw TCP connection that collects what arrives and resolves when `pattern` has arrived. */
function rawConnection(request: string) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  let received = '';
  const waiters: Array<{ pattern: RegExp; resolve: (text: string) => void }> = [];
  socket.on('data', (chunk) => {
    received += chunk.toString('latin1');
    for (const waiter of [...waiters]) {
      if (waiter.pattern.test(received)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(received);
      }
    }
  });
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.write(request);
  return {
    socket,
    closed,
    /** Resolves with everything received once `pattern` matches it; rejects if the socket closes first. */
    until(pattern: RegExp): Promise<string> {
      if (pattern.test(received)) return Promise.resolve(received);
      return new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        closed.then(() => reject(new Error(`closed before ${pattern}; got ${JSON.stringify(received.slice(0, 300))}`)));
      });
    },
  };
}

const upgradeRequest = (path: string, probeId: string) =>
  `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: ${VALID_KEY}\r\nSec-WebSocket-Version: 13\r\nx-probe: ${probeId}\r\n\r\n`;

const sseRequest = (query: string, probeId: string) =>
  `GET /api/sync/events${query} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAccept: text/event-stream\r\nx-probe: ${probeId}\r\n\r\n`;

/** The status line's code, or throws with what arrived. */
function statusOf(text: string): number {
  const match = /^HTTP\/1\.1 (\d{3})/.exec(text);
  if (!match) throw new Error(`no status line in ${JSON.stringify(text.slice(0, 200))}`);
  return Number(match[1]);
}

type Abandon = () => Promise<void>;

// --- Abandoned while authorize runs (they never get a slot) ---------------------------------

const upgradeResetDuringAuthorize =
  (path: string, how: 'reset' | 'fin'): Abandon =>
  async () => {
    const { id, started } = probe();
    const connection = rawConnection(upgradeRequest(path, id));
    await started;
    if (how === 'reset') connection.socket.resetAndDestroy();
    else connection.socket.destroy();
    await connection.closed;
  };

const sseGoneDuringAuthorize =
  (how: 'reset' | 'half-close'): Abandon =>
  async () => {
    const { id, started } = probe();
    const connection = rawConnection(sseRequest('', id));
    await started;
    if (how === 'reset') {
      connection.socket.resetAndDestroy();
    } else {
      // FIN only: the client stops sending but could still read. The server must treat it as gone.
      connection.socket.end();
      await Promise.race([connection.closed, sleep(300)]);
      connection.socket.destroy();
    }
    await connection.closed;
  };

const sseRequestDestroyedDuringAuthorize: Abandon = async () => {
  const { id, started } = probe();
  const request = http.get({ host: '127.0.0.1', port, path: '/api/sync/events', agent: false, headers: { 'x-probe': id } });
  request.on('error', () => {});
  const closed = new Promise<void>((resolve) => request.once('close', () => resolve()));
  await started;
  request.destroy();
  await closed;
};

// --- Abandoned once admitted (each holds a slot until it is gone) ----------------------------

const sseAfterHeaders: Abandon = async () => {
  const { id } = probe();
  const connection = rawConnection(sseRequest('', id));
  const head = await connection.until(/\r\n\r\n/);
  assert.equal(statusOf(head), 200, `SSE after headers: ${head.slice(0, 200)}`);
  connection.socket.resetAndDestroy();
  await connection.closed;
};

const sseAfterFirstEvent: Abandon = async () => {
  const { id } = probe();
  // since=0: the stream starts by replaying the log, so a data event comes at once.
  const connection = rawConnection(sseRequest('?since=0', id));
  const text = await connection.until(/\ndata: /);
  assert.equal(statusOf(text), 200);
  connection.socket.destroy();
  await connection.closed;
};

const upgradeResetAfter101 =
  (path: string): Abandon =>
  async () => {
    const { id } = probe();
    const connection = rawConnection(upgradeRequest(path, id));
    const head = await connection.until(/\r\n\r\n/);
    assert.equal(statusOf(head), 101, `upgrade of ${path}: ${head.slice(0, 200)}`);
    connection.socket.resetAndDestroy();
    await connection.closed;
  };

const socketGoneMidCatchUp =
  (how: 'reset' | 'terminate'): Abandon =>
  async () => {
    const { id } = probe();
    const ws = new WebSocket(`ws://127.0.0.1:${port}/api/sync/ws`, { headers: { 'x-probe': id }, perMessageDeflate: false });
    ws.on('error', () => {});
    const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    const status = await new Promise<number>((resolve) => {
      ws.once('open', () => resolve(101));
      ws.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
    });
    assert.equal(status, 101, 'WebSocket for catch-up');
    const firstChange = new Promise<void>((resolve) =>
      ws.on('message', (data) => {
        if (JSON.parse(String(data)).type === 'change') resolve();
      }),
    );
    ws.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since: 0 }));
    // wsRowsPerSecond is 1000 and the log holds 4000 rows: the first page arrives, the rest is still to come.
    await firstChange;
    if (how === 'reset') (ws as unknown as { _socket: net.Socket })._socket.resetAndDestroy();
    else ws.terminate();
    await closed;
  };

const duringAuthorize: Array<[string, Abandon]> = [
  ['sync ws upgrade reset during authorize', upgradeResetDuringAuthorize('/api/sync/ws', 'reset')],
  ['field ws upgrade reset during authorize', upgradeResetDuringAuthorize('/api/field-sync/ws', 'reset')],
  ['sync ws upgrade closed (FIN) during authorize', upgradeResetDuringAuthorize('/api/sync/ws', 'fin')],
  ['field ws upgrade closed (FIN) during authorize', upgradeResetDuringAuthorize('/api/field-sync/ws', 'fin')],
  ['SSE reset during authorize', sseGoneDuringAuthorize('reset')],
  ['SSE half-closed during authorize', sseGoneDuringAuthorize('half-close')],
  ['SSE http request destroyed during authorize', sseRequestDestroyedDuringAuthorize],
];

const onceAdmitted: Array<[string, Abandon]> = [
  ['SSE reset right after the headers', sseAfterHeaders],
  ['SSE closed after the first event', sseAfterFirstEvent],
  ['sync ws reset right after the 101', upgradeResetAfter101('/api/sync/ws')],
  ['field ws reset right after the 101', upgradeResetAfter101('/api/field-sync/ws')],
  ['ws reset mid-catch-up', socketGoneMidCatchUp('reset')],
  ['ws terminated mid-catch-up', socketGoneMidCatchUp('terminate')],
];

const IDLE = { websocket: 0, sse: 0, live: 0, admitting: 0 };

/** Open a WebSocket as u1; resolves with the client, or the HTTP status of the refusal. */
async function tryOpen(): Promise<{ socket: WebSocket | null; status: number }> {
  const socket = new WebSocket(server.wsUrl);
  socket.on('error', () => {});
  return new Promise((resolve) => {
    socket.once('open', () => resolve({ socket, status: 101 }));
    socket.once('unexpected-response', (_request, response) => {
      resolve({ socket: null, status: response.statusCode ?? 0 });
      response.resume();
      socket.terminate();
    });
  });
}

const same = (a: object, b: object) => JSON.stringify(a) === JSON.stringify(b);

async function waitIdle(what: string): Promise<void> {
  await waitFor(() => same(server.engine.connections(), IDLE), 10_000, what).catch((error: Error) => {
    throw new Error(`${error.message}; engine.connections() is ${JSON.stringify(server.engine.connections())}`);
  });
}

/** Gates: authorize of a request with `x-gate: <name>` waits until the test opens the gate (instead of 100 ms). */
const gates = new Map<string, { open: () => void; opened: Promise<void> }>();
function gate(name: string) {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  gates.set(name, { open, opened });
  return open;
}
/** authorize calls still running. */
let authorizeRunning = 0;

describe('abandoned connections release everything', () => {
  before(async () => {
    server = await startServer({
      fieldSync: FieldMergeStrategy.LastWriteWins,
      limits: { maxConnectionsPerUser: MAX_PER_USER, wsRowsPerSecond: 1000 },
      authorize: async (request) => {
        authorizeRunning++;
        try {
          const id = request.headers.get('x-probe');
          if (id) {
            authorizing.get(id)?.();
            authorizing.delete(id);
          }
          const gated = gates.get(request.headers.get('x-gate') ?? '');
          await (gated ? gated.opened : sleep(100));
          return { id: 'u1' };
        } finally {
          authorizeRunning--;
        }
      },
    });
    port = Number(new URL(server.url).port);
    const insert = server.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
    server.db.transaction(() => {
      for (let index = 0; index < ROWS; index++) insert.run(`row-${index}`, `title ${'x'.repeat(100)} ${index}`);
    })();
    server.engine.notify();
    await server.engine.fannedOut(await server.engine.currentVersion());
  });
  after(() => server.close());

  test('100 connections abandoned at assorted points leave no slot, session, subscription or admission behind', async (t) => {
    let abandoned = 0;
    const seen = new Map<string, number>();
    const run = async (batch: number, cases: Array<[string, Abandon]>) => {
      const results = await Promise.allSettled(cases.map(([, abandon]) => abandon()));
      results.forEach((result, index) => {
        const name = cases[index]![0];
        if (result.status === 'rejected') throw new Error(`batch ${batch}, ${name}: ${(result.reason as Error)?.message ?? result.reason}`);
        seen.set(name, (seen.get(name) ?? 0) + 1);
      });
      abandoned += cases.length;
    };
    for (let batch = 0; batch < 10; batch++) {
      // Seven go away while authorize runs, all at once; once the server is done with them, three
      // more go away after they were admitted, all at once (each holds one of u1's three slots meanwhile).
      await run(batch, duringAuthorize);
      await waitFor(() => authorizeRunning === 0, 10_000, `authorize calls of batch ${batch} to end`);
      await run(
        batch,
        [0, 1, 2].map((offset) => onceAdmitted[(batch * 3 + offset) % onceAdmitted.length]!),
      );
      // The next batch needs u1's slots again: they must all come back (a leak fails here, or as a 429 there).
      await waitIdle(`everything released after batch ${batch}`);
    }
    assert.equal(abandoned, 100);
    t.diagnostic(`abandoned: ${[...seen].map(([name, count]) => `${name} ×${count}`).join(', ')}`);

    await waitIdle('engine.connections() idle');
    assert.deepEqual(server.engine.connections(), IDLE);
    assert.deepEqual((await server.engine.metrics()).connections, { websocket: 0, sse: 0 });

    // The slot count is exact: u1 gets exactly maxConnectionsPerUser sockets at once, then a 429.
    const opened = await Promise.all(Array.from({ length: MAX_PER_USER }, () => tryOpen()));
    t.after(() => {
      for (const { socket } of opened) socket?.terminate();
    });
    assert.deepEqual(
      opened.map(({ status }) => status),
      Array(MAX_PER_USER).fill(101),
    );
    const fourth = await tryOpen();
    fourth.socket?.terminate();
    assert.equal(fourth.status, 429, `the connection past ${MAX_PER_USER} answered ${fourth.status}`);
    // Closing one gives exactly one slot back.
    opened[0]!.socket!.close();
    await waitFor(() => server.engine.connections().websocket === MAX_PER_USER - 1, 5000, 'one slot to come back');
    const again = await WsClient.connect(server.wsUrl);
    assert.equal((await again.request({ type: 'ping' })).type, 'pong');
    const fifth = await tryOpen();
    fifth.socket?.terminate();
    assert.equal(fifth.status, 429, 'only the one freed slot came back');
    again.close();
    for (const { socket } of opened) socket?.close();
    await waitIdle('idle at the end');
  });

  for (const how of ['reset', 'fin'] as const) {
    test(`upgrades abandoned (${how === 'fin' ? 'FIN, as a closed tab sends' : 'RST'}) during authorize never take a live connection's slot`, async (t) => {
      await waitIdle('idle before');
      const open = gate(`g-${how}`);
      t.after(() => open());
      // Three upgrades (sync, field, sync) go away while their authorize waits at the gate.
      const gone = await Promise.all(
        ['/api/sync/ws', '/api/field-sync/ws', '/api/sync/ws'].map(async (path) => {
          const { id, started } = probe();
          const connection = rawConnection(upgradeRequest(path, id).replace('\r\n\r\n', `\r\nx-gate: g-${how}\r\n\r\n`));
          await started;
          if (how === 'reset') connection.socket.resetAndDestroy();
          else connection.socket.destroy();
          await connection.closed;
          return connection;
        }),
      );
      assert.equal(gone.length, 3);
      // Let the server see them go (settling, not measured).
      await sleep(100);
      // Three live upgrades of the same user wait at the same gate, authorized after the abandoned ones.
      const live = ['/api/sync/ws', '/api/field-sync/ws', '/api/sync/ws'].map((path) => {
        const { id, started } = probe();
        const connection = rawConnection(upgradeRequest(path, id).replace('\r\n\r\n', `\r\nx-gate: g-${how}\r\n\r\n`));
        return { path, connection, started };
      });
      t.after(() => {
        for (const { connection } of live) connection.socket.destroy();
      });
      await Promise.all(live.map(({ started }) => started));
      open();
      const statuses = await Promise.all(live.map(async ({ connection }) => statusOf(await connection.until(/\r\n\r\n/))));
      assert.deepEqual(
        statuses,
        [101, 101, 101],
        `the live upgrades were answered ${statuses.join(', ')}: abandoned ones took their slots`,
      );
      for (const { connection } of live) connection.socket.destroy();
      await waitIdle('idle after');
    });
  }
});
