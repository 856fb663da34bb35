/**
 * Field-level WebSocket, `/api/field-sync/ws`: the seed's field messages.
 *
 * Every request message gets exactly one reply (`subscribed`, `unsubscribed`,
 * `sync`, `latest`, `push_ack`, `pong` or `error`), echoing `ref`. Live
 * changes arrive as `field_change` messages. The limits are the entity
 * socket's: message size, messages per second, bytes queued for a slow reader.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { WebSocket, WebSocketServer } from 'ws';
import { type ConnectionLimiter, resolveUser } from '../core/access.js';
import type { Authorize, SyncLimits, SyncUser } from '../core/config.js';
import { badRequest, SyncError, toSyncError } from '../core/errors.js';
import type { ChangeHub } from '../core/hub.js';
import { EntityFilter } from '../core/hub.js';
import { ErrorCode } from '../core/protocol.js';
import { parseJson } from '../core/validation.js';
import { admitUpgrade, createSocketServer, SyncConnection } from '../transports/websocket.js';
import type { FieldChange, FieldServerMessage } from './protocol.js';
import type { FieldService } from './service.js';

export interface FieldWebSocketOptions {
  path: string;
  limits: SyncLimits;
  /** Server → client ping interval; a socket that misses one is terminated. */
  heartbeatMs: number;
  authorize?: Authorize;
  allowedOrigins?: string[];
  /** The engine's per-user live connection limit, shared with the entity transports. */
  limiter?: ConnectionLimiter;
  onPush: () => void;
  onError?: (error: unknown) => void;
}

type Ref = string | number | undefined;
/** Replies to requests (live `field_change` messages are not replies). */
type FieldReply = Exclude<FieldServerMessage, { type: 'field_change' | 'hello' }>;

/** One socket: rate limiting and back-pressure from the entity transport, plus its field subscription. */
class FieldConnection {
  filter = new EntityFilter(new Set());
  unsubscribe: (() => void) | null = null;

  constructor(readonly link: SyncConnection) {}

  /** Replies, or (`live`) unpaced live batches, which count against the slow-consumer limit. */
  send(message: FieldServerMessage | string, live = false): void {
    this.link.send(typeof message === 'string' ? message : JSON.stringify(message), live);
  }
}

