/**
 * The one WebSocket endpoint of the engine. It serves both message families,
 * each on its own path: entity sync on `/api/sync/ws` (`change`, `push`) and
 * field-level sync on `/api/field-sync/ws` (`field_change`, `push_fields`,
 * `latest`). Admission, heartbeats, rights re-checks, limits by cost,
 * `subscribe`/`unsubscribe`/`sync`/`ping`, and one reply per request (errors
 * included, echoing `ref`) are the same for both; a family only says hello and
 * answers its own requests (transports/socket/families.ts).
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
import type { RawData, WebSocket } from 'ws';
import type { LiveScope } from '../../core/access.js';
import type { SyncLimits, SyncUser } from '../../core/config.js';
import { badRequest, SyncError, toSyncError } from '../../core/errors.js';
import { type ChangeHub, declaredFraming, EntityFilter, type Family } from '../../core/hub.js';
import { CloseCode, ErrorCode } from '../../core/protocol.js';
import type { PullParams } from '../../core/sync-service.js';
import { parseJson } from '../../core/validation.js';
import { type Access, admit, checkRequest } from '../gate.js';
import { requestHead, toWebRequest } from '../node.js';
import { createSocketServer, type Rescoping, SyncConnection, WS_FRAMINGS } from './connection.js';
import { absorbErrors, refuseUpgrade } from './refuse.js';

/** A message a client sent, and the `ref` to echo. */
export type Ref = string | number | undefined;

/** What one message family adds to the shared endpoint. */
export interface MessageFamily {
  family: Family;
  /** The upgrade path this family is served on. */
  path: string;
  /** The greeting sent when a socket opens. */
  hello(): object;
  /** Validate a `subscribe`/`unsubscribe` entity list. */
  entityList(names: unknown): string[];
  /** One `sync` page. */
  pull(entity: string, params: PullParams, user: SyncUser | null): Promise<{ changes: unknown[] }>;
  /** How live changes look to `user` (read scopes); null when everyone sees the same. */
  liveScope(user: SyncUser | null): LiveScope | null;
  /** The family's own requests (`push`, `push_fields`, `latest`), by message type. Throw SyncErrors to refuse. */
  requests: Record<string, (message: Record<string, unknown>, user: SyncUser | null) => Promise<object>>;
}

export interface SocketEndpointOptions extends Access {
  limits: SyncLimits;
  /** Server → client ping interval; a socket that misses one is terminated. */
  heartbeatMs: number;
  onError?: (error: unknown) => void;
}

export class SocketEndpoint implements Rescoping {
  readonly server: ReturnType<typeof createSocketServer>;
  private readonly connections = new Set<SyncConnection>();
  private readonly heartbeat: ReturnType<typeof setInterval>;
  private readonly families = new Map<Family, MessageFamily>();

  constructor(
    private readonly hub: ChangeHub,
    families: MessageFamily[],
    readonly options: SocketEndpointOptions,
  ) {
    for (const family of families) this.families.set(family.family, family);
    this.server = createSocketServer(options.limits);
    // Handshakes ws refuses itself (bad Upgrade, key or version) come here instead of being thrown.
    this.server.on('wsClientError', (error, socket) => refuseUpgrade(socket, badRequest(`bad WebSocket handshake: ${error.message}`)));
    this.heartbeat = setInterval(() => this.pingAll(), options.heartbeatMs);
    this.heartbeat.unref();
  }

  /** The key of a connection's live view; a connection whose key changes is re-scoped. */
  scopeKey(connection: SyncConnection, user: SyncUser | null): string {
    return this.familyOf(connection).liveScope(user)?.key ?? '';
  }

