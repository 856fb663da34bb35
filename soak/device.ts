/**
 * Device: a Node client running the browser client's own sync code, so a
 * soak can run dozens of them where a few Chromium pages would already fill
 * the machine. The outbox and its flusher, the replica's pull and live-batch
 * rules (cursors, rebase, snapshot pages), the push gate and request/reply by
 * `ref` are src/client's modules, run over the memory store
 * (src/client/local/memory.ts) instead of IndexedDB.
 *
 * What the device supplies, as the browser does for the client:
 * - durability: every commit of the memory store is journaled (a JSON-lines
 *   file, or memory) before it resolves; a reload (page reload, tab crash)
 *   closes the store, throws every in-memory structure away and replays the
 *   journal into a new one;
 * - the network: Node's fetch and `ws`, SSE read from a fetch body (resuming
 *   with `Last-Event-ID` when the stream drops, as EventSource does);
 * - the connection loop, as src/client/net/connection.ts: on every
 *   (re)connect an HTTP pull from the cursor, then live changes from that
 *   cursor over a WebSocket (`subscribe` with `since`) or SSE (`since`),
 *   reconnecting with full-jitter backoff.
 *
 * What the soak adds: random offline periods (in-flight requests fail, as a
 * real network loss would make them), abrupt disconnects, reloads, a random
 * node on every reconnect, and the ledger of every answer it received.
 */

import { randomUUID } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import WebSocket from 'ws';
import { type MemoryDb, memoryDb, type Write } from '../src/client/local/memory.js';
import {
  type Cursor,
  clientIdIn,
  cursorKey,
  liveApplier,
  type OutboxEntry,
  publicRow,
  pullEntity,
  type ReplicaHost,
} from '../src/client/local/replica.js';
import { META, OUTBOX } from '../src/client/local/store.js';
import { type Http, http, SyncHttpError } from '../src/client/net/http.js';
import { rpc } from '../src/client/net/rpc.js';
import type { Flusher, SendAs } from '../src/client/queue/flusher.js';
import { enqueue, outboxFlusher, sender } from '../src/client/queue/outbox.js';
import type { ClientMessage, LiveChangeMessage, PushChange, PushResult, Row, ServerMessage } from '../src/core/protocol.js';
import type { BrowserBehaviour } from './browsers.js';
import type { Ledger, WriteAction } from './ledger.js';
import { createShare, type Random, sleep } from './random.js';

const ENTITY = 'todos';
/** HTTP requests give up after this (the browser client: 60 s; the soak wants failures found sooner). */
const REQUEST_MS = 15_000;
/** A WebSocket request without a reply counts as a network failure after this. */
const REPLY_MS = 10_000;
/** Journal lines before the store is rewritten as one snapshot. */
const COMPACT_AFTER = 2_000;

/**
 * Where a device's store survives its reloads: a snapshot plus a journal of
 * committed transactions, one JSON line of writes each, in files or in memory.
 */
class Journal {
  private memorySnapshot: string | null = null;
  private memoryLines: string[] = [];
  private lines = 0;

  constructor(private readonly path: string | null) {
    this.dispose();
  }

  /** Every commit that survived, oldest first (the snapshot counts as one). */
  load(): Write[][] {
    const read = (path: string) => (existsSync(path) ? readFileSync(path, 'utf8').split('\n') : []);
    const snapshot = this.path ? read(`${this.path}.snapshot`)[0] : this.memorySnapshot;
    const commits: Write[][] = snapshot ? [JSON.parse(snapshot) as Write[]] : [];
    this.lines = 0;
    for (const line of this.path ? read(this.path) : this.memoryLines) {
      if (!line) continue;
      try {
        commits.push(JSON.parse(line) as Write[]);
      } catch {
        break; // a torn last line: that transaction never completed
      }
      this.lines++;
    }
    return commits;
  }

  commit(writes: Write[], db: MemoryDb): void {
    const line = JSON.stringify(writes);
    if (this.path) appendFileSync(this.path, `${line}\n`);
    else this.memoryLines.push(line);
    if (++this.lines < COMPACT_AFTER) return;
    const snapshot = JSON.stringify(db.dump());
    if (this.path) {
      writeFileSync(`${this.path}.snapshot.tmp`, snapshot);
      renameSync(`${this.path}.snapshot.tmp`, `${this.path}.snapshot`);
      writeFileSync(this.path, '');
    } else {
      this.memorySnapshot = snapshot;
      this.memoryLines = [];
    }
    this.lines = 0;
  }

