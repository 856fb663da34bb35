/**
 * Server process for the hostile benchmark: the real engine (SQLite file with
 * a `todos` table, triggers, hub, HTTP pull, WebSocket and SSE transports,
 * default limits) behind node:http, alone in its process.
 *
 * Instrumentation only, nothing the engine does is changed:
 * - every close the server starts on a WebSocket (`ws`'s `close(code)`,
 *   called by the engine on 4008 / 4029 and others) is counted by code and
 *   reported as an event (`ws-close`), so the orchestrator can tell the
 *   hostile client, which never reads its socket and so never sees the close
 *   frame, to reconnect at once;
 * - event-stream responses are tracked so the suite can report how many
 *   stalled streams are still open and how many bytes wait in their queues.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { Session } from 'node:inspector/promises';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { WebSocket } from 'ws';
import { nodeHandler } from '../../src/adapters/node.js';
import { SyncEngine } from '../../src/engine.js';
import { now } from '../lib/clock.js';
import { emit, serve } from '../lib/proc.js';

const TODOS_SQL = `CREATE TABLE todos (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  done BOOLEAN NOT NULL DEFAULT 0,
  updated_at TEXT
)`;

const FILLER = 'Buy oat milk, call the plumber about the kitchen sink, renew the library card and water the plants ';

/** A todo title of exactly 100 characters. */
function todoTitle(i: number): string {
  const head = `Todo ${i}: `;
  return (head + FILLER + FILLER).slice(0, 100);
}

interface Running {
  server: http.Server;
  engine: SyncEngine;
  db: Database.Database;
  dir: string;
  nextId: number;
}

let running: Running | null = null;
let loop: IntervalHistogram | null = null;
let profiler: Session | null = null;
/** Close codes the server sent, by code. */
let closes: Record<string, number> = {};
/** Upgrade sockets → the `n` query parameter the hostile client tagged its connection with. */
const tags = new WeakMap<Socket, number>();
/** Open event-stream responses. */
const streams = new Set<http.ServerResponse>();

// Count (and announce) every close the server side starts. Same `ws` module the engine uses.
const proto = WebSocket.prototype as unknown as {
  close(code?: number, reason?: string | Buffer): void;
};
const originalClose = proto.close;
proto.close = function (this: WebSocket & { _isServer?: boolean; _socket?: Socket }, code?: number, reason?: string | Buffer) {
  if (this._isServer && this.readyState === WebSocket.OPEN) {
    const key = String(code ?? 1005);
    closes[key] = (closes[key] ?? 0) + 1;
    const n = this._socket ? tags.get(this._socket) : undefined;
    emit('ws-close', { n, code: code ?? 1005 });
  }
  return originalClose.call(this, code, reason);
};

function insertTodos(db: Database.Database, from: number, to: number): void {
  const insert = db.prepare('INSERT INTO todos (id, title, done, updated_at) VALUES (?, ?, ?, ?)');
  const many = db.transaction((a: number, b: number) => {
    for (let i = a; i < b; i++)
      insert.run(`t${i}`, todoTitle(i), i % 3 === 0 ? 1 : 0, new Date(1_700_000_000_000 + i * 1000).toISOString());
  });
  many(from, to);
}