  /** Re-subscribe a connection whose rights changed, continuing from its cursor. */
  rescope(connection: SyncConnection): void {
    if (connection.unsubscribe) this.subscribe(connection, new Set(connection.filter.entities), connection.cursor);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** The family served at an upgrade request's path, if any. */
  private familyAt(request: IncomingMessage): MessageFamily | undefined {
    const path = (request.url ?? '').split('?')[0];
    for (const family of this.families.values()) if (family.path === path) return family;
    return undefined;
  }

  /** Whether an upgrade request is for one of the families' paths. */
  owns(request: IncomingMessage): boolean {
    return this.familyAt(request) !== undefined;
  }

  /** Take over an upgrade request for one of our paths: admit it or refuse it, never throwing. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    absorbErrors(socket);
    const family = this.familyAt(request);
    if (!family) {
      refuseUpgrade(socket, new SyncError(ErrorCode.NotFound, 'no WebSocket at this path', 404));
      return;
    }
    let framing: SyncConnection['framing'];
    try {
      framing = WS_FRAMINGS[declaredFraming(queryOf(request))];
    } catch (error) {
      refuseUpgrade(socket, toSyncError(error));
      return;
    }
    const sessions = this.options.sessions;
    sessions.admitting++;
    let admitting = true;
    const settle = () => {
      if (!admitting) return;
      admitting = false;
      sessions.admitting--;
    };
    this.admit(family, framing, request, socket, head, settle).then(settle, (error: unknown) => {
      settle();
      this.options.onError?.(error);
      refuseUpgrade(socket, toSyncError(error));
    });
  }

  private async admit(
    family: MessageFamily,
    framing: SyncConnection['framing'],
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    settle: () => void,
  ): Promise<void> {
    let release: () => void = () => {};
    // A Web Request only for an authorize hook (it gets it, and rights re-checks keep it).
    let webRequest: Request | null = null;
    let user: SyncUser | null = null;
    try {
      if (this.options.authorize) {
        webRequest = toWebRequest(request);
        user = await admit(webRequest, this.options, 'live');
      } else checkRequest(requestHead(request), this.options, 'live');
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
    const handshake = releaseOnEarlyClose(socket, release);
    this.server.handleUpgrade(request, socket, head, (ws) => {
      handshake.opened();
      settle();
      if (socket.destroyed) {
        release();
        return;
      }
      this.accept(family, framing, ws, user, webRequest, release, request.socket.remoteAddress);
    });
  }

  private accept(
    family: MessageFamily,
    framing: SyncConnection['framing'],
    socket: WebSocket,
    user: SyncUser | null,
    request: Request | null,
    release: () => void,
    address: string | undefined,
  ): void {
    const held = this.options.sessions.rowBudgetFor(user, address);
    const connection = new SyncConnection(socket, this.options.limits, user, request, this, family.family, held.rows, framing);
    this.connections.add(connection);
    const forget = this.options.sessions.add(connection);
    // One record per socket read by listeners shared by every socket (`this` is the socket), not four closures each.
    (socket as OwnedSocket)[OWNER] = { endpoint: this, connection, releases: [forget, held.release, release] };
    socket.on('pong', onPong);
    socket.on('message', onMessage);
    socket.on('close', onClose);
    socket.on('error', onError);
    connection.send(family.hello());
  }

  /** A socket closed: its subscription, its place and its slots are given back. */
  closed(owner: Owner): void {
    owner.connection.closedBySocket();
    this.connections.delete(owner.connection);
    for (const release of owner.releases) release();
  }

  onMessage(connection: SyncConnection, data: Buffer, isBinary: boolean): void {
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
      const reply = await this.dispatch(this.familyOf(connection), record, connection, ref);
      if (reply) connection.send(ref === undefined ? reply : { ...reply, ref });
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      connection.send(syncError.toMessage(ref));
    }
  }

  /** The family a connection speaks; it was admitted on that family's path, so it is always there. */
  private familyOf(connection: SyncConnection): MessageFamily {
    return this.families.get(connection.family) as MessageFamily;
  }