  dispose(): void {
    if (!this.path) return;
    rmSync(`${this.path}.snapshot`, { force: true });
    rmSync(this.path, { force: true });
  }
}

/** How often a device does what, per action of its loop: what a browser page does (browsers.ts), plus disconnects. */
export interface DeviceBehaviour extends BrowserBehaviour {
  /** Probability per action of dropping the connection abruptly. */
  disconnect: number;
  /** Extra delay of HTTP push answers, ms (uniform): a slow path for the answer while the live stream runs ahead. */
  answerDelayMs: [number, number];
}

export const DEFAULT_BEHAVIOUR: DeviceBehaviour = {
  thinkMs: [40, 400],
  offline: 0.02,
  offlineMs: [300, 4000],
  disconnect: 0.02,
  reload: 0.01,
  tableRows: 20,
  answerDelayMs: [0, 300],
};

export interface DeviceOptions {
  name: string;
  /** Base URLs of every server node (`http://127.0.0.1:port`); a random one is used on each (re)connect. */
  nodes: readonly string[];
  ledger: Ledger;
  random: Random;
  /** Journal file; null keeps the durable store in memory. */
  journalPath: string | null;
  /** `random` picks per connection. */
  transport: 'websocket' | 'sse' | 'random';
  behaviour?: DeviceBehaviour;
  /** Upper bound of the reconnect backoff (the browser client's is 30 s). */
  maxBackoffMs?: number;
  /**
   * Apply no server change (live batch, pull page) while a push waits for its
   * answer, and apply them after the answer is settled, as the browser client
   * does (the push gate, src/client/queue/flusher.ts). Default true; false is the client
   * before that fix, whose answers could overwrite newer changes of the row
   * (the soak found it: docs/reliability.md).
   */
  holdDuringPush?: boolean;
}

export interface DeviceStats {
  mutations: number;
  reloads: number;
  offlinePeriods: number;
  disconnects: number;
  connects: number;
  pulls: number;
  liveBatches: number;
  pushes: number;
  conflicts: number;
  /** Answers for mutation ids the ledger never issued (must stay 0). */
  unknownAnswers: number;
  /** Pushes that got no answer, by reason (`no reply`, `HTTP 503`, `fetch failed`, `offline`...). */
  pushFailures: Record<string, number>;
  /** Milliseconds from sending a push to its answer, for every answered push. */
  pushMs: number[];
}

/** One page's life: the store it opened and the client code running on it, until a reload replaces it. */
interface Page {
  db: MemoryDb;
  /** What pulls and live batches run on: the store, the push gate (or none, without `holdDuringPush`). */
  replica: ReplicaHost;
  flush: Flusher;
  live: ReturnType<typeof liveApplier>;
  /** False once a reload or `stop()` ended this page: its late answers are never seen. */
  alive: () => boolean;
}

type LiveMode = 'websocket' | 'sse' | null;

export class Device {
  readonly name: string;
  readonly stats: DeviceStats = {
    mutations: 0,
    reloads: 0,
    offlinePeriods: 0,
    disconnects: 0,
    connects: 0,
    pulls: 0,
    liveBatches: 0,
    pushes: 0,
    conflicts: 0,
    unknownAnswers: 0,
    pushFailures: {},
    pushMs: [],
  };
  private readonly journal: Journal;
  private readonly random: Random;
  private readonly behaviour: DeviceBehaviour;
  private readonly maxBackoffMs: number;
  private page!: Page;
  /** Bumped by every reload and by `stop()`: the page it ended is dead. */
  private epoch = 0;
  /** Bumped by every (re)connect: callbacks of an abandoned connection do nothing. */
  private generation = 0;
  private online = true;
  private stopped = false;
  /** Aborted when the network goes away or the device reloads: every request in flight fails. */
  private net = new AbortController();
  private node: string | null = null;
  private socket: WebSocket | null = null;
  private sse: AbortController | null = null;
  private live: LiveMode = null;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly calls = rpc<ClientMessage, ServerMessage>(REPLY_MS);

  constructor(private readonly options: DeviceOptions) {
    this.name = options.name;
    this.random = options.random;
    this.behaviour = options.behaviour ?? DEFAULT_BEHAVIOUR;
    this.maxBackoffMs = options.maxBackoffMs ?? 5_000;
    this.journal = new Journal(options.journalPath);
    this.boot();
  }

