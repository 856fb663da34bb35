import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import WebSocket from 'ws';
import { nodeHandler } from '../src/adapters/node.js';
import { SyncEngine } from '../src/engine.js';
import { tempDb, waitFor } from './helpers.js';

/**
 * Idle readers cost nothing: a thousand SSE streams and two hundred
 * WebSockets that stopped reading in the middle of a catch-up wait on their
 * sockets' drain events. Nothing polls them: the number of live timers in the
 * process does not grow with the number of stalled connections.
 *
 * Why a Unix domain socket and not loopback TCP: on Linux a paused loopback TCP
 * reader absorbs about 4 MB in kernel buffers (measured on the machine this was
 * written on), so stalling 1,200 TCP streams in the server's own queues would
 * take ~5 GB of catch-up. A Unix stream socket holds ~208 KB, so one catch-up
 * page stalls each stream. The server is the same node:http server and engine
 * as everywhere else; only the listening address differs.
 *
 * Why catch-up (since=0) and not live writes into stalled streams: a live
 * batch that does not fit ends the stream (that is the slow-consumer bound,
 * tested in slow-consumers.test.ts); only catch-up waits for drain.
 *
 * Two timer counts: `process.getActiveResourcesInfo()` lists only ref'd
 * timers (the engine unrefs all of its own), so live Timeout objects are also
 * counted with an async hook, which sees unref'd ones too.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const MAX_BUFFERED = 64 * 1024;
const ROWS_PER_WRITE = 1000;
const WRITES = 3;

function fdLimit(): number {
  const result = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const value = result.stdout.trim();
  return value === 'unlimited' ? Number.POSITIVE_INFINITY : Number(value) || 1024;
}

const refedTimeouts = () => process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length;

test('1,000 stalled SSE streams and 200 stalled WebSockets add no timers and wait on drain', async (t) => {
  const limit = fdLimit();
  // Both ends of every connection live in this process: 2 fds per connection, plus the database and slack.
  const sseCount = limit >= 4096 ? 1000 : 500;
  const wsCount = limit >= 4096 ? 200 : 100;
  t.diagnostic(`ulimit -n: ${limit}; ${sseCount} SSE streams, ${wsCount} WebSockets`);

  const temp = tempDb();
  const engine = new SyncEngine({ db: temp.db, entities: ['todos'], limits: { maxBufferedBytes: MAX_BUFFERED } });
  await engine.ready;
  const server = http.createServer(nodeHandler(engine));
  engine.attach(server);
  const dir = mkdtempSync(join(tmpdir(), 'rhtmx-idle-'));
  const path = join(dir, 'sync.sock');
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const serverSockets = new Set<net.Socket>();
  server.on('connection', (socket) => {
    serverSockets.add(socket);
    socket.once('close', () => serverSockets.delete(socket));
  });
  const clients: Array<{ destroy(): void }> = [];
  let hook: ReturnType<typeof createHook> | null = null;
  t.after(async () => {
    hook?.disable();
    for (const client of clients) client.destroy();
    await engine.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    temp.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  // A few large writes: every change carries a 200-character title, so one catch-up page
  // (1000 changes, ~350 KB) is more than the socket's kernel buffer and half the bound together.
  const insert = temp.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
  for (let write = 0; write < WRITES; write++) {
    temp.db.transaction(() => {
      for (let index = 0; index < ROWS_PER_WRITE; index++) insert.run(`w${write}-${index}`, `${'t'.repeat(200)}`);
    })();
  }
  engine.notify();
  await engine.fannedOut(await engine.currentVersion());

  // Baseline before any stream is open.
  const refedBefore = refedTimeouts();
  const liveTimeouts = new Set<number>();
  let timeoutsCreated = 0;
  hook = createHook({
    init(id, type) {
      if (type !== 'Timeout') return;
      liveTimeouts.add(id);
      timeoutsCreated++;
    },
    destroy(id) {
      liveTimeouts.delete(id);
    },
  }).enable();

  // SSE streams over raw sockets, replaying the log from 0; the client never reads a byte.
  const openSse = () => {
    const socket = net.connect(path);
    socket.on('error', () => {});
    socket.pause();
    socket.write('GET /api/sync/events?since=0 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n');
    clients.push(socket);
  };
  // In batches: a Unix socket's listen backlog refuses connects past it instead of retrying them.
  for (let opened = 0; opened < sseCount; ) {
    const batch = Math.min(100, sseCount - opened);
    for (let index = 0; index < batch; index++) openSse();
    opened += batch;
    await waitFor(() => engine.connections().sse === opened, 30_000, `${opened} SSE streams open`).catch((error: Error) => {
      throw new Error(`${error.message}: ${JSON.stringify(engine.connections())}`);
    });
  }

  // WebSockets that subscribe from 0 and stop reading as soon as they are open.
  const openWs = async () => {
    const ws = new WebSocket(`ws+unix:${path}:/api/sync/ws`, { perMessageDeflate: false, headers: { host: 'localhost' } });
    ws.on('error', () => {});
    clients.push({ destroy: () => ws.terminate() });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_request, response) => reject(new Error(`upgrade answered ${response.statusCode}`)));
    });
    ws.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since: 0, ref: 1 }));
    (ws as unknown as { _socket: net.Socket })._socket.pause();
  };
  for (let batch = 0; batch < wsCount; batch += 50) {
    await Promise.all(Array.from({ length: Math.min(50, wsCount - batch) }, () => openWs()));
  }
  await waitFor(() => engine.connections().websocket === wsCount, 30_000, `${wsCount} WebSockets open`);
  await waitFor(() => engine.connections().live === sseCount + wsCount, 30_000, 'every connection subscribed');

  // Every connection's server-side queue is past half the bound: its catch-up waits for drain.
  const stalled = () => [...serverSockets].filter((socket) => socket.writableLength > MAX_BUFFERED / 2).length;
  await waitFor(() => stalled() === sseCount + wsCount, 30_000, 'every connection to stall').catch((error: Error) => {
    throw new Error(`${error.message}: ${stalled()} of ${sseCount + wsCount} stalled, ${serverSockets.size} server sockets`);
  });

  // A quiet second with everything stalled.
  const createdBefore = timeoutsCreated;
  const cpuBefore = process.cpuUsage();
  await sleep(1000);
  const cpu = process.cpuUsage(cpuBefore);
  const createdInWindow = timeoutsCreated - createdBefore - 1; // minus the sleep's own timer
  const refedAfter = refedTimeouts();
  const live = liveTimeouts.size;
  t.diagnostic(
    `quiet second with ${sseCount + wsCount} stalled connections: cpu user ${(cpu.user / 1000).toFixed(1)} ms, ` +
      `system ${(cpu.system / 1000).toFixed(1)} ms; timers created ${createdInWindow}`,
  );
  t.diagnostic(`ref'd Timeouts ${refedBefore} -> ${refedAfter}; live Timeout objects created since the baseline: ${live}`);
  assert.equal(stalled(), sseCount + wsCount, 'the connections are still stalled');
  assert.ok(refedAfter - refedBefore < 20, `ref'd timers grew from ${refedBefore} to ${refedAfter}`);
  assert.ok(live < 20, `${live} timers are alive for ${sseCount + wsCount} stalled connections`);
  assert.deepEqual(engine.connections(), { websocket: wsCount, sse: sseCount, live: sseCount + wsCount, admitting: 0 });

  // Going away releases them all.
  for (const client of clients) client.destroy();
  await waitFor(
    () => JSON.stringify(engine.connections()) === JSON.stringify({ websocket: 0, sse: 0, live: 0, admitting: 0 }),
    30_000,
    'every connection gone',
  );
});
