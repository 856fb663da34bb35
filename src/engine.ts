/**
 * SyncEngine: the composition root. It picks a store for the database it is
 * given, installs change capture, starts the fan-out hub and exposes the
 * routes as a Web-standard `fetch` plus `attach(server)` for WebSockets.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  DEFAULT_LIMITS,
  type FieldMergeStrategy,
  type ResolvedEntity,
  resolveEntities,
  type SyncConfig,
  type SyncEngineOptions,
  type SyncLimits,
  type SyncLogger,
} from './core/config.js';
import { SyncError } from './core/errors.js';
import { FieldService } from './core/field/service.js';
import { HybridClock } from './core/hlc.js';
import { ChangeHub, type Fragments, storeSource } from './core/hub.js';
import { type MetricsSnapshot, SyncMetrics } from './core/metrics.js';
import {
  DEFAULT_BASE_PATH,
  DEFAULT_FIELD_BASE_PATH,
  ErrorCode,
  type PullResponse,
  type PushResponse,
  type Row,
  type SchemaResponse,
} from './core/protocol.js';
import { LiveSessions } from './core/sessions.js';
import type { Store, TableSchema } from './core/store.js';
import { SyncService } from './core/sync-service.js';
import { loadTracing } from './core/tracing.js';
import { ClientAssets } from './transports/assets.js';
import { HttpRoutes } from './transports/http.js';
import { nodeHandler, routeUpgrade } from './transports/node.js';
import { SocketEndpoint } from './transports/socket/endpoint.js';
import { entityMessages, fieldMessages } from './transports/socket/families.js';
import { refuseUpgrade } from './transports/socket/refuse.js';

function consoleLogger(debug: boolean): SyncLogger {
  const write = (level: string, sink: (...args: unknown[]) => void) => (obj: object | string, msg?: string) =>
    sink(`[rhtmx-sync] ${level}`, typeof obj === 'string' ? obj : (msg ?? ''), typeof obj === 'string' ? '' : obj);
  return {
    debug: debug ? write('debug', console.debug) : () => {},
    info: debug ? write('info', console.info) : () => {},
    warn: write('warn', console.warn),
    error: write('error', console.error),
  };
}

/** Anything that emits Node's `upgrade` event: http.Server, https.Server, the servers of Express, Hono and Fastify. */
export interface UpgradeSource {
  on(event: 'upgrade', listener: (request: IncomingMessage, socket: Duplex, head: Buffer) => void): unknown;
  listenerCount?(event: 'upgrade'): number;
}

/** Methods of a pino-style logger keep their `this`. */
function bind(logger: SyncLogger): SyncLogger {
  return {
    debug: logger.debug.bind(logger),
    info: logger.info.bind(logger),
    warn: logger.warn.bind(logger),
    error: logger.error.bind(logger),
  };
}

const isStore = (db: unknown): db is Store => typeof db === 'object' && db !== null && 'readLog' in db && 'push' in db && 'init' in db;
const isBetterSqlite = (db: unknown): boolean => typeof db === 'object' && db !== null && 'prepare' in db && 'pragma' in db;
const isPgPool = (db: unknown): boolean => typeof db === 'object' && db !== null && 'query' in db && 'connect' in db && !('prepare' in db);

export class SyncEngine {
  /** Resolves once tables are introspected and triggers installed. Requests wait for it. */
  readonly ready: Promise<void>;
  readonly basePath: string;
  readonly fieldBasePath: string;
  readonly limits: SyncLimits;
  readonly logger: SyncLogger;
  readonly clock: HybridClock;
  readonly entities: ResolvedEntity[];
  readonly fieldStrategy: FieldMergeStrategy | null;
  private readonly options: SyncEngineOptions;
  private state: {
    store: Store;
    service: SyncService;
    hub: ChangeHub;
    http: HttpRoutes;
    sockets: SocketEndpoint;
    fields: FieldService | SyncError | null;
    sessions: LiveSessions;
    stopFollowing: () => void;
  } | null = null;
  private closed = false;

