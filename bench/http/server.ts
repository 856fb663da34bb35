/**
 * HTTP server process for the catch-up, push and browser benchmarks. One of:
 *   - `rhtmx`: the engine on a SQLite file preloaded with `rows` items;
 *   - `pouch`: express-pouchdb over PouchDB's memory adapter, preloaded
 *     with the same rows as documents;
 *   - `plain`: the same rows as one pre-encoded JSON array (the fetch +
 *     parse floor);
 *   - `push-floor`: a hand-written exactly-once push endpoint on raw
 *     better-sqlite3 (the push floor).
 * Each also serves `/bench/*` files for the browser page.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { nodeHandler } from '../../src/adapters/node.js';
import type { SyncStrategy } from '../../src/core/config.js';
import { SyncEngine } from '../../src/engine.js';
import { serve } from '../lib/proc.js';
import { type BenchDb, freshDb, INSERT_ITEM, type Item, itemParams, makeItem } from '../lib/rows.js';
import { loadPouch } from './peers.js';

let server: http.Server | null = null;
let cleanup: (() => Promise<void>) | null = null;
/** Static files for the browser page: path → [content type, body]. */
const files = new Map<string, [string, Buffer]>();

function staticFile(req: http.IncomingMessage, res: http.ServerResponse): boolean {
  const file = files.get((req.url ?? '').split('?')[0] ?? '');
  if (!file) return false;
  res.writeHead(200, { 'content-type': file[0], 'cache-control': 'no-store' });
  res.end(file[1]);
  return true;
}

async function listen(handler: http.RequestListener): Promise<http.Server> {
  const created = http.createServer((req, res) => {
    if (!staticFile(req, res)) handler(req, res);
  });
  created.keepAliveTimeout = 60_000;
  created.listen(0, '127.0.0.1', 2048);
  await new Promise<void>((resolve) => created.once('listening', resolve));
  server = created;
  return created;
}

function fill(bench: BenchDb, rows: number): void {
  const insert = bench.db.prepare(INSERT_ITEM);
  const insertMany = bench.db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) insert.run(...itemParams(makeItem(i)));
  });
  for (let from = 1; from <= rows; from += 1000) insertMany(from, Math.min(rows + 1, from + 1000));
}

async function startRhtmx(args: { rows: number; strategy?: SyncStrategy }): Promise<http.Server> {
  const bench = freshDb();
  const engine = new SyncEngine({ db: bench.db, entities: ['items'], strategy: args.strategy });
  await engine.ready;
  // Through the triggers, like any app write: the log holds them too.
  fill(bench, args.rows);
  const created = await listen(nodeHandler(engine));
  engine.attach(created);
  cleanup = async () => {
    await engine.close();
    bench.dispose();
  };
  return created;
}

async function startPouch(args: { rows: number }): Promise<http.Server> {
  const { Memory, expressPouchdb } = loadPouch();
  const app = expressPouchdb(Memory, { mode: 'minimumForPouchDB', inMemoryConfig: true, logPath: '/dev/null' });
  const db = new Memory('items');
  for (let from = 1; from <= args.rows; from += 1000) {
    const docs = [];
    for (let i = from; i < Math.min(args.rows + 1, from + 1000); i++) {
      const { id, ...fields } = makeItem(i);
      docs.push({ _id: String(id), ...fields });
    }
    await db.bulkDocs(docs);
  }
  const created = await listen(app);
  cleanup = async () => {
    await db.destroy();
  };
  return created;
}

async function startPlain(args: { rows: number }): Promise<http.Server> {
  const rows: Item[] = [];
  for (let i = 1; i <= args.rows; i++) rows.push(makeItem(i));
  const body = Buffer.from(JSON.stringify(rows));
  return listen((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.byteLength });
    res.end(body);
  });
}

/** The least a server must do for exactly-once pushes: one transaction with the rows and the client's last mutation id. */
async function startPushFloor(args: { rows: number }): Promise<http.Server> {
  const bench = freshDb();
  const db = bench.db;
  db.exec('ALTER TABLE items ADD COLUMN version INTEGER NOT NULL DEFAULT 1');
  db.exec('CREATE TABLE clients (client_id TEXT PRIMARY KEY, last_mutation_id INTEGER NOT NULL)');
  fill(bench, args.rows);
  const last = db.prepare('SELECT last_mutation_id FROM clients WHERE client_id = ?').pluck();
  const save = db.prepare(
    'INSERT INTO clients (client_id, last_mutation_id) VALUES (?, ?) ON CONFLICT (client_id) DO UPDATE SET last_mutation_id = excluded.last_mutation_id',
  );
  const upsert = db.prepare(
    `INSERT INTO items (id, seq, title, body, done, updated_at) VALUES (?, ?, ?, ?, ?, ?)
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, title = excluded.title, body = excluded.body, done = excluded.done,
       updated_at = excluded.updated_at, version = version + 1`,
  );
  const current = db.prepare('SELECT id, seq, title, body, done, updated_at, version FROM items WHERE id = ?');
  const apply = db.transaction((body: { client_id: string; changes: any[] }) => {
    const applied = (last.get(body.client_id) as number | undefined) ?? -1;
    let highest = applied;
    const results = body.changes.map((change) => {
      if (change.mutation_id <= applied) return { mutation_id: change.mutation_id, id: change.id, status: 'applied', duplicate: true };
      highest = Math.max(highest, change.mutation_id);
      if (change.base_version !== undefined) {
        const row = current.get(Number(change.id)) as { version: number } | undefined;
        if (row && row.version > change.base_version) {
          return { mutation_id: change.mutation_id, id: change.id, status: 'conflict', row, server_version: row.version };
        }
      }
      const data = { ...makeItem(Number(change.id)), ...change.data };
      upsert.run(Number(change.id), data.seq, data.title, data.body, data.done ? 1 : 0, data.updated_at);
      return { mutation_id: change.mutation_id, id: change.id, status: 'applied' };
    });
    if (highest > applied) save.run(body.client_id, highest);
    return results;
  });
  cleanup = async () => bench.dispose();
  return listen((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      const results = apply(body);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ results }));
    });
  });
}

serve({
  async start(args: { mode: 'rhtmx' | 'pouch' | 'plain' | 'push-floor'; rows?: number; strategy?: SyncStrategy }) {
    if (server) throw new Error('already started');
    const rows = args.rows ?? 0;
    const created =
      args.mode === 'rhtmx'
        ? await startRhtmx({ rows, strategy: args.strategy })
        : args.mode === 'pouch'
          ? await startPouch({ rows })
          : args.mode === 'plain'
            ? await startPlain({ rows })
            : await startPushFloor({ rows });
    return { port: (created.address() as AddressInfo).port };
  },
  /** Serve a file at `path` (the browser page and scripts). */
  file(args: { path: string; type: string; text?: string; from?: string }) {
    files.set(args.path, [args.type, args.text !== undefined ? Buffer.from(args.text) : readFileSync(args.from as string)]);
    return null;
  },
  async stop() {
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server?.close(() => resolve()));
    }
    await cleanup?.();
    server = null;
    cleanup = null;
    return null;
  },
});