  /** Connect (and keep reconnecting) until `stop()`. */
  start(): void {
    this.connect();
  }

  /** The device's own random life: writes, offline periods, disconnects and reloads until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const { thinkMs, offline, offlineMs, disconnect, reload } = this.behaviour;
    while (!signal.aborted && !this.stopped) {
      await sleep(this.random.int(thinkMs[0], thinkMs[1]), signal);
      if (signal.aborted || this.stopped) break;
      const roll = this.random.next();
      if (roll < offline) {
        this.stats.offlinePeriods++;
        this.setOnline(false);
        await sleep(this.random.int(offlineMs[0], offlineMs[1]), signal);
        this.setOnline(true);
      } else if (roll < offline + disconnect) {
        this.stats.disconnects++;
        this.disconnect();
      } else if (roll < offline + disconnect + reload) {
        this.reload();
      } else {
        await this.mutateRandomly();
      }
    }
  }

  /** Everything back to normal for the final drain: online, connected now. */
  settle(): void {
    if (!this.online) this.setOnline(true);
    else if (!this.live) {
      this.attempt = 0;
      this.connect();
    }
  }

  /** Rows as the app would read them (bookkeeping fields removed), in id order. */
  rows(): Row[] {
    return [...this.page.db.peek(ENTITY).values()]
      .map((row) => publicRow(row as Row & { id: string }) as Row)
      .sort((a, b) => (String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0));
  }

  /** The store's view of one row, for diagnosing a divergence: stored row, cursor, pending mutations. */
  describe(id: string): string {
    const { db } = this.page;
    const pending = [...(db.peek(OUTBOX).values() as Iterable<OutboxEntry>)].filter((entry) => entry.id === id);
    return JSON.stringify({
      row: db.peek(ENTITY).get(id) ?? null,
      cursor: this.cursorNow() ?? null,
      pending,
      node: this.node,
      live: this.live,
    });
  }

  /** Mutations the server has not answered yet. */
  pendingCount(): number {
    return this.page.db.peek(OUTBOX).size;
  }

  /** Whether live delivery is running (WebSocket subscribed or SSE stream open). */
  isLive(): boolean {
    return this.live !== null;
  }

  cursor(): number {
    return this.cursorNow()?.v ?? 0;
  }

  /** Go offline (in-flight requests fail, nothing is sent) or back online (reconnect at once). */
  setOnline(online: boolean): void {
    if (online === this.online) return;
    this.online = online;
    if (!online) {
      this.drop();
      this.net.abort();
      this.net = new AbortController();
      return;
    }
    this.attempt = 0;
    this.connect();
  }

  /** Drop the connection as a network blip would; the device reconnects with backoff. */
  disconnect(): void {
    if (this.socket) this.socket.terminate();
    else if (this.sse) this.sse.abort();
  }

  /** Like a page reload: every in-memory structure is dropped and rebuilt from the durable store. */
  reload(): void {
    this.stats.reloads++;
    this.drop();
    this.net.abort();
    this.net = new AbortController();
    this.attempt = 0;
    this.boot();
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.epoch++;
    this.page.db.close();
    this.drop();
    this.net.abort();
  }

  dispose(): void {
    this.stop();
    this.journal.dispose();
  }

  // ------------------------------------------------------------ the page

  /** Open the durable store and start the client code on it, as a page load does (the page before it is gone). */
  private boot(): void {
    this.page?.db.close();
    const epoch = ++this.epoch;
    const alive = () => epoch === this.epoch && !this.stopped;
    const db: MemoryDb = memoryDb(this.journal.load(), (writes) => this.journal.commit(writes, db));
    const flush = outboxFlusher({
      db,
      send: (entity, changes, as) => this.push(entity, changes, as, alive),
      integerKey: async () => false,
      changed: () => {},
      conflict: () => {
        this.stats.conflicts++;
      },
      refetch: () => this.disconnect(),
      online: () => this.online && alive(),
      error: () => {},
      log: () => {},
    });
    const hold = this.options.holdDuringPush !== false;
    const replica: ReplicaHost = { db, idle: () => (hold ? flush.idle() : Promise.resolve()), changed: () => {} };
    // A batch fails only when the page is gone (its store closed); a live page reconnects and pulls it again.
    const live = liveApplier(replica, [ENTITY], () => alive() && this.retry());
    this.page = { db, replica, flush, live, alive };
    // Made on the first boot, kept by every later one.
    db.write([META], clientIdIn).catch(() => {});
  }