serve({
  async start(args: { rows: number }) {
    if (running) throw new Error('already started');
    const dir = mkdtempSync(join(tmpdir(), 'rhtmx-bench-hostile-'));
    const db = new Database(join(dir, 'hostile.db'));
    db.pragma('journal_mode = WAL');
    db.exec(TODOS_SQL);
    // Default limits, default heartbeats: what an app gets without configuring anything.
    const engine = new SyncEngine({ db, entities: ['todos'] });
    await engine.ready;
    // Through the triggers, like any app write: the change log holds every row.
    for (let from = 1; from <= args.rows; from += 1000) insertTodos(db, from, Math.min(args.rows + 1, from + 1000));
    const handler = nodeHandler(engine);
    const server = http.createServer((req, res) => {
      if ((req.url ?? '').startsWith('/api/sync/events')) {
        streams.add(res);
        res.once('close', () => streams.delete(res));
      }
      handler(req, res);
    });
    server.keepAliveTimeout = 60_000;
    server.on('upgrade', (req: http.IncomingMessage, socket: Socket) => {
      const n = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('n'));
      if (Number.isFinite(n)) tags.set(socket, n);
    });
    engine.attach(server);
    server.listen(0, '127.0.0.1', 4096);
    await new Promise<void>((resolve) => server.once('listening', resolve));
    running = { server, engine, db, dir, nextId: args.rows + 1 };
    return { port: (server.address() as AddressInfo).port, pid: process.pid, version: await engine.currentVersion() };
  },

  version: async () => (running ? running.engine.currentVersion() : 0),

  /** Two full GCs (the worker runs with --expose-gc), so a measurement window does not pay for earlier garbage. */
  gc: () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    gc?.();
    return gc !== undefined;
  },

  /** Process CPU time (all threads: main, libuv pool, GC), µs, and the clock. */
  cpu: () => ({ at: now(), ...process.cpuUsage() }),

  memory: () => {
    const usage = process.memoryUsage();
    return { rss: usage.rss, heapUsed: usage.heapUsed, external: usage.external, arrayBuffers: usage.arrayBuffers };
  },

  /** Start measuring how long the event loop is held (resolution 10 ms: a timer sees each block). */
  loopStart: () => {
    loop?.disable();
    loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    return null;
  },
  /** Event-loop delay since `loopStart`, ms. */
  loopStop: () => {
    if (!loop) return null;
    loop.disable();
    const result = { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6, mean: loop.mean / 1e6 };
    loop = null;
    return result;
  },

  /** CPU profile of this process from now to `profileStop` (the suite does it for BENCH_HOSTILE_PROFILE=<phase>). */
  profileStart: async () => {
    profiler = new Session();
    profiler.connect();
    await profiler.post('Profiler.enable');
    await profiler.post('Profiler.setSamplingInterval', { interval: 200 });
    await profiler.post('Profiler.start');
    return null;
  },
  profileStop: async (args: { file: string }) => {
    if (!profiler) return null;
    const { profile } = await profiler.post('Profiler.stop');
    profiler.disconnect();
    profiler = null;
    mkdirSync(dirname(args.file), { recursive: true });
    writeFileSync(args.file, JSON.stringify(profile));
    return args.file;
  },

  /** Close codes sent since the last call. */
  closes: () => {
    const result = closes;
    closes = {};
    return result;
  },

  /** Open event streams, bytes waiting in their queues (Node's, beyond the kernel's), engine counts. */
  streams: () => {
    let queued = 0;
    let stalled = 0;
    for (const res of streams) {
      queued += res.writableLength;
      if (res.writableLength > 0) stalled++;
    }
    return { open: streams.size, stalled, queuedBytes: queued, engine: running?.engine.connections() };
  },

  /** App writes: `batches` transactions of `rows` new todos each, each fanned out before the next. */
  async write(args: { rows: number; batches: number }) {
    if (!running) throw new Error('not started');
    const start = now();
    for (let b = 0; b < args.batches; b++) {
      insertTodos(running.db, running.nextId, running.nextId + args.rows);
      running.nextId += args.rows;
      running.engine.notify();
      await running.engine.fannedOut(await running.engine.currentVersion());
    }
    return { ms: now() - start, version: await running.engine.currentVersion() };
  },

  async stop() {
    if (!running) return null;
    const { server, engine, db, dir } = running;
    running = null;
    server.closeAllConnections();
    for (const res of streams) res.destroy();
    await engine.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    try {
      db.close();
    } catch {}
    rmSync(dir, { recursive: true, force: true });
    return null;
  },
});
