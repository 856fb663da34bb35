/**
 * HTTP client process for the catch-up and push benchmarks (Node to Node,
 * never in the server's process).
 */
import { type Http, http } from '../../src/client/net/http.js';
import { now } from '../lib/clock.js';
import { serve } from '../lib/proc.js';
import { makeItem } from '../lib/rows.js';
import { loadPouch } from './peers.js';

interface PullPage {
  version: number;
  changes: Array<{ id: string; action: string; data: Record<string, unknown> | null }>;
  has_more: boolean;
  next?: string;
}

serve({
  /**
   * A fresh client's catch-up one page per request, as our client did before
   * streamed pulls (and as any client may): snapshot pages following `next`
   * tokens until `has_more` is false, each applied to a Map.
   */
  async pull(args: { base: string; entity: string; limit: number }) {
    const local = new Map<string, Record<string, unknown>>();
    const start = now();
    let url = `${args.base}/${args.entity}?since=0&limit=${args.limit}`;
    let pages = 0;
    for (;;) {
      const response = await fetch(url, { headers: { accept: 'application/json', 'accept-encoding': 'gzip' } });
      if (!response.ok) throw new Error(`pull ${response.status}: ${await response.text()}`);
      const page = (await response.json()) as PullPage;
      pages++;
      for (const change of page.changes) {
        if (change.data) local.set(change.id, change.data);
        else local.delete(change.id);
      }
      if (!page.has_more) break;
      if (!page.next) throw new Error('has_more without a snapshot token');
      url = `${args.base}/${args.entity}?since=0&limit=${args.limit}&snapshot=${encodeURIComponent(page.next)}`;
    }
    return { ms: now() - start, rows: local.size, pages };
  },

  /**
   * A fresh client's catch-up at the client's default settings: one streamed
   * pull read by the real client module (`http().lines`: each JSON line
   * parsed as it arrives), each page applied to a local store (a Map here;
   * IndexedDB is benchmark 6) while the next one is on the wire.
   */
  async stream(args: { base: string; entity: string }) {
    const local = new Map<string, Record<string, unknown>>();
    const start = now();
    const lines = http(args.base).lines as NonNullable<Http['lines']>;
    let pages = 0;
    for await (const page of lines<PullPage>(`/${args.entity}?since=0&stream=1`, new AbortController().signal)) {
      pages++;
      for (const change of page.changes) {
        if (change.data) local.set(change.id, change.data);
        else local.delete(change.id);
      }
      if (!page.has_more) break;
    }
    return { ms: now() - start, rows: local.size, pages };
  },

  /** PouchDB's own replication from express-pouchdb into a fresh in-memory database, default options. */
  async replicate(args: { url: string }) {
    const { PouchDB, Memory } = loadPouch();
    const local = new Memory(`local-${process.pid}-${Date.now()}`);
    const start = now();
    const result = await PouchDB.replicate(args.url, local);
    const ms = now() - start;
    const info = await local.info();
    await local.destroy();
    return { ms, rows: info.doc_count as number, docsWritten: result.docs_written as number };
  },

  /** The floor: one GET of every row as a plain JSON array, parsed. */
  async plain(args: { url: string }) {
    const start = now();
    const response = await fetch(args.url);
    const rows = (await response.json()) as unknown[];
    return { ms: now() - start, rows: rows.length };
  },

  /**
   * Push `total` mutations in batches of `batch` from `concurrency` clients
   * at once (each its own client id with increasing mutation ids, each
   * waiting for its previous answer, as our client's outbox does).
   */
  async push(args: {
    url: string;
    batch: number;
    total: number;
    concurrency: number;
    mode: 'create' | 'conflict';
    /** Rows already on the server (conflict mode updates ids 1..rows). */
    rows: number;
  }) {
    const statuses: Record<string, number> = {};
    let nextId = 0;
    const perClient = Math.ceil(args.total / args.concurrency);
    const start = now();
    const latencies: number[] = [];
    await Promise.all(
      Array.from({ length: args.concurrency }, async (_, client) => {
        const clientId = `bench-${process.pid}-${client}-${Date.now()}`;
        let mutationId = 0;
        for (let sent = 0; sent < perClient; sent += args.batch) {
          const changes = [];
          for (let i = 0; i < Math.min(args.batch, perClient - sent); i++) {
            mutationId++;
            const n = nextId++;
            if (args.mode === 'create') {
              const { id, ...data } = makeItem(args.rows + n + 1);
              changes.push({ mutation_id: mutationId, id: String(id), action: 'create', data });
            } else {
              const id = (n % args.rows) + 1;
              changes.push({ mutation_id: mutationId, id: String(id), action: 'update', data: { title: `edit ${n}` }, base_version: 0 });
            }
          }
          const sentAt = now();
          const response = await fetch(args.url, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ client_id: clientId, changes }),
          });
          const body = (await response.json()) as { results?: Array<{ status: string }> };
          latencies.push(now() - sentAt);
          if (!response.ok || !body.results) throw new Error(`push ${response.status}: ${JSON.stringify(body).slice(0, 300)}`);
          for (const result of body.results) statuses[result.status] = (statuses[result.status] ?? 0) + 1;
        }
      }),
    );
    return { ms: now() - start, mutations: Object.values(statuses).reduce((a, b) => a + b, 0), statuses, latencies };
  },
});
