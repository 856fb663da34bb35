/**
 * Device: a Node client that speaks the sync protocol the way the browser
 * client does (src/client), so a soak can run dozens of them where a few
 * Chromium pages would already fill the machine.
 *
 * What it shares with the browser client, rule for rule:
 * - a durable replica: rows, the cursor and the outbox change together in one
 *   "transaction", journaled before anything else can observe it (a JSON-lines
 *   file, or memory); a reload (page reload, tab crash) throws every
 *   in-memory structure away and replays the journal;
 * - `client_id` plus an increasing `mutation_id` on every push; the outbox is
 *   flushed in order, in batches of one entity without two changes of one
 *   row, and settled by the server's answers (acknowledged entries removed,
 *   conflicts and rejections reverted to the server row);
 * - on every (re)connect an HTTP pull from the cursor (snapshot pages on the
 *   first visit), then live changes from that cursor over a WebSocket
 *   (`subscribe` with `since`) or Server-Sent Events (`since`, then
 *   `Last-Event-ID` when the stream drops, as EventSource does);
 * - applying server changes skips versions at or below the cursor and rows
 *   already newer, and rebases pending local changes on top; while a push
 *   waits for its answer, server changes wait too (push-gate.ts);
 * - reconnects back off exponentially with full jitter.
 *
 * What the soak adds: random offline periods (in-flight requests fail, as a
 * real network loss would make them), abrupt disconnects, reloads, a random
 * node on every reconnect, and the ledger of every answer it received.
 */

import { randomUUID } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import WebSocket from 'ws';
import type { Change, LiveChangeMessage, PullResponse, PushChange, PushResult, Row, ServerMessage } from '../src/core/protocol.js';
import type { Ledger, WriteAction } from './ledger.js';
import { createShare, type Random, sleep } from './random.js';

const ENTITY = 'todos';
/** Most mutations per push, as the browser client. */
const BATCH = 100;
/** HTTP requests give up after this (the browser client: 60 s; the soak wants failures found sooner). */
const REQUEST_MS = 15_000;
/** A WebSocket request without a reply counts as a network failure after this. */
const REPLY_MS = 10_000;
/** Journal lines before the replica is rewritten as one snapshot. */
const COMPACT_AFTER = 2_000;
/** Answers that refuse the request itself (retrying cannot help), as the browser client's outbox. */
const REFUSED = /^(413|bad_request|bad_json|unknown_entity|unknown_column|payload_too_large|json_too_deep|unknown_message)$/;

/** A row as the replica stores it: `_v` the server version it is based on, `_a` our acknowledged write's version. */
export type StoredRow = Row & { id: string; _v?: number; _a?: number };

export interface OutboxEntry {
  mutation_id: number;
  entity: string;
  id: string;
  action: WriteAction;
  data: Row | null;
  base_version?: number;
  timestamp: number;
  /** The local row before this change, restored when the server rejects it without a row. */
  prev: StoredRow | null;
}

interface Cursor {
  v: number;
  /** Continuation token of an unfinished snapshot. */
  n?: string;
}

/** One step of a replica transaction; replaying them in order rebuilds the replica. */
type Op =
  | { t: 'put'; row: StoredRow }
  | { t: 'del'; id: string }
  | { t: 'clear' }
  | { t: 'cursor'; cursor: Cursor | null }
  | { t: 'mid'; mid: number }
  | { t: 'cid'; cid: string }
  | { t: 'queue'; entry: OutboxEntry }
  | { t: 'dequeue'; mid: number };

/** The in-memory replica of one device (the browser's IndexedDB database). */
class Replica {
  clientId = '';
  mid = 0;
  cursor: Cursor | null = null;
  readonly rows = new Map<string, StoredRow>();
  /** Keyed by mutation id; insertion order is mutation order. */
  readonly outbox = new Map<number, OutboxEntry>();

