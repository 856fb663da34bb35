/**
 * rhtmx-sync: automatic real-time sync between a server database and the
 * browser's IndexedDB for server-rendered htmx apps.
 *
 * @example
 * ```ts
 * const engine = new SyncEngine({ db, entities: ['todos'] });
 * const server = http.createServer(nodeHandler(engine, app));
 * engine.attach(server);
 * ```
 */

export { nodeHandler } from './adapters/node.js';
export {
  type ConflictResolver,
  DEFAULT_LIMITS,
  type DeletedRenderer,
  type EntityConfig,
  FieldMergeStrategy,
  type FragmentRenderer,
  type RenderContext,
  SyncConfig,
  type SyncEngineOptions,
  type SyncLimits,
  type SyncLogger,
  SyncStrategy,
} from './core/config.js';
export { SyncError } from './core/errors.js';
export { HybridClock, hlcWallMs, packHlc } from './core/hlc.js';
export * from './core/protocol.js';
export type { FieldStore, FieldTarget, Store, TableSchema } from './core/store.js';
export { SyncEngine } from './engine.js';
