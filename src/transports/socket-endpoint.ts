/**
 * What every JSON WebSocket endpoint of the engine shares (`/api/sync/ws` and
 * `/api/field-sync/ws`): admission before the handshake, one SyncConnection
 * per socket, heartbeats, rights re-checks, limits by cost, and one reply per
 * request, errors included, echoing `ref`. Subclasses only say hello,
 * dispatch messages and re-scope a connection whose rights changed.
 *
 * Life of an upgrade (each step may meet a TCP reset; none may throw):
 *
 *   upgrade ─▶ errors absorbed ─▶ gate (host, origin, authorize) ─▶ slot taken
 *     ─▶ ws handshake ─▶ open ─▶ … ─▶ close: slot, subscription and session released
 *
 * A refusal at any step is answered by `refuseUpgrade`; a socket that goes
 * away before it opens gives its slot back at once.
 *
 * Limits (docs/security.md):
 * - bytes: replies and live batches waiting to be sent are bounded together
 *   by `maxBufferedBytes`; past it the socket is closed with 4008;
 * - messages: `wsMessagesPerSecond`, and at most `maxPendingRequests` waiting
 *   for an answer; past either the socket is closed with 4029, unanswered;
 * - cost: rows read for the socket (`sync` pages, catch-up replay) spend
 *   `wsRowsPerSecond`; a request past the budget waits for it. Requests of one
 *   socket run one at a time, in order, so one socket holds at most one
 *   database read.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { type WebSocket, WebSocketServer } from 'ws';
import { reauthorize } from '../core/access.js';
import type { SyncLimits, SyncUser } from '../core/config.js';
import { badRequest, toSyncError } from '../core/errors.js';
import { EntityFilter } from '../core/hub.js';
import { CloseCode } from '../core/protocol.js';
import type { LiveSession } from '../core/sessions.js';
import { parseJson } from '../core/validation.js';
import { type Access, admit } from './gate.js';
import { toWebRequest } from './node.js';
import { absorbErrors, refuseUpgrade } from './refuse.js';

export type { Access } from './gate.js';

/** A token bucket refilled continuously at `rate` per second, holding at most `rate`. */
class Budget {
  private tokens: number;
  private refilledAt = Date.now();

  constructor(private readonly rate: number) {
    this.tokens = rate;
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.refilledAt) / 1000) * this.rate);
    this.refilledAt = now;
  }

  /** Take one token if there is one. */
  take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Spend `amount`, possibly into debt (the cost of work already done). */
  spend(amount: number): void {
    this.refill();
    this.tokens -= amount;
  }

  /** Milliseconds until the bucket is out of debt (0 when it is not in debt). */
  waitMs(): number {
    this.refill();
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.rate) * 1000);
  }
}

/** One client's socket, its subscription and its budgets. */
export class SyncConnection implements LiveSession {
  readonly kind = 'websocket';
  filter = new EntityFilter(new Set());
  unsubscribe: (() => void) | null = null;
  /** The log version this socket has been brought up to (re-subscriptions continue from it). */
  cursor = 0;
  alive = true;
  /** Requests received and not yet answered. */
  pending = 0;
  private chain: Promise<void> = Promise.resolve();
  private readonly messages: Budget;
  private readonly rows: Budget;
  private drainWaiters: Array<() => void> = [];
  private closed = false;

  constructor(
    readonly socket: WebSocket,
    private readonly limits: SyncLimits,
    /** Who the socket runs as now (null without an authorize hook); updated by every re-check. */
    public user: SyncUser | null = null,
    /** The upgrade request, kept to re-check the session (null without an authorize hook). */
    readonly request: Request | null = null,
    private readonly endpoint: SocketEndpoint | null = null,
  ) {
    this.messages = new Budget(limits.wsMessagesPerSecond);
    this.rows = new Budget(limits.wsRowsPerSecond);
    socket.once('close', () => {
      this.closed = true;
      this.wakeDrainWaiters();
    });
  }

  get open(): boolean {
    return !this.closed && this.socket.readyState === this.socket.OPEN;
  }

