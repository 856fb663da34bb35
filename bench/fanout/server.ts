/**
 * Fan-out server process: alone in its process, it runs one of
 *   - `rhtmx`: the real engine (SQLite file, triggers, hub, WebSocket + SSE
 *     transports) behind node:http;
 *   - `raw-ws`: a bare `ws` server broadcasting pre-encoded bytes (the floor);
 *   - `raw-sse`: a bare node:http SSE server doing the same.
 * Write times are taken here, on the shared monotonic clock, at commit (our
 * engine) or right before the broadcast loop (floors), and collected after
 * the measurement so no reporting happens while clients are receiving.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import v8 from 'node:v8';
import { WebSocketServer } from 'ws';
import { nodeHandler } from '../../src/adapters/node.js';
import { EntityFilter, LiveBatch } from '../../src/core/hub.js';
import type { Change } from '../../src/core/protocol.js';
import { SyncEngine } from '../../src/engine.js';
import { SqliteStore } from '../../src/stores/sqlite/index.js';
import { now } from '../lib/clock.js';
import { serve } from '../lib/proc.js';
import { type BenchDb, freshDb, INSERT_ITEM, itemParams, makeItem } from '../lib/rows.js';

type Mode = 'rhtmx' | 'raw-ws' | 'raw-sse';

interface Running {
  mode: Mode;
  server: http.Server;
  /** Commit (or broadcast) time of each write, by seq. */
  writes: Map<number, number>;
  write(seq: number, kind: 'push' | 'sql'): Promise<void>;
  connections(): number;
  /** Bytes of the last live message sent (to show both sides send the same size). */
  lastMessageBytes: number;
  /** The SQLite file (our engine only), for writers in other processes. */
  dbPath?: string;
  stream?(rows: number, txSize: number): Promise<{ start: number; end: number; lastVersion: number }>;
  close(): Promise<void>;
}

let running: Running | null = null;

const FILTER = new EntityFilter(new Set(['items']));

