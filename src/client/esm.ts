/**
 * ESM entry for bundler users: `import { createSyncClient } from 'rhtmx-sync/client'`.
 * Nothing runs on import; `createSyncClient(options)` starts syncing.
 *
 * @example
 * ```ts
 * const sync = createSyncClient({ baseUrl: '/api/sync', entities: ['todos'] });
 * await sync.ready;
 * await sync.push('todos', { action: 'create', data: { title: 'Milk', done: false } });
 * ```
 */
export type { Change, ChangeAction, PushResult, Row } from '../core/protocol.js';
export {
  type ChangedDetail,
  type ConflictDetail,
  type ConnectionState,
  type ConnectionStateDetail,
  createSyncClient,
  type LocalChange,
  type OutboxEntry,
  type ProgressDetail,
  type QueuedDetail,
  type SyncClient,
  type SyncClientOptions,
  type SyncErrorDetail,
} from './sync-client.js';
