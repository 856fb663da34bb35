/**
 * One client's WebSocket: its live subscription, its budgets (bytes queued,
 * messages, rows read) and its current rights. The endpoint owns the sockets;
 * this is what each one carries.
 */
import { type WebSocket, WebSocketServer } from 'ws';
import { reauthorize } from '../../core/access.js';
import type { Authorize, SyncLimits, SyncUser } from '../../core/config.js';
import { toSyncError } from '../../core/errors.js';
import { behind, type Delivery, EntityFilter, type Family, type Framing, type LiveBatch, type Subscriber } from '../../core/hub.js';
import { CLOSE_MUST_REFETCH, CloseCode } from '../../core/protocol.js';
import { Budget, type LiveSession } from '../../core/sessions.js';

/** The filter of a socket that follows nothing yet, one per family (filters never change: a subscription makes its own). */
const IDLE_FILTERS = new Map<Family, EntityFilter>();
const idleFilter = (family: Family): EntityFilter => {
  const known = IDLE_FILTERS.get(family);
  if (known) return known;
  const filter = new EntityFilter(new Set(), false, undefined, family);
  IDLE_FILTERS.set(family, filter);
  return filter;
};

/** The bytes a batch's frames take on the wire. */
const byteSize = (frames: ReadonlyArray<string | Buffer>): number => {
  let size = 0;
  for (const frame of frames) size += typeof frame === 'string' ? Buffer.byteLength(frame) : frame.byteLength;
  return size;
};

/** What a connection asks of its endpoint when its rights are re-checked. */
export interface Rescoping {
  readonly options: { authorize?: Authorize };
  scopeKey(connection: SyncConnection, user: SyncUser | null): string;
  rescope(connection: SyncConnection): void;
}

/** One client's socket, its subscription and its budgets; it is its own hub subscriber (no closures per socket). */
export class SyncConnection implements LiveSession, Subscriber {
  readonly kind = 'websocket';
  filter: EntityFilter;
  unsubscribe: (() => void) | null = null;
  /** The log version this socket has been brought up to (re-subscriptions continue from it). */
  cursor = 0;
  alive = true;
  /** Requests received and not yet answered. */
  pending = 0;
  /** The last request queued, while any is unanswered (null when idle: no promise kept per idle socket). */
  private chain: Promise<void> | null = null;
  private readonly messages: Budget;
  private drainWaiters: Array<() => void> | null = null;
  private closed = false;

  constructor(
    readonly socket: WebSocket,
    private readonly limits: SyncLimits,
    /** Who the socket runs as now (null without an authorize hook); updated by every re-check. */
    public user: SyncUser | null,
    /** The upgrade request, kept to re-check the session (null without an authorize hook). */
    readonly request: Request | null,
    private readonly endpoint: Rescoping,
    /** The message family this socket speaks (its path decides). */
    readonly family: Family,
    /** The principal's row budget, shared with its other sockets. */
    private readonly rows: Budget,
    /** How live changes are framed for this socket: the protocol its URL declared (`?protocol=`). */
    readonly framing: Framing<Buffer[]>,
  ) {
    this.filter = idleFilter(family);
    this.messages = new Budget(limits.wsMessagesPerSecond);
  }

  /** The socket closed (the endpoint's one close listener calls this). */
  closedBySocket(): void {
    this.closed = true;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.wakeDrainWaiters();
  }

  /**
   * Subscriber: one live batch or catch-up page for this socket's filter. A
   * live batch is refused while the queue is over half `maxBufferedBytes` or
   * would pass it: the hub catches the socket up once it drains.
   */
  deliver(batch: LiveBatch, version: number, delivery: Delivery): boolean {
    // One frame per batch, or one per change for a client of the original crate.
    const frames = batch.framed(this.filter, this.framing);
    if (frames !== null && delivery === 'live' && behind(this.socket.bufferedAmount, byteSize(frames), this.limits.maxBufferedBytes)) {
      return false;
    }
    this.cursor = version;
    // Pages it asked for cost what they read; live batches, and the catch-up of a lag, are read once for everyone.
    if (delivery === 'replay') this.spendRows(batch.changes.length + (batch.fieldChanges?.length ?? 0));
    if (frames !== null) this.sendAll(frames, delivery === 'live', delivery !== 'live');
    return true;
  }

  /** Subscriber: the rows it holds of `entity` no longer match its table. */
  refetch(entity: string): void {
    this.close(CLOSE_MUST_REFETCH, `${entity.slice(0, 64)}: pull again (its schema changed or its log was pruned)`);
  }

  get open(): boolean {
    return !this.closed && this.socket.readyState === this.socket.OPEN;
  }

  /**
   * Send a reply or a batch. Replies and live batches count together against
   * `maxBufferedBytes`: a reply that would take the queue past it (behind
   * bytes the client has not taken yet) closes the socket with 4008, and the
   * client catches up by pull; a live batch is refused before that (`deliver`:
   * the socket lags). Catch-up pages (`paced`) are read only once the queue is
   * below half the bound, so they are bounded by that pacing instead.
   */
  send(message: object | string | Buffer, live = false, paced = false): boolean {
    const data = typeof message === 'string' || Buffer.isBuffer(message) ? message : JSON.stringify(message);
    return this.sendAll([data], live, paced);
  }