  private cursorNow(): Cursor | undefined {
    return this.page.db.peek(META).get(cursorKey(ENTITY)) as Cursor | undefined;
  }

  /** One random create, update or delete; the table is steered towards `tableRows` rows so writes collide. */
  async mutateRandomly(): Promise<void> {
    const ids = [...this.page.db.peek(ENTITY).keys()] as string[];
    const roll = this.random.next();
    const creates = createShare(ids.length, this.behaviour.tableRows);
    if (ids.length === 0 || roll < creates) return this.mutate('create', randomUUID(), { done: false });
    const id = this.random.pick(ids) as string;
    if (roll < creates + 0.25) return this.mutate('delete', id, null);
    return this.mutate('update', id, { done: this.random.chance(0.5) });
  }

  /** Queue a write durably (the browser client's `push`); creates and updates get a fresh tag as title. */
  private async mutate(action: WriteAction, id: string, data: Row | null): Promise<void> {
    const { ledger } = this.options;
    const tag = ledger.nextTag(this.name);
    const record = ledger.issue({ participant: this.name, kind: 'device', tag, id, action, mutationId: null });
    const { page } = this;
    let entry: OutboxEntry;
    try {
      entry = await enqueue(page.db, ENTITY, { id, action, data: data && { ...data, title: tag } });
    } catch {
      return; // reloaded meanwhile: the write never became durable, and was never sent
    }
    ledger.bind(record, entry.mutation_id);
    this.stats.mutations++;
    void page.flush();
  }

  // ------------------------------------------------------------- network

  /** The sync routes of `node` over Node's fetch, failing as the network does (offline, reload, 15 s). */
  private api(node: string): Http {
    return http(`${node}/api/sync`, async (url, init) => {
      if (!this.online) throw new Error('offline');
      const signals = [this.net.signal, AbortSignal.timeout(REQUEST_MS), ...(init?.signal ? [init.signal] : [])];
      const response = await fetch(url, { ...init, signal: AbortSignal.any(signals) });
      if (init?.method !== 'POST') this.stats.pulls++;
      else {
        // The answer travels on its own connection, the live stream on another: it may arrive late.
        const [least, most] = this.behaviour.answerDelayMs;
        if (most > 0) await sleep(this.random.int(least, most));
      }
      return response;
    });
  }

  /** The client's sender, measured, with every answer a live page receives entered in the ledger. */
  private async push(entity: string, changes: PushChange[], as: SendAs, alive: () => boolean): Promise<PushResult[]> {
    this.stats.pushes++;
    const sent = Date.now();
    const node = this.node ?? (this.random.pick(this.options.nodes) as string);
    try {
      const results = await sender(this.api(node), (message) => this.request(message))(entity, changes, as);
      this.stats.pushMs.push(Date.now() - sent);
      // Reloaded meanwhile: this page is gone and never saw the answer.
      if (!alive()) return results;
      for (const { mutation_id, status, duplicate, version } of results) {
        if (mutation_id === undefined) continue;
        const known = this.options.ledger.answer(this.name, mutation_id, { status, duplicate: duplicate === true, version });
        if (!known) this.stats.unknownAnswers++;
      }
      return results;
    } catch (error) {
      if (!(error instanceof SyncHttpError && error.refused)) {
        const reason = (error as Error).message.replace(/\s+/g, ' ').slice(0, 60);
        this.stats.pushFailures[reason] = (this.stats.pushFailures[reason] ?? 0) + 1;
      }
      throw error;
    }
  }

  /** Send on the subscribed WebSocket and await the reply (rpc.ts); null without a live socket. */
  private request(message: ClientMessage): Promise<ServerMessage | null> | null {
    return this.live === 'websocket' && this.socket ? this.calls.request(this.socket, message) : null;
  }

  /** As the browser's catch-up: live batches may apply again, then the pull. */
  private catchUp(node: string): Promise<number> {
    this.page.live.resume();
    return pullEntity(this.page.replica, this.api(node), ENTITY, () => {});
  }

  private onChange(message: LiveChangeMessage): void {
    this.stats.liveBatches++;
    this.page.live.apply(message);
  }

