/**
 * The two message families of the one socket endpoint: what each says in
 * `hello` and the requests only it answers. Both rewrite the original crate's
 * message shapes (docs/protocol.md) into the services' push bodies, so the
 * socket and HTTP pushes run the same code.
 */
import { badRequest, SyncError } from '../../core/errors.js';
import type { FieldService } from '../../core/field/service.js';
import type { ChangeHub } from '../../core/hub.js';
import { ErrorCode } from '../../core/protocol.js';
import type { SyncService } from '../../core/sync-service.js';
import type { MessageFamily } from './endpoint.js';

/** Entity sync on `<basePath>/ws`: `change` messages, `push`. */
export function entityMessages(service: SyncService, hub: ChangeHub, path: string): MessageFamily {
  return {
    family: 'change',
    path,
    hello: () => ({ type: 'hello', version: hub.currentVersion, server_time: Date.now(), entities: service.entityNames }),
    entityList: (names) => service.entityList(names),
    pull: (entity, params, user) => service.pull(entity, params, user),
    liveScope: (user) => service.liveScope(user),
    requests: {
      async push(message, user) {
        if (typeof message.entity !== 'string') throw badRequest('push needs an entity');
        // The original crate's single-change shape, or our batch shape with client and mutation ids.
        const changes = Array.isArray(message.changes)
          ? message.changes
          : [
              {
                id: message.entity_id ?? message.id,
                action: message.action,
                data: message.data,
                mutation_id: message.mutation_id,
                base_version: message.base_version,
                timestamp: message.timestamp,
              },
            ];
        const response = await service.push(
          message.entity,
          { client_id: message.client_id, fresh: message.fresh, retry: message.retry, changes },
          user,
        );
        hub.wake();
        const single = response.results.length === 1 ? response.results[0] : undefined;
        return {
          type: 'push_ack',
          entity: response.entity,
          entity_id: single ? single.id : undefined,
          version: single?.version ?? response.version,
          results: response.results,
        };
      },
    },
  };
}

/** Field-level sync on `<fieldBasePath>/ws`: `field_change` messages, `push_fields`, `latest`. */
export function fieldMessages(service: FieldService, hub: ChangeHub, path: string): MessageFamily {
  return {
    family: 'field_change',
    path,
    hello: () => ({
      type: 'hello',
      version: hub.currentVersion,
      server_time: Date.now(),
      entities: service.entityNames,
      strategy: service.strategy,
    }),
    entityList: (names) => service.entityList(names),
    pull: (entity, params, user) => service.pull(entity, params, user),
    liveScope: (user) => service.liveScope(user),
    requests: {
      async latest(message, user) {
        if (typeof message.entity !== 'string') throw badRequest('latest needs an entity');
        const latest = await service.latest(message.entity, message.entity_id, user);
        if (!latest) {
          throw new SyncError(
            ErrorCode.NotFound,
            `${message.entity} ${JSON.stringify(String(message.entity_id).slice(0, 64))} does not exist`,
            404,
          );
        }
        return { type: 'latest', ...latest };
      },
      /** One row, several fields, rewritten to the HTTP push shape. */
      async push_fields(message, user) {
        if (typeof message.entity !== 'string') throw badRequest('push_fields needs an entity');
        if (message.entity_id === undefined || message.entity_id === null) throw badRequest('push_fields needs an entity_id');
        if (!Array.isArray(message.fields)) throw badRequest('push_fields needs a "fields" array');
        const changes = message.fields.map((entry: unknown, index) => {
          if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw badRequest(`fields[${index}] must be an object`);
          const field = entry as Record<string, unknown>;
          return { ...field, entity_id: message.entity_id, mutation_id: field.mutation_id ?? message.mutation_id };
        });
        const response = await service.push(
          message.entity,
          { client_id: message.client_id, fresh: message.fresh, retry: message.retry, changes },
          user,
        );
        hub.wake();
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
      },
    },
  };
}
