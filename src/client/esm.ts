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
export { SyncHttpError } from './net/http.js';
// The API's types: SyncClient, SyncClientOptions, OutboxEntry, LocalChange and the event details.
export type * from './sync-client.js';
export { createSyncClient } from './sync-client.js';