  /**
   * Send a reply or a batch. Replies and live batches count together against
   * `maxBufferedBytes`: one that would take the queue past it (behind bytes the
   * client has not taken yet) closes the socket with 4008, and the client
   * catches up by pull. Catch-up pages (`paced`) are read only once the queue
   * is below half the bound, so they are bounded by that pacing instead.
   */
  send(message: object | string | Buffer, live = false, paced = false): boolean {
    if (!this.open) return false;
    const data = typeof message === 'string' || Buffer.isBuffer(message) ? message : JSON.stringify(message);
    const size = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
    const queued = this.socket.bufferedAmount;
    if (!paced && queued > 0 && queued + size > this.limits.maxBufferedBytes) {
      this.close(CloseCode.SlowConsumer, 'slow consumer: reconnect and pull');
      return false;
    }
    // A live batch goes to every subscriber: deflating it would be per-client work (and queue
    // behind zlib's thread pool), so it is sent as encoded once; replies may be compressed.
    this.socket.send(data, { binary: false, compress: !live }, () => this.wakeDrainWaiters());
    return true;
  }

  /**
   * Resolves once the socket's send queue is below half the limit and the row
   * budget is out of debt (or the socket is gone). Woken by the socket's own
   * write callbacks and one timer for the budget: never by polling.
   */
  async drained(): Promise<void> {
    while (this.open && this.socket.bufferedAmount > this.limits.maxBufferedBytes / 2) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
    await this.rowBudget();
  }