export class FieldWebSocket {
  readonly server: WebSocketServer;
  private readonly connections = new Set<FieldConnection>();
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly service: FieldService,
    private readonly feed: ChangeHub<FieldChange>,
    private readonly options: FieldWebSocketOptions,
  ) {
    this.server = createSocketServer(options.limits);
    this.heartbeat = setInterval(() => this.pingAll(), options.heartbeatMs);
    this.heartbeat.unref();
  }

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

  /** Origin, authorization and connection limits are checked before the handshake completes (as on /api/sync/ws). */
  private async admit(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const admitted = await admitUpgrade(request, socket, this.options);
    if (!admitted) return;
    this.server.handleUpgrade(request, socket, head, (ws) => this.accept(ws, admitted.user, admitted.request, admitted.release));
  }

  private accept(socket: WebSocket, user: SyncUser | null, request: Request | null, release: () => void): void {
    const connection = new FieldConnection(new SyncConnection(socket, this.options.limits, user, request));
    this.connections.add(connection);
    socket.on('pong', () => {
      connection.link.alive = true;
    });
    socket.on('message', (data, isBinary) => {
      connection.link.alive = true;
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
      version: this.feed.currentVersion,
      server_time: Date.now(),
      entities: this.service.entityNames,
      strategy: this.service.strategy,
    });
  }

  private async onMessage(connection: FieldConnection, data: Buffer, isBinary: boolean): Promise<void> {
    let ref: Ref;
    try {
      if (!connection.link.takeToken()) {
        throw new SyncError(ErrorCode.RateLimited, `more than ${this.options.limits.wsMessagesPerSecond} messages per second`, 429);
      }
      if (isBinary) throw badRequest('binary messages are not supported; send JSON text');
      const message = parseJson(data.toString('utf8'), this.options.limits);
      if (typeof message !== 'object' || message === null || Array.isArray(message)) throw badRequest('a message must be a JSON object');
      const record = message as Record<string, unknown>;
      if (typeof record.ref === 'string' || typeof record.ref === 'number') ref = record.ref;
      if (!(await this.sessionValid(connection))) return;
      const reply = await this.dispatch(record, connection, ref);
      if (reply) connection.send(ref === undefined ? reply : { ...reply, ref });
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      const reply: FieldServerMessage = { type: 'error', code: syncError.code, message: syncError.message };
      if (ref !== undefined) reply.ref = ref;
      connection.send(reply);
    }
  }

  /** Whether the socket's session is still the same user; closes the socket when it is not. */
  private async sessionValid(connection: FieldConnection): Promise<boolean> {
    const { link } = connection;
    if (!link.request || !this.options.authorize) return true;
    const user = await resolveUser(this.options.authorize, link.request).catch(() => null);
    if (user?.id === link.user?.id) return true;
    connection.send({ type: 'error', code: ErrorCode.Unauthorized, message: 'session ended' });
    link.socket.close(4401, 'session ended');
    return false;
  }

  /** The reply, or null when it was already sent (subscribe sends it before any replayed change). */
  private async dispatch(message: Record<string, unknown>, connection: FieldConnection, ref?: string | number): Promise<FieldReply | null> {
    switch (message.type) {
      case 'ping':
        return { type: 'pong', server_time: Date.now(), ...(typeof message.t === 'number' ? { t: message.t } : {}) };
      case 'subscribe': {
        const entities = this.service.entityList(message.entities);
        const since = optionalCount(message.since, 'since');
        const wanted = new Set([...connection.filter.entities, ...entities]);
        const reply: FieldReply = { type: 'subscribed', entities: [...wanted], version: this.feed.currentVersion };
        connection.send(ref === undefined ? reply : { ...reply, ref });
        this.subscribe(connection, wanted, since);
        return null;
      }
      case 'unsubscribe': {
        const entities = this.service.entityList(message.entities);
        const remaining = new Set([...connection.filter.entities].filter((name) => !entities.includes(name)));
        this.subscribe(connection, remaining, undefined);
        return { type: 'unsubscribed', entities };
      }
      case 'sync': {
        if (typeof message.entity !== 'string') throw badRequest('sync needs an entity');
        const since = optionalCount(message.since, 'since') ?? 0;
        const limit = optionalCount(message.limit, 'limit') ?? this.options.limits.defaultPullLimit;
        if (limit < 1 || limit > this.options.limits.maxPullLimit) {
          throw badRequest(`limit must be between 1 and ${this.options.limits.maxPullLimit}`);
        }
        const snapshot = typeof message.snapshot === 'string' ? message.snapshot : null;
        return { type: 'sync', ...(await this.service.pull(message.entity, { since, limit, snapshot })) };
      }
      case 'latest': {
        if (typeof message.entity !== 'string') throw badRequest('latest needs an entity');
        const latest = await this.service.latest(message.entity, message.entity_id);
        if (!latest)
          throw new SyncError(ErrorCode.NotFound, `${message.entity} ${JSON.stringify(String(message.entity_id))} does not exist`, 404);
        return { type: 'latest', ...latest };
      }
      case 'push_fields':
        return this.pushFields(message, connection.link.user);
      default:
        throw new SyncError(ErrorCode.UnknownMessage, `unknown message type ${JSON.stringify(String(message.type).slice(0, 32))}`);
    }
  }

  /** The seed's `push_fields`: one row, several fields, rewritten to the HTTP push shape. */
  private async pushFields(message: Record<string, unknown>, user: SyncUser | null): Promise<FieldReply> {
    if (typeof message.entity !== 'string') throw badRequest('push_fields needs an entity');
    if (message.entity_id === undefined || message.entity_id === null) throw badRequest('push_fields needs an entity_id');
    if (!Array.isArray(message.fields)) throw badRequest('push_fields needs a "fields" array');
    const changes = message.fields.map((entry: unknown, index) => {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw badRequest(`fields[${index}] must be an object`);
      const field = entry as Record<string, unknown>;
      return {
        ...field,
        entity_id: message.entity_id,
        mutation_id: field.mutation_id ?? message.mutation_id,
      };
    });
    const response = await this.service.push(message.entity, { client_id: message.client_id, changes }, user);
    this.options.onPush();
    return {
      type: 'push_ack',
      entity: response.entity,
      entity_id: response.results[0]?.entity_id ?? String(message.entity_id),
      applied: response.applied,
      conflicts: response.conflicts,
      rejected: response.rejected,
      version: response.version,
      results: response.results,
    };
  }

  private subscribe(connection: FieldConnection, entities: Set<string>, since: number | undefined): void {
    connection.unsubscribe?.();
    connection.unsubscribe = null;
    connection.filter = new EntityFilter(entities);
    if (entities.size === 0) return;
    connection.unsubscribe = this.feed.subscribe(
      {
        filter: connection.filter,
        deliver: (batch, _version, paced) => {
          const text = batch.messageFor(connection.filter);
          if (text !== null) connection.send(text, !paced);
        },
        drained: () => connection.link.drained(),
      },
      since,
    );
  }

  private pingAll(): void {
    for (const connection of this.connections) {
      if (!connection.link.alive) {
        connection.link.socket.terminate();
        continue;
      }
      connection.link.alive = false;
      connection.link.socket.ping();
    }
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const connection of this.connections) connection.link.socket.close(1001, 'server shutting down');
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function optionalCount(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${name} must be a non-negative integer`);
  return value as number;
}