  apply(op: Op): void {
    switch (op.t) {
      case 'put':
        this.rows.set(op.row.id, op.row);
        break;
      case 'del':
        this.rows.delete(op.id);
        break;
      case 'clear':
        this.rows.clear();
        break;
      case 'cursor':
        this.cursor = op.cursor;
        break;
      case 'mid':
        this.mid = op.mid;
        break;
      case 'cid':
        this.clientId = op.cid;
        break;
      case 'queue':
        this.outbox.set(op.entry.mutation_id, op.entry);
        break;
      case 'dequeue':
        this.outbox.delete(op.mid);
        break;
    }
  }

  /** Pending entries in mutation order. */
  pending(): OutboxEntry[] {
    return [...this.outbox.values()].sort((a, b) => a.mutation_id - b.mutation_id);
  }

  toSnapshot(): string {
    return JSON.stringify({
      clientId: this.clientId,
      mid: this.mid,
      cursor: this.cursor,
      rows: [...this.rows.values()],
      outbox: this.pending(),
    });
  }

  static fromSnapshot(text: string | null): Replica {
    const replica = new Replica();
    if (!text) return replica;
    const parsed = JSON.parse(text) as { clientId: string; mid: number; cursor: Cursor | null; rows: StoredRow[]; outbox: OutboxEntry[] };
    replica.clientId = parsed.clientId;
    replica.mid = parsed.mid;
    replica.cursor = parsed.cursor;
    for (const row of parsed.rows) replica.rows.set(row.id, row);
    for (const entry of parsed.outbox) replica.outbox.set(entry.mutation_id, entry);
    return replica;
  }
}

/**
 * Where a device's replica survives its reloads: a snapshot plus a journal of
 * committed transactions, one JSON line each, in files or in memory.
 */
class Journal {
  private memorySnapshot: string | null = null;
  private memoryLines: string[] = [];
  private lines = 0;

  constructor(private readonly path: string | null) {
    if (path) {
      rmSync(`${path}.snapshot`, { force: true });
      rmSync(path, { force: true });
    }
  }

  load(): Replica {
    const snapshot = this.path
      ? existsSync(`${this.path}.snapshot`)
        ? readFileSync(`${this.path}.snapshot`, 'utf8')
        : null
      : this.memorySnapshot;
    const replica = Replica.fromSnapshot(snapshot);
    const lines = this.path ? (existsSync(this.path) ? readFileSync(this.path, 'utf8').split('\n') : []) : this.memoryLines;
    this.lines = 0;
    for (const line of lines) {
      if (!line) continue;
      let ops: Op[];
      try {
        ops = JSON.parse(line) as Op[];
      } catch {
        break; // a torn last line: that transaction never completed
      }
      for (const op of ops) replica.apply(op);
      this.lines++;
    }
    return replica;
  }