  /**
   * Send the frames of one batch (one, or one per change for a client of the
   * original crate) as one unit: counted together against `maxBufferedBytes`,
   * woken once when the last is written.
   */
  sendAll(frames: ReadonlyArray<string | Buffer>, live = false, paced = false): boolean {
    if (!this.open || frames.length === 0) return false;
    const size = byteSize(frames);
    const queued = this.socket.bufferedAmount;
    if (!paced && queued > 0 && queued + size > this.limits.maxBufferedBytes) {
      this.close(CloseCode.SlowConsumer, 'slow consumer: reconnect and pull');
      return false;
    }
    // A live batch goes to every subscriber: deflating it would be per-client work (and queue
    // behind zlib's thread pool), so it is sent as encoded once; replies may be compressed.
    const last = frames.length - 1;
    for (let index = 0; index < last; index++) this.socket.send(frames[index] as string | Buffer, { binary: false, compress: !live });
    this.socket.send(frames[last] as string | Buffer, { binary: false, compress: !live }, () => this.wakeDrainWaiters());
    return true;
  }

  /**
   * Resolves once the socket's send queue is below half the limit and the row
   * budget is out of debt (or the socket is gone). Woken by the socket's own
   * write callbacks and one timer for the budget: never by polling.
   */
  async drained(): Promise<void> {
    while (this.open && this.socket.bufferedAmount > this.limits.maxBufferedBytes / 2) {
      await new Promise<void>((resolve) => {
        this.drainWaiters ??= [];
        this.drainWaiters.push(resolve);
      });
    }
    await this.rowBudget();
  }

  private wakeDrainWaiters(): void {
    if (this.drainWaiters === null) return;
    if (!this.closed && this.socket.bufferedAmount > this.limits.maxBufferedBytes / 2) return;
    const waiters = this.drainWaiters;
    this.drainWaiters = null;
    for (const resolve of waiters) resolve();
  }

  /** Wait until the row budget is out of debt. */
  async rowBudget(): Promise<void> {
    const wait = this.rows.waitMs();
    if (wait > 0 && this.open) await new Promise((resolve) => setTimeout(resolve, wait));
  }

  /** Count rows read for this socket against `wsRowsPerSecond`. */
  spendRows(rows: number): void {
    this.rows.spend(rows);
  }

  /** Take a message token; false when the socket is over `wsMessagesPerSecond`. */
  takeMessage(): boolean {
    return this.messages.take();
  }

  /** Run `work` after every earlier request of this socket has been answered. */
  enqueue(work: () => Promise<void>): void {
    this.pending++;
    // Each request starts in a turn of its own, so I/O of other clients runs between one socket's requests.
    this.chain = (this.chain ?? Promise.resolve())
      .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
      .then(work)
      .finally(() => {
        // The last answered: nothing is queued behind it (enqueue counts before it chains).
        if (--this.pending === 0) this.chain = null;
      });
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.socket.close(code, reason);
    this.wakeDrainWaiters();
  }

  /**
   * Re-run authorize on the upgrade request: a refused session closes the
   * socket (4401 ended, 4403 forbidden); changed rights re-scope its live view.
   */
  async recheck(): Promise<void> {
    await this.currentUser();
  }

  /** The socket's user now, re-checked; null after the socket was closed for a refused session. */
  async currentUser(): Promise<{ user: SyncUser | null } | null> {
    if (!this.request || !this.endpoint.options.authorize) return { user: this.user };
    let user: SyncUser | null;
    try {
      user = await reauthorize(this.endpoint.options.authorize, this.request, this.user);
    } catch (error) {
      const refusal = toSyncError(error);
      this.send(refusal.toMessage());
      this.close(refusal.status === 403 ? CloseCode.Forbidden : CloseCode.SessionEnded, refusal.message.slice(0, 100));
      return null;
    }
    if (!this.open) return null;
    this.user = user;
    // Against the key the live view was built with (the app may have mutated the old user object in place).
    if ((this.filter.scope?.key ?? '') !== this.endpoint.scopeKey(this, user)) this.endpoint.rescope(this);
    return { user };
  }
}

/** A `ws` server (no own HTTP server) with our message size and compression bounds. */
export function createSocketServer(limits: SyncLimits): WebSocketServer {
  return new WebSocketServer({
    noServer: true,
    maxPayload: limits.maxWsMessageBytes,
    perMessageDeflate: {
      threshold: 1024,
      // Without these ws ignores `threshold` (both ways), deflates every message and keeps zlib
      // contexts (~250 KiB) per socket for life; with them small messages go as they are.
      serverNoContextTakeover: true,
      clientNoContextTakeover: true,
      // Bound what a compressed frame may inflate to (gzip bombs): ws checks maxPayload after inflating.
      zlibInflateOptions: { chunkSize: 16 * 1024 },
      concurrencyLimit: 4,
    },
  });
}

/**
 * The WebSocket framings of live changes: `batch`, one message per batch (the
 * protocol our client declares), and `each`, one `{"type","version","change"}`
 * message per change (@compat the original crate's clients, which declare
 * nothing and read only `change`).
 */
export const WS_FRAMINGS = {
  batch: { key: 'ws', batch: (message) => [Buffer.from(message)] },
  each: {
    key: 'ws-each',
    each: (changes, family) =>
      changes.map(({ json, version }) => Buffer.from(`{"type":${JSON.stringify(family)},"version":${version},"change":${json}}`)),
  },
} satisfies Record<'batch' | 'each', Framing<Buffer[]>>;