  constructor(config: SyncEngineOptions | SyncConfig) {
    this.options = config;
    this.entities = resolveEntities(config);
    this.basePath = (config.basePath ?? DEFAULT_BASE_PATH).replace(/\/+$/, '');
    this.fieldBasePath = (config.fieldBasePath ?? DEFAULT_FIELD_BASE_PATH).replace(/\/+$/, '');
    this.limits = { ...DEFAULT_LIMITS, ...config.limits };
    // Quiet by default (warnings and errors only); `debug: true` is the original crate's debug logging.
    const logger = config.logger ?? consoleLogger(config.debug === true);
    this.logger = config.debug ? logger : { ...bind(logger), debug() {}, info() {} };
    this.clock = new HybridClock(Date.now, config.maxClockDriftMs);
    this.fieldStrategy = config.fieldSync ? config.fieldSync : null;
    this.ready = this.init();
    // A failed init is reported to every request and to `await engine.ready`; avoid an unhandled rejection meanwhile.
    this.ready.catch(() => {});
  }

  /** The original crate's `SyncEngine::new(config).await`. */
  static async create(config: SyncEngineOptions | SyncConfig): Promise<SyncEngine> {
    const engine = new SyncEngine(config);
    await engine.ready;
    return engine;
  }

  private async createStore(): Promise<Store> {
    const db = this.options.db;
    if (isStore(db)) return db;
    if (isBetterSqlite(db)) {
      const { SqliteStore } = await import('./stores/sqlite/index.js');
      return new SqliteStore(db as ConstructorParameters<typeof SqliteStore>[0], { pollMs: this.options.pollMs });
    }
    if (isPgPool(db)) {
      const { PostgresStore } = await import('./stores/postgres/index.js');
      return new PostgresStore(db as ConstructorParameters<typeof PostgresStore>[0], { pollMs: this.options.pollMs });
    }
    throw new TypeError('SyncEngine: `db` must be a better-sqlite3 Database, a pg Pool or a Store');
  }

  private async init(): Promise<void> {
    const store = await this.createStore();
    const schemas = await store.init(
      this.entities.map((entity) => ({ entity: entity.name, table: entity.table, primaryKey: entity.primaryKey })),
    );
    await loadTracing();
    const metrics = new SyncMetrics();
    const service = new SyncService(store, this.entities, schemas, this.clock, this.limits, this.fieldStrategy !== null, metrics);
    const onError = (error: unknown) => this.logger.error({ err: error }, 'rhtmx-sync: internal error');
    const fields = await this.openFields(store, service);
    const fieldStore = fields instanceof FieldService ? fields.store : null;
    const hub = new ChangeHub(storeSource(store, fieldStore), {
      onError,
      fragments: liveFragments(this.entities, (error, entity) =>
        this.logger.error({ err: error, entity }, 'rhtmx-sync: live HTML render failed; the change goes without HTML'),
      ),
      onPublished: (changes, seconds) => metrics.recordFanout(changes, seconds),
    });
    // Before the hub starts watching: the store follows DDL only while watched.
    const stopFollowing =
      store.onSchemaChange?.(
        (schemas) => this.followSchemas(schemas, service, fields, hub),
        (error) => this.logger.error({ err: error }, 'rhtmx-sync: cannot follow a schema change'),
      ) ?? (() => {});
    await hub.start();
    const sessions = new LiveSessions(
      this.limits.maxConnectionsPerUser,
      this.options.rightsRecheckMs ?? 5_000,
      this.limits.wsRowsPerSecond,
    );
    const access = {
      authorize: this.options.authorize,
      allowedOrigins: this.options.allowedOrigins,
      allowedHosts: this.options.allowedHosts,
      sessions,
    };
    const http = new HttpRoutes(service, fields, hub, {
      ...access,
      basePath: this.basePath,
      fieldBasePath: this.fieldBasePath,
      limits: this.limits,
      heartbeatMs: this.options.heartbeatMs ?? 15_000,
      assets: new ClientAssets(this.options.clientDir),
      onError,
    });
    const families = [entityMessages(service, hub, `${this.basePath}/ws`)];
    if (fields instanceof FieldService) families.push(fieldMessages(fields, hub, `${this.fieldBasePath}/ws`));
    const sockets = new SocketEndpoint(hub, families, {
      ...access,
      limits: this.limits,
      heartbeatMs: this.options.heartbeatMs ?? 30_000,
      onError,
    });
    this.state = { store, service, hub, http, sockets, fields, sessions, stopFollowing };
    this.logger.debug({ entities: service.entityNames }, 'rhtmx-sync: ready');
  }