  private backoff(attempt: number): number {
    return this.random.next() * Math.min(this.maxBackoffMs, 500 * 2 ** attempt);
  }

  private drop(): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    this.socket?.terminate();
    this.sse?.abort();
    this.socket = null;
    this.sse = null;
    this.live = null;
    this.calls.close();
  }

  private retry(): void {
    this.drop();
    this.retryTimer = setTimeout(() => this.connect(), this.backoff(this.attempt++));
  }

  private connect(): void {
    this.drop();
    if (!this.online || this.stopped) return;
    const node = this.random.pick(this.options.nodes) as string;
    this.node = node;
    this.stats.connects++;
    const generation = this.generation;
    const transport = this.options.transport === 'random' ? (this.random.chance(0.5) ? 'websocket' : 'sse') : this.options.transport;
    if (transport === 'websocket') this.openSocket(generation, node);
    else void this.openEvents(generation, node);
  }

  private openSocket(generation: number, node: string): void {
    const socket = new WebSocket(`${node.replace(/^http/, 'ws')}/api/sync/ws?protocol=2`, { handshakeTimeout: 5_000 });
    this.socket = socket;
    socket.on('open', () => {
      this.catchUp(node).then(
        (since) => {
          if (generation === this.generation) socket.send(JSON.stringify({ type: 'subscribe', entities: [ENTITY], since }));
        },
        () => {
          if (generation === this.generation) this.retry();
        },
      );
    });
    socket.on('message', (data) => {
      // A socket we have let go of may still deliver: its batches must not move the cursor.
      if (generation !== this.generation) return;
      const message = JSON.parse(String(data)) as ServerMessage;
      if (message.type === 'change') this.onChange(message);
      else if (message.type === 'subscribed') {
        this.live = 'websocket';
        this.attempt = 0;
        void this.page.flush();
      } else this.calls.settle(message);
    });
    socket.on('close', () => {
      if (generation === this.generation) this.retry();
    });
    socket.on('error', () => {
      // `close` follows and reconnects.
    });
  }

  /** SSE as EventSource does it: resume with Last-Event-ID after a drop, pull again on every reopen. */
  private async openEvents(generation: number, node: string): Promise<void> {
    let since: number;
    try {
      since = await this.catchUp(node);
    } catch {
      if (generation === this.generation) this.retry();
      return;
    }
    if (generation !== this.generation) return;
    const controller = new AbortController();
    this.sse = controller;
    let lastId: string | null = null;
    let opened = false;
    let failures = 0;
    while (generation === this.generation) {
      try {
        const url: string = `${node}/api/sync/events?protocol=2&entities=${ENTITY}${lastId ? '' : `&since=${since}`}`;
        const response: Response = await fetch(url, {
          headers: lastId ? { 'last-event-id': lastId } : {},
          signal: AbortSignal.any([controller.signal, this.net.signal]),
        });
        if (!response.ok || !response.body) throw new Error(`SSE: HTTP ${response.status}`);
        if (generation !== this.generation) return;
        // Reopened by itself: pull anyway, as the browser client does.
        if (opened) this.catchUp(node).catch(() => {});
        opened = true;
        failures = 0;
        this.live = 'sse';
        this.attempt = 0;
        void this.page.flush();
        for await (const event of readEvents(response.body)) {
          if (generation !== this.generation) return;
          if (event.id) lastId = event.id;
          if (event.data) this.onChange(JSON.parse(event.data) as LiveChangeMessage);
        }
      } catch {
        // the stream failed or was aborted: decided below
      }
      if (generation !== this.generation) return;
      this.live = null;
      // EventSource keeps retrying by itself; after a few failures (or at random) start over completely.
      if (++failures > 3 || this.random.chance(0.3)) {
        this.retry();
        return;
      }
      await sleep(this.random.int(100, 1_000));
    }
  }
}

/** One event of a text/event-stream body; comments and `retry` are skipped. */
interface SseEvent {
  id?: string;
  data?: string;
}

/** Parse a text/event-stream body into events (`id`, `data`). */
async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let end = buffer.indexOf('\n\n');
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id: string | undefined;
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('id:')) id = line.slice(3).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (id !== undefined || data.length > 0) yield { id, data: data.length > 0 ? data.join('\n') : undefined };
      end = buffer.indexOf('\n\n');
    }
  }
}
