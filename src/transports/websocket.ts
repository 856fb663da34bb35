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

import type { SyncUser } from '../core/config.js';
import { badRequest, SyncError } from '../core/errors.js';
import { type ChangeHub, EntityFilter, type LiveBatch } from '../core/hub.js';
import type { ServerMessage } from '../core/protocol.js';
import { ErrorCode } from '../core/protocol.js';
import type { SyncService } from '../core/sync-service.js';
import { optionalCount, pageLimit, type Ref, SocketEndpoint, type SocketEndpointOptions, type SyncConnection } from './socket-endpoint.js';

export { SyncConnection } from './socket-endpoint.js';

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

export class WebSocketTransport extends SocketEndpoint {
  constructor(
    private readonly service: SyncService,
    private readonly hub: ChangeHub,
    options: SocketEndpointOptions,
  ) {
    super(options);
  }

  protected hello(): ServerMessage {
    return { type: 'hello', version: this.hub.currentVersion, server_time: Date.now(), entities: this.service.entityNames };
  }

  protected async dispatch(message: Record<string, unknown>, connection: SyncConnection, ref: Ref): Promise<ServerMessage | null> {
    // null: the reply was already sent (subscribe sends it before any replayed change).
    const withRef = <T extends ServerMessage>(reply: T): T => (ref === undefined ? reply : { ...reply, ref });
    switch (message.type) {
      case 'ping':
        return withRef({ type: 'pong', server_time: Date.now(), ...(typeof message.t === 'number' ? { t: message.t } : {}) });
      case 'subscribe': {
        const entities = this.service.entityList(message.entities);
        const since = optionalCount(message.since, 'since');
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
        const since = optionalCount(message.since, 'since') ?? 0;
        const limit = pageLimit(message, this.options.limits);
        const snapshot = typeof message.snapshot === 'string' ? message.snapshot : null;
        await connection.rowBudget();
        const page = await this.service.pull(message.entity, { since, limit, snapshot }, connection.user);
        connection.spendRows(page.changes.length);
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

  override scopeKey(user: SyncUser | null): string {
    return this.service.liveScope(user)?.key ?? '';
  }

  override rescope(connection: SyncConnection): void {
    if (connection.unsubscribe) this.subscribe(connection, new Set(connection.filter.entities), connection.cursor);
  }

  private subscribe(connection: SyncConnection, entities: Set<string>, since: number | undefined): void {
    connection.unsubscribe?.();
    connection.filter = new EntityFilter(entities, false, this.service.liveScope(connection.user) ?? undefined);
    connection.unsubscribe = null;
    if (entities.size === 0) return;
    const filter = connection.filter;
    connection.cursor = since ?? this.hub.currentVersion;
    connection.unsubscribe = this.hub.subscribe(
      {
        filter,
        deliver(batch, version, paced) {
          connection.cursor = version;
          // Replayed pages cost what they read; live batches are read once for everyone.
          if (paced) connection.spendRows(batch.changes.length);
          const bytes = liveBytes(batch, filter);
          if (bytes !== null) connection.send(bytes, !paced, paced);
        },
        drained: () => connection.drained(),
      },
      since,
    );
  }
}