  commit(ops: Op[], replica: Replica): void {
    const line = JSON.stringify(ops);
    if (this.path) appendFileSync(this.path, `${line}\n`);
    else this.memoryLines.push(line);
    if (++this.lines < COMPACT_AFTER) return;
    const snapshot = replica.toSnapshot();
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

/** Writes of one transaction: applied to the replica at once, journaled when the body returns. */
interface Tx {
  put(row: StoredRow): void;
  del(id: string): void;
  op(op: Op): void;
}

/** How often a device does what, per action of its loop. */
export interface DeviceBehaviour {
  /** Pause between two actions, ms (uniform). */
  thinkMs: [number, number];
  /** Probability per action of going offline for `offlineMs`. */
  offline: number;
  offlineMs: [number, number];
  /** Probability per action of dropping the connection abruptly. */
  disconnect: number;
  /** Probability per action of a reload from the durable replica. */
  reload: number;
  /** Rows the writers steer the table towards (fewer rows, more collisions). */
  tableRows: number;
  /**
   * Extra delay of HTTP push answers, ms (uniform): a slow path for the
   * answer while the live stream, on another connection, runs ahead.
   */
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
  /** Journal file; null keeps the durable replica in memory. */
  journalPath: string | null;
  /** `random` picks per connection. */
  transport: 'websocket' | 'sse' | 'random';
  behaviour?: DeviceBehaviour;
  /** Upper bound of the reconnect backoff (the browser client's is 30 s). */
  maxBackoffMs?: number;
  /**
   * Apply no server change (live batch, pull page) while a push waits for its
   * answer, and apply them after the answer is settled, as the browser client
   * does (src/client/push-gate.ts). Default true; false is the client before
   * that fix, whose answers could overwrite newer changes of the row (the
   * soak found it: docs/reliability.md).
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

class Abandoned extends Error {
  constructor() {
    super('abandoned by a reload');
  }
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
  private replica: Replica;
  private readonly random: Random;
  private readonly behaviour: DeviceBehaviour;
  private readonly maxBackoffMs: number;
  /** Bumped by every reload: work begun before it must not touch the replica. */
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
  private nextRef = 0;
  private readonly waiting = new Map<number, (reply: ServerMessage | null) => void>();
  private flushing = false;
  private flushAgain = false;
  private flushAttempt = 0;
  private flushTimer: NodeJS.Timeout | undefined;
  private hlcLast = 0;
  /** See DeviceOptions.holdDuringPush. */
  private readonly holdDuringPush: boolean;
  private pushInFlight = false;
  /** Live batches that arrived while a push was in flight. */
  private held: Array<() => void> = [];
  /** Pull pages waiting for the push in flight. */
  private heldWaiters: Array<() => void> = [];

  constructor(private readonly options: DeviceOptions) {
    this.name = options.name;
    this.random = options.random;
    this.behaviour = options.behaviour ?? DEFAULT_BEHAVIOUR;
    this.maxBackoffMs = options.maxBackoffMs ?? 5_000;
    this.holdDuringPush = options.holdDuringPush ?? true;
    this.journal = new Journal(options.journalPath);
    this.replica = this.journal.load();
    this.tx((tx) => tx.op({ t: 'cid', cid: randomUUID() }));
  }

  get clientId(): string {
    return this.replica.clientId;
  }

  /** Connect (and keep reconnecting) until `stop()`. */
  start(): void {
    this.start_();
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
        this.mutateRandomly();
      }
    }
  }

  /** Everything back to normal for the final drain: online, connected now. */
  settle(): void {
    if (!this.online) this.setOnline(true);
    else if (!this.live) {
      this.attempt = 0;
      this.start_();
    }
  }

  /** Rows as the app would read them (bookkeeping fields removed), in id order. */
  rows(): Row[] {
    return [...this.replica.rows.values()]
      .map(({ _v, _a, ...row }) => row as Row)
      .sort((a, b) => (String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0));
  }

  /** The replica's view of one row, for diagnosing a divergence: stored row, cursor, pending mutations. */
  describe(id: string): string {
    const pending = this.replica.pending().filter((entry) => entry.id === id);
    return JSON.stringify({
      row: this.replica.rows.get(id) ?? null,
      cursor: this.replica.cursor,
      pending,
      node: this.node,
      live: this.live,
    });
  }

  /** Mutations the server has not answered yet. */
  pendingCount(): number {
    return this.replica.outbox.size;
  }

  /** Whether live delivery is running (WebSocket subscribed or SSE stream open). */
  isLive(): boolean {
    return this.live !== null;
  }

  cursor(): number {
    return this.replica.cursor?.v ?? 0;
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
    this.start_();
  }

  /** Drop the connection as a network blip would; the device reconnects with backoff. */
  disconnect(): void {
    if (this.socket) this.socket.terminate();
    else if (this.sse) this.sse.abort();
  }

  /** Like a page reload: every in-memory structure is dropped and rebuilt from the durable replica. */
  reload(): void {
    this.stats.reloads++;
    this.epoch++;
    this.drop();
    this.net.abort();
    this.net = new AbortController();
    clearTimeout(this.flushTimer);
    this.flushing = false;
    this.flushAgain = false;
    this.flushAttempt = 0;
    this.attempt = 0;
    this.releaseHeldOnReload();
    this.replica = this.journal.load();
    this.start_();
  }

  /** A reload forgets held batches (they belonged to the old connection); held pulls end as abandoned. */
  private releaseHeldOnReload(): void {
    this.pushInFlight = false;
    this.held = [];
    const waiters = this.heldWaiters;
    this.heldWaiters = [];
    for (const resume of waiters) resume();
  }

  stop(): void {
    this.stopped = true;
    this.epoch++;
    this.drop();
    this.net.abort();
    clearTimeout(this.flushTimer);
  }

