/**
 * Field-level sync (the seed's "Field-Level Sync"): per-field versions and
 * HLC timestamps, so two clients editing different fields of one row both
 * keep their edits, and concurrent edits of the same field are settled by the
 * configured FieldMergeStrategy. The engine calls `createFieldSync` when
 * `fieldSync` is configured and mounts what it returns under
 * `/api/field-sync` (HTTP) and `/api/field-sync/ws` (WebSocket).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FieldMergeStrategy, SyncLimits, SyncLogger } from '../core/config.js';
import { SyncError } from '../core/errors.js';
import type { HybridClock } from '../core/hlc.js';
import { ChangeHub } from '../core/hub.js';
import { ErrorCode } from '../core/protocol.js';
import type { Store } from '../core/store.js';
import type { SyncService } from '../core/sync-service.js';
import type { Access } from '../transports/gate.js';
import { errorResponse } from '../transports/http.js';
import { refuseUpgrade } from '../transports/refuse.js';
import { FieldHttpRoutes } from './http.js';
import type { FieldChange } from './protocol.js';
import { FieldService } from './service.js';
import type { FieldStore } from './store.js';
import { FieldWebSocket } from './websocket.js';

export type { FieldPolicy } from './merge.js';
export { decideField } from './merge.js';
export * from './protocol.js';
export type { FieldStore, FieldTarget } from './store.js';

/** What the engine hands the field-sync module. */
export interface FieldSyncDeps extends Access {
  store: Store;
  service: SyncService;
  hub: ChangeHub;
  clock: HybridClock;
  strategy: FieldMergeStrategy;
  limits: SyncLimits;
  /** `/api/field-sync` unless configured otherwise. */
  basePath: string;
  logger: SyncLogger;
  /** WebSocket ping interval, ms (default 30 s). */
  heartbeatMs?: number;
}

/** The field-sync routes, mounted by the engine. */
export interface FieldSyncModule {
  /** Answer `/api/field-sync/*` HTTP requests; null for other paths. */
  handle(request: Request, url: URL): Promise<Response | null>;
  /** Take over `/api/field-sync/ws` upgrades; false for other paths. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Open field sockets and their live subscriptions. */
  counts(): { websocket: number; live: number };
  close(): Promise<void>;
}

const isBetterSqlite = (db: unknown): boolean => typeof db === 'object' && db !== null && 'prepare' in db && 'pragma' in db;
const isPgPool = (db: unknown): boolean => typeof db === 'object' && db !== null && 'query' in db && 'connect' in db;

/** The FieldStore for the engine's database, or null when it has none (a custom Store without a pg pool). */
async function openFieldStore(store: Store): Promise<FieldStore | null> {
  switch (store.dialect) {
    case 'sqlite': {
      const db = (store as { db?: unknown }).db;
      if (!isBetterSqlite(db)) throw new TypeError('rhtmx-sync: field-level sync on SQLite needs the built-in SqliteStore');
      const { SqliteFieldStore } = await import('../stores/sqlite-fields.js');
      return new SqliteFieldStore(db as ConstructorParameters<typeof SqliteFieldStore>[0]);
    }
    case 'postgres': {
      const pool = (store as { pool?: unknown }).pool;
      if (!isPgPool(pool)) return null;
      const { PostgresFieldStore } = await import('../stores/postgres-fields.js');
      return new PostgresFieldStore(pool as ConstructorParameters<typeof PostgresFieldStore>[0], store);
    }
  }
}

export async function createFieldSync(deps: FieldSyncDeps): Promise<FieldSyncModule> {
  const store = await openFieldStore(deps.store);
  if (!store) return unavailable(deps);
  const onError = (error: unknown) => deps.logger.error({ err: error }, 'rhtmx-sync: field sync internal error');
  const service = new FieldService(store, deps.service, deps.clock, deps.strategy, deps.limits);
  await store.init(service.allTargets());
  // Field changes fan out through the same hub machinery as entity changes, woken by the same store watch.
  const feed = new ChangeHub<FieldChange>(
    {
      messageType: 'field_change',
      currentVersion: () => store.currentVersion(),
      read: (since, limit) => store.readChanges(since, limit),
      watch: (onChange) => deps.store.watch(onChange),
    },
    { onError },
  );
  await feed.start();
  const onPush = () => {
    // The hub wakes entity-level live clients; the feed sends field_change without waiting for a poll.
    deps.hub.wake();
    feed.wake();
  };
  const access: Access = {
    authorize: deps.authorize,
    allowedOrigins: deps.allowedOrigins,
    allowedHosts: deps.allowedHosts,
    sessions: deps.sessions,
  };
  const http = new FieldHttpRoutes(service, { ...access, basePath: deps.basePath, limits: deps.limits, onPush, onError });
  const ws = new FieldWebSocket(
    service,
    feed,
    { ...access, path: `${deps.basePath}/ws`, limits: deps.limits, heartbeatMs: deps.heartbeatMs ?? 30_000, onError },
    onPush,
  );
  deps.logger.debug({ strategy: deps.strategy, dialect: store.dialect }, 'rhtmx-sync: field sync ready');
  return {
    handle: (request, url) => http.handle(request, url),
    handleUpgrade: (request, socket, head) => {
      if (!ws.owns(request)) return false;
      ws.handleUpgrade(request, socket, head);
      return true;
    },
    counts: () => ({ websocket: ws.connectionCount, live: feed.subscriberCount }),
    async close() {
      feed.stop();
      await ws.close();
      await store.close();
    },
  };
}

/**
 * Field sync configured on a custom Store the field module cannot reach the
 * database through: entity-level sync keeps working, and every field route
 * says why it cannot answer instead of pretending the feature is not there.
 */
function unavailable(deps: FieldSyncDeps): FieldSyncModule {
  const message = `field-level sync needs the built-in ${deps.store.dialect} store (this Store has no field bookkeeping); entity-level sync under /api/sync works`;
  deps.logger.warn(`rhtmx-sync: ${message}`);
  const base = deps.basePath;
  const ours = (path: string) => path === base || path.startsWith(`${base}/`);
  return {
    async handle(_request, url) {
      return ours(url.pathname) ? errorResponse(new SyncError(ErrorCode.NotImplemented, message, 501)) : null;
    },
    handleUpgrade(request, socket) {
      if ((request.url ?? '').split('?')[0] !== `${base}/ws`) return false;
      refuseUpgrade(socket, new SyncError(ErrorCode.NotImplemented, message, 501));
      return true;
    },
    counts: () => ({ websocket: 0, live: 0 }),
    async close() {},
  };
}
