/**
 * What every JSON WebSocket endpoint of the engine shares (`/api/sync/ws` and
 * `/api/field-sync/ws`): admission before the handshake (origin, authorize,
 * per-user limits), one SyncConnection per socket (rate limit, slow-consumer
 * bound), heartbeats that drop dead sockets and close ended sessions, and one
 * reply per request, errors included, echoing `ref`. Subclasses only say hello
 * and dispatch messages.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { type WebSocket, WebSocketServer } from 'ws';
import { type ConnectionLimiter, checkOrigin, resolveUser } from '../core/access.js';
import type { Authorize, SyncLimits, SyncUser } from '../core/config.js';
import { badRequest, SyncError, toSyncError } from '../core/errors.js';
import { EntityFilter } from '../core/hub.js';
import { CLOSE_SLOW_CONSUMER, ErrorCode } from '../core/protocol.js';
import { parseJson } from '../core/validation.js';
import { toWebRequest } from './node.js';

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
  send(message: object | string | Buffer, live = false): void {
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

export interface SocketEndpointOptions extends UpgradeAccess {
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
  private readonly heartbeat: NodeJS.Timeout;

  constructor(protected readonly options: SocketEndpointOptions) {
    this.server = createSocketServer(options.limits);
    this.heartbeat = setInterval(() => this.pingAll(), options.heartbeatMs);
    this.heartbeat.unref();
  }

  /** The greeting sent when a socket opens. */
  protected abstract hello(): object;

  /** The reply to one request, or null when the reply was already sent. Throw SyncErrors to refuse. */
  protected abstract dispatch(message: Record<string, unknown>, connection: SyncConnection, ref: Ref): Promise<object | null>;

  get connectionCount(): number {
    return this.connections.size;
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
    connection.send(this.hello());
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
    let ref: Ref;
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

/** An optional non-negative integer field of a message. */
export function optionalCount(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${name} must be a non-negative integer`);
  return value as number;
}