  dispose(): void {
    this.stop();
    this.journal.dispose();
  }

  // ------------------------------------------------------------ local writes

  /** One random create, update or delete; the table is steered towards `tableRows` rows so writes collide. */
  mutateRandomly(): void {
    const ids = [...this.replica.rows.keys()];
    const roll = this.random.next();
    const creates = createShare(ids.length, this.behaviour.tableRows);
    if (ids.length === 0 || roll < creates) {
      this.mutate({ action: 'create', id: randomUUID(), data: { done: false } });
      return;
    }
    const id = this.random.pick(ids) as string;
    if (roll < creates + 0.25) this.mutate({ action: 'delete', id, data: null });
    else this.mutate({ action: 'update', id, data: { done: this.random.chance(0.5) } });
  }

  /** Queue a write durably (the browser client's `push`); creates and updates get a fresh tag as title. */
  mutate(change: { action: WriteAction; id: string; data: Row | null }): OutboxEntry {
    const entry = this.tx((tx) => {
      const mid = this.replica.mid + 1;
      tx.op({ t: 'mid', mid });
      const tag = `${this.name}.${mid}`;
      const data = change.action === 'delete' ? null : { ...change.data, title: tag };
      const prev = this.replica.rows.get(change.id) ?? null;
      const known = Math.max(prev?._v ?? 0, prev?._a ?? 0) || undefined;
      const entry: OutboxEntry = {
        mutation_id: mid,
        entity: ENTITY,
        id: change.id,
        action: change.action,
        data,
        timestamp: this.hlcNow(),
        prev,
      };
      if (known !== undefined) entry.base_version = known;
      tx.op({ t: 'queue', entry });
      this.applyLocal(tx, entry, prev ?? undefined);
      return entry;
    });
    this.stats.mutations++;
    this.options.ledger.issue({
      participant: this.name,
      kind: 'device',
      tag: `${this.name}.${entry.mutation_id}`,
      id: entry.id,
      action: entry.action,
      mutationId: entry.mutation_id,
    });
    if (this.online) void this.flush();
    return entry;
  }

  private applyLocal(tx: Tx, entry: OutboxEntry, current: StoredRow | undefined): StoredRow | undefined {
    if (entry.action === 'delete') {
      tx.del(entry.id);
      return undefined;
    }
    const row: StoredRow = { ...current, ...entry.data, id: entry.id };
    tx.put(row);
    return row;
  }

  private hlcNow(): number {
    this.hlcLast = Math.max(Date.now() * 4096, this.hlcLast + 1);
    return this.hlcLast;
  }

  private hlcObserve(remote: unknown): void {
    if (typeof remote === 'number' && remote > this.hlcLast) this.hlcLast = remote;
  }

  /** Run one replica transaction: all of it is journaled, or (when it throws) none of it happened. */
  private tx<T>(body: (tx: Tx) => T): T {
    const ops: Op[] = [];
    const op = (next: Op) => {
      ops.push(next);
      this.replica.apply(next);
    };
    let result: T;
    try {
      result = body({ put: (row) => op({ t: 'put', row }), del: (id) => op({ t: 'del', id }), op });
    } catch (error) {
      // Roll back: the in-memory replica is rebuilt from what was durable.
      this.replica = this.journal.load();
      throw error;
    }
    if (ops.length > 0) this.journal.commit(ops, this.replica);
    return result;
  }

  // ------------------------------------------------------- applying changes

  /** Apply server changes (`floor` is the cursor; null for snapshot rows, whose store was just cleared). */
  private applyServer(tx: Tx, changes: Change[], floor: number | null): void {
    const pending = this.replica.pending().filter((entry) => entry.entity === ENTITY);
    for (const change of changes) {
      this.hlcObserve(change.hlc);
      if (floor !== null && change.version <= floor) continue;
      const id = String(change.id ?? change.entity_id);
      const current = floor === null ? undefined : this.replica.rows.get(id);
      if (current && (current._v ?? 0) >= change.version) continue;
      let row: StoredRow | undefined = change.action === 'delete' || !change.data ? undefined : { ...change.data, id, _v: change.version };
      if (row && (current?._a ?? 0) > change.version) row._a = current?._a;
      if (row) tx.put(row);
      else tx.del(id);
      for (const entry of pending) if (entry.id === id) row = this.applyLocal(tx, entry, row);
    }
  }