  /**
   * A synced table changed shape (ALTER TABLE by anyone, live): the store has
   * re-installed its triggers and raised the entity's must-refetch horizon.
   * Pushes, validation, `/schema` and field sync take the new columns from
   * now on, and every live connection subscribed to the entity is told to
   * refetch (WebSocket closed with 4205, SSE stream ended): the client
   * reconnects and pulls from its cursor, which is below the horizon, so the
   * answer is a reset snapshot of the new shape.
   */
  private followSchemas(schemas: TableSchema[], service: SyncService, fields: FieldService | SyncError | null, hub: ChangeHub): void {
    for (const schema of schemas) {
      service.adoptSchema(schema);
      if (fields instanceof FieldService) fields.adoptSchema(schema.entity);
      const told = hub.refetch(schema.entity);
      this.logger.info(
        { entity: schema.entity, columns: schema.columns.map((column) => column.name), refetching: told },
        `rhtmx-sync: ${schema.entity} changed shape; capture re-installed, clients refetch it`,
      );
    }
  }

  /**
   * Field-level sync when configured: a FieldService over the store's field
   * capability, or, for a store without one, the refusal every field route
   * answers with (entity-level sync keeps working).
   */
  private async openFields(store: Store, service: SyncService): Promise<FieldService | SyncError | null> {
    if (this.fieldStrategy === null) return null;
    if (!store.openFieldStore) {
      const message =
        'field-level sync needs a store with field bookkeeping (Store.openFieldStore; the built-in SQLite and PostgreSQL stores have it); entity-level sync under /api/sync works';
      this.logger.warn(`rhtmx-sync: ${message}`);
      return new SyncError(ErrorCode.NotImplemented, message, 501);
    }
    const fieldStore = await store.openFieldStore();
    const fields = new FieldService(fieldStore, service, this.clock, this.fieldStrategy, this.limits);
    await fieldStore.init(fields.allTargets());
    return fields;
  }

  private async running() {
    await this.ready;
    if (!this.state || this.closed) throw new SyncError(ErrorCode.Unavailable, 'sync engine is closed', 503);
    return this.state;
  }

  /** Whether a path belongs to the engine (sync or field-sync routes). */
  matches(pathname: string): boolean {
    return [this.basePath, this.fieldBasePath].some((base) => pathname === base || pathname.startsWith(`${base}/`));
  }

  /** Answer a request for one of the engine's routes; null when the path is not the engine's. */
  async handle(request: Request): Promise<Response | null> {
    if (!this.matches(new URL(request.url).pathname)) return null;
    try {
      const { http } = await this.running();
      return await http.handle(request);
    } catch (error) {
      return (error instanceof SyncError ? error : new SyncError(ErrorCode.Unavailable, 'sync engine unavailable', 503)).toResponse();
    }
  }

  /** Web-standard handler: the engine's answer, or a JSON 404 for any other path. */
  fetch = async (request: Request): Promise<Response> => {
    return (
      (await this.handle(request)) ??
      new SyncError(ErrorCode.NotFound, `no route ${new URL(request.url).pathname.slice(0, 100)}`, 404).toResponse()
    );
  };

  /** node:http handler: answers and returns true for the engine's paths, returns false for others. */
  handleNode: (req: IncomingMessage, res: ServerResponse) => Promise<boolean> = nodeHandler(this);