/** Live HTML: one item's element, as the page shows it and the server pushes it. */
export function itemHtml(row: Record<string, unknown>): string {
  const text = (value: unknown) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<li id="items-${text(row.id)}" class="item${row.done ? ' done' : ''}"><span class="title">${text(row.title)}</span><p>${text(row.body)}</p><button hx-patch="/items/${text(row.id)}" hx-vals='{"done":true}'>done</button></li>`;
}

/** The list a page refetches: the newest 50 items, rendered as the page shows them. */
const LIST_SQL = 'SELECT id, seq, title, body, done, updated_at FROM items ORDER BY id DESC LIMIT 50';

/** Row `seq` as the hub logs it: a create of `makeItem(seq)` at version `seq` (with its fragment for live HTML). */
function itemChange(seq: number, html = false): Change {
  const item = makeItem(seq);
  const id = String(item.id);
  return {
    entity: 'items',
    id,
    entity_id: id,
    action: 'create',
    data: { ...item },
    version: seq,
    hlc: Date.now() * 4096,
    client_id: null,
    ...(html ? { dom_id: `items-${id}`, html: itemHtml(item as unknown as Record<string, unknown>) } : {}),
  };
}

/** Exactly the message our hub would send for rows `from` to `to - 1` (same encoder, same fields). */
function batchMessage(from: number, to: number, html = false): string {
  const changes: Change[] = [];
  for (let seq = from; seq < to; seq++) changes.push(itemChange(seq, html));
  return new LiveBatch(from - 1, to - 1, changes).messageFor(FILTER) as string;
}

/** The message for one row. */
const changeMessage = (seq: number, html = false): string => batchMessage(seq, seq + 1, html);

async function listen(server: http.Server): Promise<number> {
  server.listen(0, '127.0.0.1', 2048);
  await new Promise<void>((resolve) => server.once('listening', resolve));
  return (server.address() as AddressInfo).port;
}

async function startRhtmx(options: { pollMs?: number; render?: boolean }): Promise<Running> {
  const bench: BenchDb = freshDb();
  const store = new SqliteStore(bench.db, { pollMs: options.pollMs ?? 25 });
  const writes = new Map<number, number>();
  // A push commits inside store.push (better-sqlite3 is synchronous): the moment it returns is the commit.
  const push = store.push.bind(store);
  let pushSeq = 0;
  store.push = async (batch) => {
    const result = await push(batch);
    writes.set(pushSeq, now());
    return result;
  };
  const engine = new SyncEngine({
    db: store,
    entities: [options.render ? { name: 'items', render: (row) => itemHtml(row) } : 'items'],
  });
  await engine.ready;
  const list = bench.db.prepare(LIST_SQL);
  // The app's own list fragment, what an htmx page refetches on rhtmx:items:changed.
  const app = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.url !== '/items-fragment') return void res.writeHead(404).end();
    const rows = list.all() as Array<Record<string, unknown>>;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(`<ul data-rhtmx-live="items">${rows.map(itemHtml).join('')}</ul>`);
  };
  const server = http.createServer(nodeHandler(engine, app));
  engine.attach(server);
  const insert = bench.db.prepare(INSERT_ITEM);
  const state: Running = {
    mode: 'rhtmx',
    server,
    writes,
    dbPath: bench.path,
    lastMessageBytes: 0,
    async write(seq, kind) {
      const item = makeItem(seq);
      if (kind === 'push') {
        pushSeq = seq;
        const { id, ...data } = item;
        await engine.push('items', {
          client_id: 'bench-writer',
          changes: [{ mutation_id: seq, id: String(id), action: 'create', data }],
        });
      } else {
        // App code writing with its own SQL; notify() spares it the poll interval.
        insert.run(...itemParams(item));
        writes.set(seq, now());
        engine.notify();
      }
    },
    connections: () => {
      const counts = engine.connections();
      return Math.max(counts.live, counts.websocket);
    },
    async stream(rows, txSize) {
      // The app's writer: transactions of txSize rows, yielding to the event loop between them
      // (as a server handling requests would), telling the engine after each commit.
      const insertMany = bench.db.transaction((from: number, to: number) => {
        for (let i = from; i < to; i++) insert.run(...itemParams(makeItem(i)));
      });
      const start = now();
      for (let from = 1; from <= rows; from += txSize) {
        insertMany(from, Math.min(rows + 1, from + txSize));
        engine.notify();
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      const end = now();
      return { start, end, lastVersion: await engine.currentVersion() };
    },
    async close() {
      await engine.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      bench.dispose();
    },
  };
  state.lastMessageBytes = Buffer.byteLength(changeMessage(1, options.render));
  return state;
}

/** Bytes queued and not yet taken, per socket, above which the floor's writer waits. */
const FLOOR_BACKPRESSURE = 1024 * 1024;

function startRawWs(options: { html?: boolean }): Running {
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  const wss = new WebSocketServer({ server });
  const writes = new Map<number, number>();
  const bench: BenchDb = freshDb();
  const insert = bench.db.prepare(INSERT_ITEM);
  const state: Running = {
    mode: 'raw-ws',
    server,
    writes,
    lastMessageBytes: 0,
    async write(seq) {
      // Encoded once per write, as a broadcast that renders the row once would.
      const message = changeMessage(seq, options.html);
      state.lastMessageBytes = Buffer.byteLength(message);
      writes.set(seq, now());
      for (const client of wss.clients) client.send(message);
    },
    connections: () => wss.clients.size,
    /**
     * The throughput floor: raw better-sqlite3 inserts (no triggers), each
     * transaction's rows encoded once and broadcast to every socket, the writer
     * waiting while any socket holds more than 1 MiB unsent.
     */
    async stream(rows, txSize) {
      const insertMany = bench.db.transaction((from: number, to: number) => {
        for (let i = from; i < to; i++) insert.run(...itemParams(makeItem(i)));
      });
      const start = now();
      for (let from = 1; from <= rows; from += txSize) {
        const to = Math.min(rows + 1, from + txSize);
        insertMany(from, to);
        const message = batchMessage(from, to);
        for (const client of wss.clients) client.send(message);
        for (;;) {
          let queued = 0;
          for (const client of wss.clients) queued = Math.max(queued, client.bufferedAmount);
          if (queued <= FLOOR_BACKPRESSURE) break;
          await new Promise<void>((resolve) => setTimeout(resolve, 1));
        }
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      return { start, end: now(), lastVersion: rows };
    },
    async close() {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      bench.dispose();
    },
  };
  return state;
}

function startRawSse(): Running {
  const clients = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write('retry: 2000\n: connected\n\n');
    clients.add(res);
    req.on('close', () => clients.delete(res));
  });
  const writes = new Map<number, number>();
  const state: Running = {
    mode: 'raw-sse',
    server,
    writes,
    lastMessageBytes: 0,
    async write(seq) {
      const frame = Buffer.from(`id: ${seq}\ndata: ${changeMessage(seq)}\n\n`);
      state.lastMessageBytes = frame.byteLength;
      writes.set(seq, now());
      for (const res of clients) res.write(frame);
    },
    connections: () => clients.size,
    async close() {
      for (const res of clients) res.end();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return state;
}

/**
 * Grow V8's young generation to its cap and touch it, as any busy server's is
 * (objects that survive scavenges make V8 grow it): then the growth that the
 * first connections would cause is not counted as theirs, on either side.
 */
function primeHeap() {
  let keep: unknown[][] = [];
  for (let round = 0; round < 40; round++) {
    const batch: unknown[] = [];
    for (let i = 0; i < 20_000; i++) batch.push({ round, i, text: `x${i}` });
    keep.push(batch);
    if (keep.length > 8) keep = keep.slice(-8);
  }
  keep = [];
  return memory();
}

function memory() {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    gc();
  }
  const usage = process.memoryUsage();
  const spaces = Object.fromEntries(
    v8.getHeapSpaceStatistics().map((space) => [space.space_name, Math.round(space.physical_space_size / 1024)]),
  );
  return { spaces, rss: usage.rss, heapUsed: usage.heapUsed, external: usage.external, arrayBuffers: usage.arrayBuffers };
}

serve({
  async start(args: { mode: Mode; pollMs?: number; render?: boolean; html?: boolean }) {
    if (running) throw new Error('already started');
    running = args.mode === 'rhtmx' ? await startRhtmx(args) : args.mode === 'raw-ws' ? startRawWs(args) : startRawSse();
    const port = await listen(running.server);
    return { port, pid: process.pid, dbPath: running.dbPath };
  },
  async write(args: { seq: number; kind: 'push' | 'sql' }) {
    await running?.write(args.seq, args.kind);
    return null;
  },
  connections: () => running?.connections() ?? 0,
  /** This process's CPU time so far, µs (user + system). */
  cpu: () => {
    const usage = process.cpuUsage();
    return usage.user + usage.system;
  },
  writes: () => {
    const writes = running?.writes ?? new Map();
    const result = Object.fromEntries(writes);
    writes.clear();
    return { writes: result, messageBytes: running?.lastMessageBytes ?? 0 };
  },
  stream: async (args: { rows: number; txSize: number }) => {
    if (!running?.stream) throw new Error('stream needs the rhtmx or raw-ws server');
    return running.stream(args.rows, args.txSize);
  },
  memory,
  primeHeap,
  /** The floor: the same writer loop on a fresh file without triggers, engine or clients. */
  async rawInserts(args: { rows: number; txSize: number }) {
    const bench = freshDb();
    try {
      const insert = bench.db.prepare(INSERT_ITEM);
      const insertMany = bench.db.transaction((from: number, to: number) => {
        for (let i = from; i < to; i++) insert.run(...itemParams(makeItem(i)));
      });
      const start = now();
      for (let from = 1; from <= args.rows; from += args.txSize) {
        insertMany(from, Math.min(args.rows + 1, from + args.txSize));
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      return { ms: now() - start };
    } finally {
      bench.dispose();
    }
  },
  async stop() {
    await running?.close();
    running = null;
    return null;
  },
});
