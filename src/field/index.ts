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
import type { FieldChange } from '../core/protocol.js';
import { ErrorCode } from '../core/protocol.js';
import type { Store } from '../core/store.js';
import type { SyncService } from '../core/sync-service.js';
import type { Access } from '../transports/gate.js';
import { errorResponse } from '../transports/http.js';
import { refuseUpgrade } from '../transports/refuse.js';
import { FieldHttpRoutes } from './http.js';
import { FieldService } from './service.js';
import { FieldWebSocket } from './websocket.js';

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

export async function createFieldSync(deps: FieldSyncDeps): Promise<FieldSyncModule> {
  if (!deps.store.openFieldStore) return unavailable(deps);
  const store = await deps.store.openFieldStore();
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
  deps.logger.debug({ strategy: deps.strategy }, 'rhtmx-sync: field sync ready');
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
 * Field sync configured on a custom Store without the field capability:
 * entity-level sync keeps working, and every field route says why it cannot
 * answer instead of pretending the feature is not there.
 */
function unavailable(deps: FieldSyncDeps): FieldSyncModule {
  const message =
    'field-level sync needs a store with field bookkeeping (Store.openFieldStore; the built-in SQLite and PostgreSQL stores have it); entity-level sync under /api/sync works';
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
