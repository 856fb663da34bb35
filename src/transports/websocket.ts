/**
 * WebSocket transport: `/api/sync/ws`, the seed's message protocol.
 *
 * Every request message gets exactly one reply (`subscribed`, `sync`,
 * `push_ack`, `pong` or `error`), echoing `ref` when the client sent one.
 * Live changes arrive as `change` messages. Limits: message size (ws's own
 * default of 100 MiB is far too trusting), messages per second, and bytes
 * queued for a slow reader (past it the socket is closed with 4008 and the
 * client reconnects and pulls).
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { type WebSocket, WebSocketServer } from 'ws';
import { type ConnectionLimiter, checkOrigin, resolveUser } from '../core/access.js';
import type { Authorize, SyncLimits, SyncUser } from '../core/config.js';
import { badRequest, SyncError, toSyncError } from '../core/errors.js';
import { type ChangeHub, EntityFilter, type LiveBatch } from '../core/hub.js';
import { CLOSE_SLOW_CONSUMER, ErrorCode, type ServerMessage } from '../core/protocol.js';
import type { SyncService } from '../core/sync-service.js';
import { parseJson } from '../core/validation.js';
import { toWebRequest } from './node.js';

export interface WebSocketOptions {
  path: string;
  limits: SyncLimits;
  /** Server → client ping interval; a socket that misses one is terminated. */
  heartbeatMs: number;
  authorize?: Authorize;
  allowedOrigins?: string[];
  limiter: ConnectionLimiter;
  onError?: (error: unknown) => void;
  /** Extra message types (field-level sync) handled before the entity protocol. */
  extra?: (message: Record<string, unknown>, connection: SyncConnection) => Promise<ServerMessage | null>;
}

/** One client's socket and its subscription state. */
export class SyncConnection {
  filter = new EntityFilter(new Set());
  unsubscribe: (() => void) | null = null;
  alive = true;
  private tokens: number;
  private refilledAt = Date.now();

  constructor(
    readonly socket: WebSocket,
    private readonly limits: SyncLimits,
    /** Who opened the socket (null without an authorize hook). */
    readonly user: SyncUser | null = null,
    /** The upgrade request, kept to re-check the session on every message. */
    readonly request: Request | null = null,
  ) {
    this.tokens = limits.wsMessagesPerSecond;
  }

  /**
   * Send a reply or a batch. Only unpaced live batches (`live`) count against
   * the slow-consumer limit: replies are bounded by the message rate limit and
   * catch-up pages wait for the socket to drain.
   */
  send(message: ServerMessage | string | Buffer, live = false): void {
    if (this.socket.readyState !== this.socket.OPEN) return;
    if (live && this.socket.bufferedAmount > this.limits.maxBufferedBytes) {
      // Never queue without bound for a reader that does not keep up.
      this.socket.close(CLOSE_SLOW_CONSUMER, 'slow consumer: reconnect and pull');
      return;
    }
    // A live batch goes to every subscriber: deflating it would be per-client work (and queue
    // behind zlib's thread pool), so it is sent as encoded once; replies may be compressed.
    const data = typeof message === 'string' || Buffer.isBuffer(message) ? message : JSON.stringify(message);
    this.socket.send(data, { binary: false, compress: !live });
  }