  private onChange(message: LiveChangeMessage): void {
    this.stats.liveBatches++;
    if (this.holdDuringPush && this.pushInFlight) {
      this.held.push(() => this.applyLive(message));
      return;
    }
    this.applyLive(message);
  }

  /** Resolves when no push is waiting for its answer (at once unless `holdDuringPush`). */
  private noPushInFlight(): Promise<void> {
    if (!this.holdDuringPush || !this.pushInFlight) return Promise.resolve();
    return new Promise((resolve) => this.heldWaiters.push(resolve));
  }

  /** The push was answered (and settled) or failed: apply what arrived meanwhile, in order. */
  private releaseHeld(): void {
    this.pushInFlight = false;
    const [held, waiters] = [this.held, this.heldWaiters];
    this.held = [];
    this.heldWaiters = [];
    for (const apply of held) apply();
    for (const resume of waiters) resume();
  }

  private applyLive(message: LiveChangeMessage): void {
    this.tx((tx) => {
      const cursor = this.replica.cursor;
      // Not caught up yet (or mid-snapshot): the pull brings these.
      if (!cursor || cursor.n) return;
      this.applyServer(
        tx,
        message.changes.filter((change) => change.entity === ENTITY),
        cursor.v,
      );
      if (message.version > cursor.v) tx.op({ t: 'cursor', cursor: { v: message.version } });
    });
  }

  /** Pull until caught up (snapshot pages, then incremental pages); resolves with the cursor reached. */
  private async pull(node: string): Promise<number> {
    const epoch = this.epoch;
    for (;;) {
      const token = this.replica.cursor?.n;
      const since = token ? `0&snapshot=${encodeURIComponent(token)}` : String(this.replica.cursor?.v ?? 0);
      const answer = await this.http(`${node}/api/sync/${ENTITY}?since=${since}`);
      if (epoch !== this.epoch) throw new Abandoned();
      this.stats.pulls++;
      if (!answer.ok) {
        const code = (answer.body as { error?: { code?: string } } | null)?.error?.code;
        if (token && code === 'bad_cursor') {
          this.tx((tx) => tx.op({ t: 'cursor', cursor: null }));
          continue;
        }
        throw new Error(`pull: HTTP ${answer.status} ${code ?? ''}`);
      }
      const page = answer.body as PullResponse;
      await this.noPushInFlight();
      if (epoch !== this.epoch) throw new Abandoned();
      const snapshot = Boolean(token || page.reset);
      const reached = this.tx((tx) => {
        const now = this.replica.cursor;
        if (page.reset) {
          tx.op({ t: 'clear' });
          // Pending local changes survive a reset: re-apply them on the empty store.
          for (const entry of this.replica.pending()) {
            if (entry.entity === ENTITY) this.applyLocal(tx, entry, this.replica.rows.get(entry.id));
          }
        }
        this.applyServer(tx, page.changes, snapshot ? null : (now?.v ?? 0));
        const next: Cursor = { v: snapshot ? page.version : Math.max(now?.v ?? 0, page.version) };
        if (page.next) next.n = page.next;
        tx.op({ t: 'cursor', cursor: next });
        return next.v;
      });
      if (!page.has_more) return reached;
    }
  }

  // ------------------------------------------------------------- connection

  private backoff(attempt: number): number {
    return this.random.next() * Math.min(this.maxBackoffMs, 500 * 2 ** attempt);
  }

