/**
 * Field-level WebSocket, `/api/field-sync/ws`: the seed's field messages.
 *
 * Every request message gets exactly one reply (`subscribed`, `unsubscribed`,
 * `sync`, `latest`, `push_ack`, `pong` or `error`), echoing `ref`. Live
 * changes arrive as `field_change` messages. The limits are the entity
 * socket's: message size, messages per second, bytes queued for a slow reader.
 */
import type { SyncUser } from '../core/config.js';
import { badRequest, SyncError } from '../core/errors.js';
import { type ChangeHub, EntityFilter } from '../core/hub.js';
import type { FieldChange, FieldServerMessage } from '../core/protocol.js';
import { ErrorCode } from '../core/protocol.js';
import {
  optionalCount,
  pageLimit,
  type Ref,
  SocketEndpoint,
  type SocketEndpointOptions,
  type SyncConnection,
} from '../transports/socket-endpoint.js';
import type { FieldService } from './service.js';

/** Replies to requests (live `field_change` messages are not replies). */
type FieldReply = Exclude<FieldServerMessage, { type: 'field_change' | 'hello' }>;

export class FieldWebSocket extends SocketEndpoint {
  constructor(
    private readonly service: FieldService,
    private readonly feed: ChangeHub<FieldChange>,
    options: SocketEndpointOptions,
    /** After every push: wake the entity hub and the field feed. */
    private readonly onPush: () => void,
  ) {
    super(options);
  }

  protected hello(): FieldServerMessage {
    return {
      type: 'hello',
      version: this.feed.currentVersion,
      server_time: Date.now(),
      entities: this.service.entityNames,
      strategy: this.service.strategy,
    };
  }

  /** The reply, or null when it was already sent (subscribe sends it before any replayed change). */
  protected async dispatch(message: Record<string, unknown>, connection: SyncConnection, ref: Ref): Promise<FieldReply | null> {
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
        const limit = pageLimit(message, this.options.limits);
        const snapshot = typeof message.snapshot === 'string' ? message.snapshot : null;
        await connection.rowBudget();
        const page = await this.service.pull(message.entity, { since, limit, snapshot });
        connection.spendRows(page.changes.length);
        return { type: 'sync', ...page };
      }
      case 'latest': {
        if (typeof message.entity !== 'string') throw badRequest('latest needs an entity');
        const latest = await this.service.latest(message.entity, message.entity_id);
        if (!latest)
          throw new SyncError(ErrorCode.NotFound, `${message.entity} ${JSON.stringify(String(message.entity_id))} does not exist`, 404);
        return { type: 'latest', ...latest };
      }
      case 'push_fields':
        return this.pushFields(message, connection.user);
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
    this.onPush();
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

  private subscribe(connection: SyncConnection, entities: Set<string>, since: number | undefined): void {
    connection.unsubscribe?.();
    connection.unsubscribe = null;
    connection.filter = new EntityFilter(entities);
    if (entities.size === 0) return;
    connection.unsubscribe = this.feed.subscribe(
      {
        filter: connection.filter,
        deliver: (batch, version, paced) => {
          connection.cursor = version;
          if (paced) connection.spendRows(batch.changes.length);
          const text = batch.messageFor(connection.filter);
          if (text !== null) connection.send(text, !paced, paced);
        },
        drained: () => connection.drained(),
      },
      since,
    );
  }
}