  private wakeDrainWaiters(): void {
    if (this.drainWaiters.length === 0) return;
    if (!this.closed && this.socket.bufferedAmount > this.limits.maxBufferedBytes / 2) return;
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
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
    this.chain = this.chain.then(work).finally(() => {
      this.pending--;
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
    if (!this.request || !this.endpoint?.options.authorize) return { user: this.user };
    let user: SyncUser | null;
    try {
      user = await reauthorize(this.endpoint.options.authorize, this.request, this.user);
    } catch (error) {
      const refusal = toSyncError(error);
      this.send({ type: 'error', code: refusal.code, message: refusal.message });
      this.close(refusal.status === 403 ? CloseCode.Forbidden : CloseCode.SessionEnded, refusal.message.slice(0, 100));
      return null;
    }
    if (!this.open) return null;
    this.user = user;
    // Against the key the live view was built with (the app may have mutated the old user object in place).
    if ((this.filter.scope?.key ?? '') !== this.endpoint.scopeKey(user)) this.endpoint.rescope(this);
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

export interface SocketEndpointOptions extends Access {
  path: string;
  limits: SyncLimits;
  /** Server → client ping interval; a socket that misses one is terminated. */
  heartbeatMs: number;
  onError?: (error: unknown) => void;
}

/** A message a client sent, and the `ref` to echo. */
export type Ref = string | number | undefined;

export abstract class SocketEndpoint {
  readonly server: WebSocketServer;
  protected readonly connections = new Set<SyncConnection>();
  private readonly heartbeat: ReturnType<typeof setInterval>;

  constructor(readonly options: SocketEndpointOptions) {
    this.server = createSocketServer(options.limits);
    // Handshakes ws refuses itself (bad Upgrade, key or version) come here instead of being thrown.
    this.server.on('wsClientError', (error, socket) => refuseUpgrade(socket, badRequest(`bad WebSocket handshake: ${error.message}`)));
    this.heartbeat = setInterval(() => this.pingAll(), options.heartbeatMs);
    this.heartbeat.unref();
  }

  /** The greeting sent when a socket opens. */
  protected abstract hello(): object;

  /** The reply to one request, or null when the reply was already sent. Throw SyncErrors to refuse. */
  protected abstract dispatch(message: Record<string, unknown>, connection: SyncConnection, ref: Ref): Promise<object | null>;

  /** The key of a user's live view; connections whose key changes are re-scoped. */
  scopeKey(_user: SyncUser | null): string {
    return '';
  }

  /** Re-subscribe a connection whose rights changed, continuing from its cursor. */
  rescope(_connection: SyncConnection): void {}

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Whether an upgrade request is for this endpoint's path. */
  owns(request: IncomingMessage): boolean {
    return (request.url ?? '').split('?')[0] === this.options.path;
  }

  /** Take over an upgrade request for our path: admit it or refuse it, never throwing. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    absorbErrors(socket);
    const sessions = this.options.sessions;
    sessions.admitting++;
    let admitting = true;
    const settle = () => {
      if (!admitting) return;
      admitting = false;
      sessions.admitting--;
    };
    this.admit(request, socket, head, settle).then(settle, (error: unknown) => {
      settle();
      this.options.onError?.(error);
      refuseUpgrade(socket, toSyncError(error));
    });
  }

  private async admit(request: IncomingMessage, socket: Duplex, head: Buffer, settle: () => void): Promise<void> {
    let release: () => void = () => {};
    let webRequest: Request;
    let user: SyncUser | null;
    try {
      webRequest = toWebRequest(request);
      user = await admit(webRequest, this.options, 'live');
      // Reset (RST) or closed (FIN, as a closed tab sends) while authorize ran: no slot for a connection already gone.
      if (socket.destroyed || !socket.readable || !socket.writable) {
        socket.destroy();
        return;
      }
      release = this.options.sessions.acquire(user);
    } catch (error) {
      const refusal = toSyncError(error);
      if (refusal.status >= 500) this.options.onError?.(error);
      refuseUpgrade(socket, refusal);
      return;
    }
    // From here the slot is ours to give back, whichever way the handshake ends.
    let opened = false;
    socket.once('close', () => {
      if (!opened) release();
    });
    this.server.handleUpgrade(request, socket, head, (ws) => {
      opened = true;
      settle();
      if (socket.destroyed) {
        release();
        return;
      }
      this.accept(ws, user, this.options.authorize ? webRequest : null, release);
    });
  }

  private accept(socket: WebSocket, user: SyncUser | null, request: Request | null, release: () => void): void {
    const connection = new SyncConnection(socket, this.options.limits, user, request, this);
    this.connections.add(connection);
    const forget = this.options.sessions.add(connection);
    socket.on('pong', () => {
      connection.alive = true;
    });
    socket.on('message', (data, isBinary) => {
      connection.alive = true;
      this.onMessage(connection, data as Buffer, isBinary);
    });
    socket.once('close', () => {
      connection.unsubscribe?.();
      connection.unsubscribe = null;
      this.connections.delete(connection);
      forget();
      release();
    });
    socket.on('error', () => socket.terminate());
    connection.send(this.hello());
  }

  private onMessage(connection: SyncConnection, data: Buffer, isBinary: boolean): void {
    const limits = this.options.limits;
    // Over the rate, a socket is closed unanswered: answering would be the work the limit exists to bound.
    if (!connection.takeMessage()) {
      connection.close(CloseCode.RateLimited, `more than ${limits.wsMessagesPerSecond} messages per second`);
      return;
    }
    if (connection.pending >= limits.maxPendingRequests) {
      connection.close(CloseCode.RateLimited, `more than ${limits.maxPendingRequests} requests waiting for an answer`);
      return;
    }
    connection.enqueue(() => this.answer(connection, data, isBinary));
  }

  private async answer(connection: SyncConnection, data: Buffer, isBinary: boolean): Promise<void> {
    if (!connection.open) return;
    let ref: Ref;
    try {
      if (isBinary) throw badRequest('binary messages are not supported; send JSON text');
      const message = parseJson(data.toString('utf8'), this.options.limits);
      if (typeof message !== 'object' || message === null || Array.isArray(message)) {
        throw badRequest('a message must be a JSON object');
      }
      const record = message as Record<string, unknown>;
      if (typeof record.ref === 'string' || typeof record.ref === 'number') ref = record.ref;
      // Every request runs under the rights of this moment, not those the socket opened with.
      if (!(await connection.currentUser())) return;
      const reply = await this.dispatch(record, connection, ref);
      if (reply) connection.send(ref === undefined ? reply : { ...reply, ref });
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      const reply: { type: 'error'; code: string; message: string; ref?: string | number } = {
        type: 'error',
        code: syncError.code,
        message: syncError.message,
      };
      if (ref !== undefined) reply.ref = ref;
      connection.send(reply);
    }
  }

  private pingAll(): void {
    for (const connection of this.connections) {
      if (!connection.alive) {
        connection.socket.terminate();
        continue;
      }
      connection.alive = false;
      connection.socket.ping();
    }
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const connection of this.connections) connection.close(CloseCode.GoingAway, 'server shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** An optional non-negative integer field of a message. */
export function optionalCount(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${name} must be a non-negative integer`);
  return value as number;
}

/** `sync` and `limit` checks shared by both endpoints; a page's rows are charged after it is read. */
export function pageLimit(message: Record<string, unknown>, limits: SyncLimits): number {
  const limit = optionalCount(message.limit, 'limit') ?? limits.defaultPullLimit;
  if (limit < 1 || limit > limits.maxPullLimit) throw badRequest(`limit must be between 1 and ${limits.maxPullLimit}`);
  return limit;
}