  private drop(): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    const [socket, sse] = [this.socket, this.sse];
    this.socket = null;
    this.sse = null;
    this.live = null;
    socket?.terminate();
    sse?.abort();
    for (const settle of this.waiting.values()) settle(null);
    this.waiting.clear();
  }

  private retry(): void {
    this.drop();
    this.retryTimer = setTimeout(() => this.start_(), this.backoff(this.attempt++));
  }

  private start_(): void {
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
    const socket = new WebSocket(`${node.replace(/^http/, 'ws')}/api/sync/ws`, { handshakeTimeout: 5_000 });
    this.socket = socket;
    socket.on('open', () => {
      this.pull(node).then(
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
      const message = JSON.parse(String(data)) as ServerMessage & { ref?: number };
      if (message.type === 'change') this.onChange(message);
      else if (message.type === 'subscribed') {
        this.live = 'websocket';
        this.attempt = 0;
        void this.flush();
      } else if (typeof message.ref === 'number') {
        this.waiting.get(message.ref)?.(message);
        this.waiting.delete(message.ref);
      }
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
      since = await this.pull(node);
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
        const url: string = `${node}/api/sync/events?entities=${ENTITY}${lastId ? '' : `&since=${since}`}`;
        const response: Response = await fetch(url, {
          headers: lastId ? { 'last-event-id': lastId } : {},
          signal: AbortSignal.any([controller.signal, this.net.signal]),
        });
        if (!response.ok || !response.body) throw new Error(`SSE: HTTP ${response.status}`);
        if (generation !== this.generation) return;
        // Reopened by itself: pull anyway, as the browser client does.
        if (opened) this.pull(node).catch(() => {});
        opened = true;
        failures = 0;
        this.live = 'sse';
        this.attempt = 0;
        void this.flush();
        for await (const event of readEvents(response.body) as AsyncGenerator<SseEvent>) {
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

  /** Send on the subscribed WebSocket and await the reply; null without a live socket. */
  private request(message: Record<string, unknown>): Promise<ServerMessage | null> | null {
    const socket = this.socket;
    if (this.live !== 'websocket' || !socket) return null;
    const ref = ++this.nextRef;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(ref);
        resolve(null);
      }, REPLY_MS);
      this.waiting.set(ref, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      socket.send(JSON.stringify({ ...message, ref }));
    });
  }

  private async http(url: string, init: RequestInit = {}): Promise<{ ok: boolean; status: number; body: unknown }> {
    if (!this.online) throw new Error('offline');
    const response = await fetch(url, { ...init, signal: AbortSignal.any([this.net.signal, AbortSignal.timeout(REQUEST_MS)]) });
    const body = await response.json().catch(() => null);
    return { ok: response.ok, status: response.status, body };
  }

  // ------------------------------------------------------------------ outbox

  private async send(changes: PushChange[]): Promise<PushResult[]> {
    const body = { client_id: this.replica.clientId, changes };
    const refused = (message: string, rejected: boolean) => Object.assign(new Error(message), { rejected });
    const viaSocket = this.request({ type: 'push', entity: ENTITY, ...body });
    if (viaSocket) {
      const reply = await viaSocket;
      if (reply?.type === 'push_ack') return reply.results;
      if (reply?.type === 'error') throw refused(reply.message, REFUSED.test(reply.code));
      throw refused('no reply', false);
    }
    const node = this.node ?? (this.random.pick(this.options.nodes) as string);
    const answer = await this.http(`${node}/api/sync/${ENTITY}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    // The answer travels on its own connection, the live stream on another: it may arrive late.
    const [least, most] = this.behaviour.answerDelayMs;
    if (most > 0) await sleep(this.random.int(least, most));
    if (answer.ok) return (answer.body as { results: PushResult[] }).results;
    const error = (answer.body as { error?: { code?: string; message?: string } } | null)?.error;
    throw refused(error?.message ?? `HTTP ${answer.status}`, REFUSED.test(error?.code ?? String(answer.status)));
  }

  /** Send the outbox in order until it is empty; never runs twice at once; retries with backoff, forever. */
  private async flush(): Promise<void> {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    if (!this.online || this.stopped) return;
    const epoch = this.epoch;
    this.flushing = true;
    clearTimeout(this.flushTimer);
    let limit = BATCH;
    try {
      for (;;) {
        this.flushAgain = false;
        const queue = this.replica.pending();
        const entity = queue[0]?.entity;
        if (entity === undefined) break;
        const batch: OutboxEntry[] = [];
        const ids = new Set<string>();
        for (const entry of queue) {
          if (entry.entity !== entity || ids.has(entry.id) || batch.length >= limit) break;
          ids.add(entry.id);
          batch.push(entry);
        }
        this.pushInFlight = true;
        try {
          let results: PushResult[];
          try {
            this.stats.pushes++;
            const sent = Date.now();
            results = await this.send(
              batch.map(({ mutation_id, id, action, data, base_version, timestamp }) => ({
                mutation_id,
                id,
                action,
                data,
                base_version,
                timestamp,
              })),
            );
            this.stats.pushMs.push(Date.now() - sent);
          } catch (error) {
            if (epoch !== this.epoch) return;
            if (!(error as { rejected?: boolean }).rejected) throw error;
            if (batch.length > 1) {
              limit = 1;
              continue;
            }
            const [only] = batch as [OutboxEntry];
            results = [{ mutation_id: only.mutation_id, id: only.id, status: 'rejected', reason: (error as Error).message }];
          }
          // Reloaded meanwhile: this page is gone and never saw the answer.
          if (epoch !== this.epoch) return;
          for (const result of results) {
            if (result.mutation_id === undefined) continue;
            const known = this.options.ledger.answer(this.name, result.mutation_id, {
              status: result.status,
              duplicate: result.duplicate === true,
              version: result.version,
            });
            if (!known) this.stats.unknownAnswers++;
          }
          this.settleBatch(batch, results);
        } finally {
          if (epoch === this.epoch) this.releaseHeld();
        }
      }
      this.flushAttempt = 0;
    } catch (error) {
      if (epoch !== this.epoch) return;
      const reason = (error as Error).message.replace(/\s+/g, ' ').slice(0, 60);
      this.stats.pushFailures[reason] = (this.stats.pushFailures[reason] ?? 0) + 1;
      // Offline, server down, 5xx...: keep everything and try again later.
      this.flushAgain = false;
      this.flushTimer = setTimeout(() => void this.flush(), this.backoff(this.flushAttempt++));
    } finally {
      if (epoch === this.epoch) {
        this.flushing = false;
        if (this.flushAgain) void this.flush();
      }
    }
  }

  /** The browser client's settlement: drop acknowledged entries, revert conflicts and rejections. */
  private settleBatch(batch: OutboxEntry[], results: PushResult[]): void {
    const answers = batch.map((entry, index) => results.find((result) => result.mutation_id === entry.mutation_id) ?? results[index]);
    // No answer for one: settle nothing, retry later (the server dedupes what it applied).
    if (answers.some((answer) => !answer)) throw new Error('push answer without a result');
    this.tx((tx) => {
      const queue = this.replica.pending().filter((entry) => entry.entity === ENTITY);
      for (const [index, entry] of batch.entries()) {
        const result = answers[index] as PushResult;
        tx.op({ t: 'dequeue', mid: entry.mutation_id });
        const later = queue.filter((other) => other.mutation_id > entry.mutation_id && other.id === entry.id);
        let row = this.replica.rows.get(entry.id);
        const server = result.row === undefined ? undefined : result.row && ({ ...result.row, id: entry.id } as StoredRow);
        if (result.status === 'applied') {
          if (result.id != null && result.id !== entry.id) throw new Error(`server moved ${entry.id} to ${result.id}: not a text key`);
          // Later changes of this row were made on top of this one: they are based on the version it produced.
          for (const other of later) {
            if (other.base_version === entry.base_version) tx.op({ t: 'queue', entry: { ...other, base_version: result.version } });
          }
          if (server === undefined) {
            if (row && result.version) tx.put({ ...row, _a: result.version });
            continue;
          }
          // A retried (duplicate) or merged write: the server row is the truth.
          row = server ? { ...server, _v: result.version ?? result.server_version } : undefined;
        } else {
          this.stats.conflicts++;
          row = server === undefined ? (entry.prev ?? undefined) : server ? { ...server, _v: result.server_version } : undefined;
        }
        if (row) tx.put(row);
        else tx.del(entry.id);
        for (const other of later) row = this.applyLocal(tx, other, row);
      }
    });
  }
}

/** Parse a text/event-stream body into events (`id`, `data`); comments and `retry` are skipped. */
interface SseEvent {
  id?: string;
  data?: string;
}

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