  /** Resolves once the socket's send queue is below half the limit (or the socket is gone). */
  async drained(): Promise<void> {
    while (this.socket.readyState === this.socket.OPEN && this.socket.bufferedAmount > this.limits.maxBufferedBytes / 2) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Token bucket: `wsMessagesPerSecond` sustained, the same as burst. */
  takeToken(): boolean {
    const now = Date.now();
    const rate = this.limits.wsMessagesPerSecond;
    this.tokens = Math.min(rate, this.tokens + ((now - this.refilledAt) / 1000) * rate);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Live batches as UTF-8 bytes per batch and filter, so N sockets share one encoding (not one per send). */
const liveFrames = new WeakMap<LiveBatch, Map<string, Buffer | null>>();

function liveBytes(batch: LiveBatch, filter: EntityFilter): Buffer | null {
  let frames = liveFrames.get(batch);
  if (!frames) {
    frames = new Map();
    liveFrames.set(batch, frames);
  }
  let bytes = frames.get(filter.key);
  if (bytes === undefined) {
    const text = batch.messageFor(filter);
    bytes = text === null ? null : Buffer.from(text);
    frames.set(filter.key, bytes);
  }
  return bytes;
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

/** Who may open a socket. */
export interface UpgradeAccess {
  authorize?: Authorize;
  allowedOrigins?: string[];
  limiter?: ConnectionLimiter;
}

/**
 * Origin, authorization and connection limits, checked before the handshake
 * completes. A refusal is answered on the raw socket with its HTTP status and
 * JSON body, and resolves to null. `request` is kept only when sessions must
 * be re-checked later.
 */
export async function admitUpgrade(
  request: IncomingMessage,
  socket: Duplex,
  access: UpgradeAccess,
): Promise<{ user: SyncUser | null; request: Request | null; release: () => void } | null> {
  const webRequest = toWebRequest(request);
  try {
    checkOrigin(webRequest.headers, webRequest.url, access.allowedOrigins);
    const user = await resolveUser(access.authorize, webRequest);
    const release = access.limiter?.acquire(user) ?? (() => {});
    return { user, request: access.authorize ? webRequest : null, release };
  } catch (error) {
    const refusal = toSyncError(error);
    const body = JSON.stringify(refusal.toBody());
    socket.end(
      `HTTP/1.1 ${refusal.status} ${refusal.code}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
    return null;
  }
}

export class WebSocketTransport {
  readonly server: WebSocketServer;
  private readonly connections = new Set<SyncConnection>();
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly service: SyncService,
    private readonly hub: ChangeHub,
    private readonly options: WebSocketOptions,
  ) {
    this.server = createSocketServer(options.limits);
    this.heartbeat = setInterval(() => this.pingAll(), options.heartbeatMs);
    this.heartbeat.unref();
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Route upgrades for our path on an http(s) server; other paths are left to other listeners. */
  attach(server: Server): void {
    server.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      this.handleUpgrade(request, socket, head);
    });
  }

  /** Take over an upgrade request if it is for our path; returns whether it was. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const path = (request.url ?? '').split('?')[0];
    if (path !== this.options.path) return false;
    void this.admit(request, socket, head);
    return true;
  }

  private async admit(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const admitted = await admitUpgrade(request, socket, this.options);
    if (!admitted) return;
    this.server.handleUpgrade(request, socket, head, (ws) => this.accept(ws, admitted.user, admitted.request, admitted.release));
  }

  private accept(socket: WebSocket, user: SyncUser | null, request: Request | null, release: () => void): void {
    const connection = new SyncConnection(socket, this.options.limits, user, request);
    this.connections.add(connection);
    socket.on('pong', () => {
      connection.alive = true;
    });
    socket.on('message', (data, isBinary) => {
      connection.alive = true;
      void this.onMessage(connection, data as Buffer, isBinary);
    });
    socket.on('close', () => {
      connection.unsubscribe?.();
      this.connections.delete(connection);
      release();
    });
    socket.on('error', () => socket.terminate());
    connection.send({
      type: 'hello',
      version: this.hub.currentVersion,
      server_time: Date.now(),
      entities: this.service.entityNames,
    });
  }

  /** Whether the socket's session is still the same user; closes the socket when it is not. */
  private async sessionValid(connection: SyncConnection): Promise<boolean> {
    if (!connection.request || !this.options.authorize) return true;
    const user = await resolveUser(this.options.authorize, connection.request).catch(() => null);
    if (user?.id === connection.user?.id) return true;
    connection.send({ type: 'error', code: ErrorCode.Unauthorized, message: 'session ended' });
    connection.socket.close(4401, 'session ended');
    return false;
  }

  private async onMessage(connection: SyncConnection, data: Buffer, isBinary: boolean): Promise<void> {
    let ref: string | number | undefined;
    try {
      if (!connection.takeToken()) {
        throw new SyncError(ErrorCode.RateLimited, `more than ${this.options.limits.wsMessagesPerSecond} messages per second`, 429);
      }
      if (isBinary) throw badRequest('binary messages are not supported; send JSON text');
      const message = parseJson(data.toString('utf8'), this.options.limits);
      if (typeof message !== 'object' || message === null || Array.isArray(message)) {
        throw badRequest('a message must be a JSON object');
      }
      const record = message as Record<string, unknown>;
      if (typeof record.ref === 'string' || typeof record.ref === 'number') ref = record.ref;
      if (!(await this.sessionValid(connection))) return;
      const reply = (await this.options.extra?.(record, connection)) ?? (await this.dispatch(record, connection, ref));
      if (reply) connection.send(reply);
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      const reply: ServerMessage = { type: 'error', code: syncError.code, message: syncError.message };
      if (ref !== undefined) reply.ref = ref;
      connection.send(reply);
    }
  }

  private async dispatch(
    message: Record<string, unknown>,
    connection: SyncConnection,
    ref: string | number | undefined,
  ): Promise<ServerMessage | null> {
    // null: the reply was already sent (subscribe sends it before any replayed change).
    const withRef = <T extends ServerMessage>(reply: T): T => (ref === undefined ? reply : { ...reply, ref });
    switch (message.type) {
      case 'ping':
        return withRef({ type: 'pong', server_time: Date.now(), ...(typeof message.t === 'number' ? { t: message.t } : {}) });
      case 'subscribe': {
        const entities = this.service.entityList(message.entities);
        const since = optionalCursor(message.since, 'since');
        const wanted = new Set([...connection.filter.entities, ...entities]);
        // The reply goes out first: with `since`, replayed changes must follow it, as documented.
        connection.send(withRef({ type: 'subscribed', entities: [...wanted], version: this.hub.currentVersion }));
        this.subscribe(connection, wanted, since);
        return null;
      }
      case 'unsubscribe': {
        const entities = this.service.entityList(message.entities);
        const remaining = new Set([...connection.filter.entities].filter((name) => !entities.includes(name)));
        this.subscribe(connection, remaining, undefined);
        return withRef({ type: 'unsubscribed', entities });
      }
      case 'sync': {
        if (typeof message.entity !== 'string') throw badRequest('sync needs an entity');
        const since = optionalCursor(message.since, 'since') ?? 0;
        const limit = optionalCursor(message.limit, 'limit') ?? this.options.limits.defaultPullLimit;
        if (limit < 1 || limit > this.options.limits.maxPullLimit) {
          throw badRequest(`limit must be between 1 and ${this.options.limits.maxPullLimit}`);
        }
        const snapshot = typeof message.snapshot === 'string' ? message.snapshot : null;
        const page = await this.service.pull(message.entity, { since, limit, snapshot }, connection.user);
        return withRef({ type: 'sync', ...page });
      }
      case 'push': {
        if (typeof message.entity !== 'string') throw badRequest('push needs an entity');
        // The seed's single-change shape, or our batch shape with client and mutation ids.
        const body = Array.isArray(message.changes)
          ? { client_id: message.client_id, changes: message.changes }
          : {
              client_id: message.client_id,
              changes: [
                {
                  id: message.entity_id ?? message.id,
                  action: message.action,
                  data: message.data,
                  mutation_id: message.mutation_id,
                  base_version: message.base_version,
                  timestamp: message.timestamp,
                },
              ],
            };
        const response = await this.service.push(message.entity, body, connection.user);
        this.hub.wake();
        const first = response.results[0];
        return withRef({
          type: 'push_ack',
          entity: response.entity,
          entity_id: response.results.length === 1 ? (first?.id ?? null) : undefined,
          version: response.results.length === 1 ? (first?.version ?? response.version) : response.version,
          results: response.results,
        });
      }
      default:
        throw new SyncError(ErrorCode.UnknownMessage, `unknown message type ${JSON.stringify(String(message.type).slice(0, 32))}`);
    }
  }

  private subscribe(connection: SyncConnection, entities: Set<string>, since: number | undefined): void {
    connection.unsubscribe?.();
    const scope = this.service.liveScope(connection.user);
    connection.filter = new EntityFilter(entities, false, scope ? { key: connection.user?.id ?? '', apply: scope } : undefined);
    connection.unsubscribe = null;
    if (entities.size === 0) return;
    const filter = connection.filter;
    connection.unsubscribe = this.hub.subscribe(
      {
        filter,
        deliver(batch, _version, paced) {
          const bytes = liveBytes(batch, filter);
          if (bytes !== null) connection.send(bytes, !paced);
        },
        drained: () => connection.drained(),
      },
      since,
    );
  }

  private pingAll(): void {
    for (const connection of this.connections) {
      if (!connection.alive) {
        connection.socket.terminate();
        continue;
      }
      connection.alive = false;
      connection.socket.ping();
      // Idle sockets too are closed once their session ends.
      void this.sessionValid(connection);
    }
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const connection of this.connections) connection.socket.close(1001, 'server shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function optionalCursor(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${name} must be a non-negative integer`);
  return value as number;
}