  /**
   * Route WebSocket upgrades for the engine's paths on this server. An upgrade
   * for any other path is the app's when it listens for upgrades too; when the
   * engine is the only listener, it answers 404 (a socket left unanswered
   * would stay open, and a reset on it would have no error listener).
   */
  attach(server: UpgradeSource): this {
    const listener = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.handleUpgrade(request, socket, head)) return;
      if (typeof server.listenerCount === 'function' && server.listenerCount('upgrade') > 1) return;
      refuseUpgrade(socket, new SyncError(ErrorCode.NotFound, 'no WebSocket at this path', 404));
    };
    server.on('upgrade', listener);
    return this;
  }

  /** Take over an upgrade for the engine's paths (never throwing); returns false for other paths. */
  handleUpgrade: (request: IncomingMessage, socket: Duplex, head: Buffer) => boolean = routeUpgrade(
    (path) => this.matches(path),
    async () => {
      const { sockets, fields } = await this.running();
      if (!(fields instanceof SyncError)) return sockets;
      // Field sync configured on a store that cannot keep it: its socket says why, like its routes.
      return {
        owns: (request: IncomingMessage) => sockets.owns(request) || (request.url ?? '').split('?')[0] === `${this.fieldBasePath}/ws`,
        handleUpgrade: (request: IncomingMessage, socket: Duplex, head: Buffer) =>
          sockets.owns(request) ? sockets.handleUpgrade(request, socket, head) : refuseUpgrade(socket, fields),
      };
    },
    (error) => this.logger.error({ err: error }, 'rhtmx-sync: upgrade failed'),
  );

  /** `{ basePath, fetch, handleNode }`: the original crate's `engine.routes()` for any server. */
  routes() {
    return { basePath: this.basePath, fieldBasePath: this.fieldBasePath, fetch: this.fetch, handleNode: this.handleNode };
  }

  /** Programmatic pull (same answer as `GET /api/sync/:entity`). */
  async pull(entity: string, since = 0, limit = this.limits.defaultPullLimit): Promise<PullResponse> {
    const { service } = await this.running();
    return service.pull(entity, { since, limit });
  }

  /** Programmatic push (same contract as `POST /api/sync/:entity`). */
  async push(entity: string, body: unknown): Promise<PushResponse> {
    const { service, hub } = await this.running();
    const response = await service.push(entity, body);
    hub.wake();
    return response;
  }

  async schema(): Promise<SchemaResponse> {
    return (await this.running()).service.schema();
  }

  /** Latest change-log version. */
  async currentVersion(): Promise<number> {
    return (await this.running()).store.currentVersion();
  }

  /** Resolves once every change up to `version` has been fanned out to live clients. */
  async fannedOut(version: number): Promise<void> {
    const { hub } = await this.running();
    hub.wake();
    await hub.reached(version);
  }

  /** Tell the engine about a write it cannot see yet (it polls anyway; this just skips the wait). */
  notify(): void {
    this.state?.hub.wake();
  }

  /**
   * Live connection counts: open WebSockets (entity and field) and SSE streams,
   * hub subscriptions (`live`), and connections still being admitted
   * (`admitting`: authorize running, handshake not done).
   */
  connections(): { websocket: number; sse: number; live: number; admitting: number } {
    const state = this.state;
    if (!state) return { websocket: 0, sse: 0, live: 0, admitting: 0 };
    return {
      websocket: state.sessions.count('websocket'),
      sse: state.sessions.count('sse'),
      live: state.hub.subscriberCount,
      admitting: state.sessions.admitting,
    };
  }

  /**
   * The app changed a user's rights (role, membership) or ended their session:
   * re-check every open connection of `userId` now (all connections when
   * omitted) instead of at the next `rightsRecheckMs` tick. Connections whose
   * session ended close (WebSocket 4401/4403); the others continue under the
   * new rights. Resolves once every re-check is done.
   */
  async refreshRights(userId?: string): Promise<void> {
    await (await this.running()).sessions.refresh(userId);
  }

  /** Counters and gauges of this node: connections, change rate, fan-out time, push outcomes, log size, lag. */
  async metrics(): Promise<MetricsSnapshot> {
    const { store, service, hub } = await this.running();
    const recorded = service.metrics;
    const [latestVersion, logSize] = await Promise.all([store.currentVersion(), store.logSize()]);
    const { websocket, sse } = this.connections();
    return {
      connections: { websocket, sse },
      changesFannedOut: recorded.changesFannedOut,
      changesPerSecond: recorded.changesPerSecond(),
      pushOutcomes: { ...recorded.pushOutcomes },
      fanout: {
        count: recorded.fanoutSeconds.count,
        sumSeconds: recorded.fanoutSeconds.sum,
        p50Seconds: recorded.fanoutSeconds.quantile(0.5),
        p99Seconds: recorded.fanoutSeconds.quantile(0.99),
      },
      logSize,
      latestVersion,
      fannedOutVersion: hub.currentVersion,
      lag: Math.max(0, latestVersion - hub.currentVersion),
      laggedConsumers: hub.lagged,
    };
  }

  /** Follow every fan-out observation (changes in the batch, seconds it took); returns an unsubscribe. */
  async onFanout(listener: (changes: number, seconds: number) => void): Promise<() => void> {
    const { metrics } = (await this.running()).service;
    metrics.fanoutListeners.add(listener);
    return () => metrics.fanoutListeners.delete(listener);
  }

  /**
   * Prune change-log entries older than `days` (fractions allowed) and the
   * field-level tombstones they covered. Exactly-once client records (entity
   * and field pushes) are kept for `clientDays` (default: 30, or `days` when
   * longer) since the client's last push. Returns how many log entries were removed.
   */
  async cleanup(days: number, options: { clientDays?: number } = {}): Promise<number> {
    const clientDays = options.clientDays ?? Math.max(days, 30);
    for (const [name, value] of [
      ['days', days],
      ['clientDays', clientDays],
    ] as const) {
      if (!Number.isFinite(value) || value < 0) throw new TypeError(`cleanup(): ${name} must be a non-negative number`);
    }
    const { store } = await this.running();
    const now = Date.now();
    return store.cleanup(now - days * 86_400_000, now - clientDays * 86_400_000);
  }

  /** The store in use (for advanced use and tests). */
  async store(): Promise<Store> {
    return (await this.running()).store;
  }

  /** Close live connections and stop watching the database. The database handle stays open: it is the app's. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.state) return;
    this.state.stopFollowing();
    this.state.hub.stop();
    this.state.sessions.close();
    await this.state.sockets.close();
    if (this.state.fields instanceof FieldService) await this.state.fields.store.close();
    await this.state.store.close();
  }
}

/** Live HTML renderers of the entities that have one (docs/live-html.md); undefined when none has. */
function liveFragments(entities: readonly ResolvedEntity[], onError: (error: unknown, entity: string) => void): Fragments | undefined {
  const renderers = new Map(entities.filter((entity) => entity.render).map((entity) => [entity.name, entity]));
  if (renderers.size === 0) return undefined;
  return {
    has: (entity) => renderers.has(entity),
    async render(change, scope) {
      const entity = renderers.get(change.entity) as ResolvedEntity;
      const domId = entity.domId(change.id);
      const context = { entity: entity.name, action: change.action, domId, scope };
      const deleted = change.action === 'delete' || !change.data;
      if (deleted && !entity.renderDeleted) return { ...change, dom_id: domId };
      try {
        const html: unknown = deleted
          ? await entity.renderDeleted?.(change.id, context)
          : await entity.render?.(change.data as Row, context);
        if (html === null || html === undefined) throw new TypeError(`rhtmx-sync: render of ${entity.name} returned ${html}`);
        return { ...change, dom_id: domId, html: String(html) };
      } catch (error) {
        onError(error, entity.name);
        return { ...change, dom_id: domId };
      }
    },
  };
}