  /** The reply to one request, or null when it was already sent (subscribe sends it before any replayed change). */
  private async dispatch(
    family: MessageFamily,
    message: Record<string, unknown>,
    connection: SyncConnection,
    ref: Ref,
  ): Promise<object | null> {
    switch (message.type) {
      case 'ping':
        return { type: 'pong', server_time: Date.now(), ...(typeof message.t === 'number' ? { t: message.t } : {}) };
      case 'subscribe': {
        const entities = family.entityList(message.entities);
        const since = optionalCount(message.since, 'since');
        const wanted = new Set([...connection.filter.entities, ...entities]);
        // The reply goes out first: with `since`, replayed changes must follow it, as documented.
        const reply = { type: 'subscribed', entities: [...wanted], version: this.hub.currentVersion };
        connection.send(ref === undefined ? reply : { ...reply, ref });
        this.subscribe(connection, wanted, since);
        return null;
      }
      case 'unsubscribe': {
        const entities = family.entityList(message.entities);
        const remaining = new Set([...connection.filter.entities].filter((name) => !entities.includes(name)));
        this.subscribe(connection, remaining, undefined);
        return { type: 'unsubscribed', entities };
      }
      case 'sync': {
        if (typeof message.entity !== 'string') throw badRequest('sync needs an entity');
        const since = optionalCount(message.since, 'since') ?? 0;
        const limit = optionalCount(message.limit, 'limit') ?? this.options.limits.defaultPullLimit;
        if (limit < 1 || limit > this.options.limits.maxPullLimit)
          throw badRequest(`limit must be between 1 and ${this.options.limits.maxPullLimit}`);
        const snapshot = typeof message.snapshot === 'string' ? message.snapshot : null;
        await connection.rowBudget();
        const page = await family.pull(message.entity, { since, limit, snapshot }, connection.user);
        // A page's rows are charged after it is read.
        connection.spendRows(page.changes.length);
        return { type: 'sync', ...page };
      }
    }
    const request = typeof message.type === 'string' ? family.requests[message.type] : undefined;
    if (!request)
      throw new SyncError(ErrorCode.UnknownMessage, `unknown message type ${JSON.stringify(String(message.type).slice(0, 32))}`);
    return request(message, connection.user);
  }

  private subscribe(connection: SyncConnection, entities: Set<string>, since: number | undefined): void {
    connection.unsubscribe?.();
    const family = this.familyOf(connection);
    connection.filter = new EntityFilter(entities, false, family.liveScope(connection.user) ?? undefined, family.family);
    connection.unsubscribe = null;
    if (entities.size === 0) return;
    connection.cursor = since ?? this.hub.currentVersion;
    connection.unsubscribe = this.hub.subscribe(connection, since);
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

/** What a socket's shared listeners need: its endpoint, its connection, what its close gives back. */
interface Owner {
  endpoint: SocketEndpoint;
  connection: SyncConnection;
  releases: Array<() => void>;
}
const OWNER = Symbol('rhtmx-sync socket owner');
type OwnedSocket = WebSocket & { [OWNER]: Owner };

function onPong(this: WebSocket): void {
  (this as OwnedSocket)[OWNER].connection.alive = true;
}

function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  const { endpoint, connection } = (this as OwnedSocket)[OWNER];
  connection.alive = true;
  endpoint.onMessage(connection, data as Buffer, isBinary);
}

function onClose(this: WebSocket): void {
  const owner = (this as OwnedSocket)[OWNER];
  owner.endpoint.closed(owner);
}

function onError(this: WebSocket): void {
  this.terminate();
}

/**
 * Give a connection slot back when the socket closes before its handshake
 * completed. A closure of its own: the listener lives as long as the socket,
 * and one created inside `admit` would keep that function's whole scope
 * (the upgrade request, its Web Request, the head buffer) alive with it.
 */
function releaseOnEarlyClose(socket: Duplex, release: () => void): { opened(): void } {
  const early = () => release();
  socket.on('close', early);
  // Once open, the connection's own close listener gives the slot back.
  return { opened: () => socket.off('close', early) };
}

/** The query string of an upgrade request's URL. */
const queryOf = (request: IncomingMessage): URLSearchParams => {
  const url = request.url ?? '';
  const start = url.indexOf('?');
  return new URLSearchParams(start < 0 ? '' : url.slice(start + 1));
};

/** An optional non-negative integer field of a message. */
export function optionalCount(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${name} must be a non-negative integer`);
  return value as number;
}
