/**
 * Engine configuration: the original crate's `SyncConfig` builder and `SyncStrategy`
 * enums, translated to TypeScript, plus the plain-object form.
 */
import type { Row } from './protocol.js';
import type { StandardSchemaV1 } from './standard-schema.js';

/** How a conflicting push is settled (the original crate's `SyncStrategy`). */
export const SyncStrategy = {
  /** The write with the newest hybrid-logical-clock timestamp wins (default). */
  LastWriteWins: 'last-write-wins',
  /** The pushed change always wins. */
  ClientWins: 'client-wins',
  /** A push based on a stale version never overwrites the server row. */
  ServerWins: 'server-wins',
  /** A `resolve` function merges server and client rows. */
  Custom: 'custom',
} as const;
export type SyncStrategy = (typeof SyncStrategy)[keyof typeof SyncStrategy];

/** How concurrent edits of the same field are settled (the original crate's `FieldMergeStrategy`). */
export const FieldMergeStrategy = {
  LastWriteWins: 'last-write-wins',
  KeepBoth: 'keep-both',
  ServerWins: 'server-wins',
  ClientWins: 'client-wins',
} as const;
export type FieldMergeStrategy = (typeof FieldMergeStrategy)[keyof typeof FieldMergeStrategy];

/**
 * A custom conflict resolver (the original crate's `ConflictResolver::resolve`).
 * Gets the server row (null when deleted), the client's row and the row at
 * the client's base version when the log still has it; returns the row to
 * store, or null to keep the server row and report a conflict.
 * Must be synchronous: it runs inside the write transaction.
 */
export type ConflictResolver = (server: Row | null, client: Row, base: Row | null) => Row | null;

/** Who is asking, as resolved by the `authorize` hook. `id` binds client ids and connection limits to the user. */
export interface SyncUser {
  id: string;
  [key: string]: unknown;
}

/**
 * Resolves the user of a request (HTTP, SSE, or a WebSocket's upgrade request).
 * Return the user, `null`/`undefined` for 401 (not signed in), `false` for 403,
 * or throw a SyncError for a custom answer. Called for every request and for
 * every WebSocket message, so a session that ends closes its sockets.
 */
export type Authorize = (request: Request) => SyncUser | null | undefined | false | Promise<SyncUser | null | undefined | false>;

/** Row-level read scope: may this user see this row? Applied to snapshots, pulls and live changes. */
export type ReadRule = (row: Row, user: SyncUser | null) => boolean;

/** A change as a write rule sees it. */
export interface WriteAttempt {
  action: 'create' | 'update' | 'delete';
  id: string | null;
  /** The columns the client wants to write. */
  data: Row;
  /** The row as it is on the server now (null when it does not exist). */
  current: Row | null;
}

/** Row-level write rule: true to allow, false or a reason string to refuse (403, nothing written). */
export type WriteRule = (attempt: WriteAttempt, user: SyncUser | null) => boolean | string;

/** One synced entity: the original crate's `#[derive(Syncable)] #[sync(table, strategy)]` as data. */
export interface EntityConfig {
  /** Name on the wire and in `rhtmx:<name>:changed`. */
  name: string;
  /** Table name; defaults to `name`. */
  table?: string;
  /** Primary key column; introspected when omitted. */
  primaryKey?: string;
  strategy?: SyncStrategy;
  resolve?: ConflictResolver;
  /** The app's own route prefixes for this entity (offline htmx mapping). Defaults to `/<name>`. */
  routes?: string[];
  /** Row-level read scope (see ReadRule). A row leaving a user's scope reaches their clients as a delete. */
  read?: ReadRule;
  /**
   * What the read rule depends on in the user, as a string: connections whose
   * users give the same key share one encoding of each live batch (e.g.
   * `(user) => String(user?.team)`). It must change whenever the rule's answers
   * could. Default: the whole user object (stable JSON), so users share a view
   * only when their contexts are equal.
   */
  scopeKey?: (user: SyncUser | null) => string;
  /** Row-level write rule. Without one, a user may write only rows inside their read scope. */
  write?: WriteRule;
  /**
   * A Standard Schema (zod, valibot, arktype, …) every pushed row must pass. It
   * sees the whole row after the change (server row merged with the pushed
   * columns) and its output, coercions included, is what gets written. A failing
   * change is rejected with the schema's issues; the rest of the batch applies.
   * Must validate synchronously (it runs inside the write transaction).
   */
  schema?: StandardSchemaV1;
  /**
   * Live HTML (docs/live-html.md): the row's HTML fragment, sent with each
   * live change so pages swap it in instead of refetching. Rendered once per
   * change and read scope (`context.scope`), never per connection; the
   * fragment's element carries the id `domId` gives. Escaping is the
   * renderer's job. A renderer that throws (or rejects) sends the change
   * without HTML: pages refetch as they would without one.
   */
  render?: FragmentRenderer;
  /**
   * Live HTML: what a delete sends besides removing the row's element, e.g.
   * a count line with `hx-swap-oob` (only such out-of-band elements are
   * used). Optional; deletes carry no HTML without it.
   */
  renderDeleted?: DeletedRenderer;
  /** The id of a row's element in pages (live HTML); default `<name>-<id>`. */
  domId?: (id: string) => string;
}

/** What a renderer is told besides the row. */
export interface RenderContext {
  entity: string;
  action: 'create' | 'update' | 'delete';
  /** The element id the fragment's row element must carry. */
  domId: string;
  /** The read scope it is rendered for (the entity's `scopeKey` of its viewers); null without a read rule. */
  scope: string | null;
}

/** Renders a row's live HTML fragment. */
export type FragmentRenderer = (row: Row, context: RenderContext) => string | Promise<string>;

/** Renders what a delete sends besides removing the row's element (out-of-band elements). */
export type DeletedRenderer = (id: string, context: RenderContext) => string | Promise<string>;

/** Safety limits, each with a clear error when exceeded. */
export interface SyncLimits {
  /** Largest accepted request body, bytes. */
  maxBodyBytes: number;
  /** Deepest accepted JSON nesting. */
  maxJsonDepth: number;
  /** Most changes in one push. */
  maxPushChanges: number;
  /** Largest WebSocket message, bytes (ws's own default is 100 MiB). */
  maxWsMessageBytes: number;
  /** Default and largest pull page size. */
  defaultPullLimit: number;
  maxPullLimit: number;
  /**
   * Bytes one connection may have waiting to be sent, replies and live batches
   * together; past it a WebSocket is closed with 4008 and an SSE stream ends
   * (the client reconnects and catches up by pull).
   */
  maxBufferedBytes: number;
  /** WebSocket messages a connection may send per second (burst the same); over it the socket is closed with 4029. */
  wsMessagesPerSecond: number;
  /**
   * Rows one user (or remote address) may have read for them per second over
   * all their sockets (`sync` pages and catch-up replay, burst the same). A
   * request past it waits for the budget instead of running, so one client
   * cannot hog the database or the event loop; reconnecting does not refill it.
   */
  wsRowsPerSecond: number;
  /** Requests one WebSocket may have waiting for an answer; over it the socket is closed with 4029. */
  maxPendingRequests: number;
  /** Live connections (WebSocket + SSE) one user may hold at once. */
  maxConnectionsPerUser: number;
}

export const DEFAULT_LIMITS: SyncLimits = {
  maxBodyBytes: 1024 * 1024,
  maxJsonDepth: 32,
  maxPushChanges: 1000,
  maxWsMessageBytes: 1024 * 1024,
  defaultPullLimit: 1000,
  maxPullLimit: 10_000,
  maxBufferedBytes: 8 * 1024 * 1024,
  wsMessagesPerSecond: 200,
  wsRowsPerSecond: 20_000,
  maxPendingRequests: 64,
  maxConnectionsPerUser: 32,
};

/** A minimal structured logger (pino, console and most loggers fit). */
export interface SyncLogger {
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

/** Plain-object configuration (the original crate's `SyncConfig { db_pool, entities, strategy, debug }`). */
export interface SyncEngineOptions {
  /** A better-sqlite3 `Database`, a pg `Pool`, or a ready `Store`. */
  db: unknown;
  entities: Array<string | EntityConfig>;
  /** Default strategy for entities that set none. */
  strategy?: SyncStrategy;
  /** Enables field-level sync with this merge strategy. */
  fieldSync?: FieldMergeStrategy | false;
  debug?: boolean;
  logger?: SyncLogger;
  basePath?: string;
  fieldBasePath?: string;
  limits?: Partial<SyncLimits>;
  /** SSE heartbeat interval, ms. */
  heartbeatMs?: number;
  /** How often the store checks for writes made outside the engine, ms. */
  pollMs?: number;
  /** Where the built browser client lives; defaults to the package's dist/client. */
  clientDir?: string;
  /** How far ahead of the server clock a client timestamp may be before it is clamped, ms (default 1000). */
  maxClockDriftMs?: number;
  /** Resolves the user of each request; without it every request is anonymous and allowed. */
  authorize?: Authorize;
  /**
   * Origins allowed to open WebSockets and event streams and to POST (CSRF
   * protection). Default: the request's own origin only. Requests without an
   * Origin header (non-browser clients) are allowed.
   */
  allowedOrigins?: string[];
  /**
   * Host names (without port) the engine answers on. Without this and without
   * `allowedOrigins`, a request that reaches the server over a loopback address
   * must name a loopback host (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`):
   * DNS-rebinding protection for development servers. Set it (or
   * `allowedOrigins`) in production behind a reverse proxy on the same machine.
   */
  allowedHosts?: string[];
  /**
   * How often open WebSockets and SSE streams re-run `authorize` on their
   * opening request, ms (default 5000). A session that ended closes the
   * connection; changed rights re-scope live delivery. `engine.refreshRights(userId)`
   * does it at once.
   */
  rightsRecheckMs?: number;
}

/** The original crate's builder: `new SyncConfig(db, ['todos']).withStrategy(...).withFieldSync(...)`. */
// The builder carries every optional setting of SyncEngineOptions, declared once there and merged in here.
export interface SyncConfig extends Omit<SyncEngineOptions, 'db' | 'entities'> {}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the merged members are all optional settings, set by the builder methods
export class SyncConfig implements SyncEngineOptions {
  constructor(
    readonly db: unknown,
    readonly entities: Array<string | EntityConfig>,
  ) {}

  withStrategy(strategy: SyncStrategy): this {
    this.strategy = strategy;
    return this;
  }
  withFieldSync(strategy: FieldMergeStrategy = FieldMergeStrategy.LastWriteWins): this {
    this.fieldSync = strategy;
    return this;
  }
  withDebug(debug = true): this {
    this.debug = debug;
    return this;
  }
  withLogger(logger: SyncLogger): this {
    this.logger = logger;
    return this;
  }
  withLimits(limits: Partial<SyncLimits>): this {
    this.limits = { ...this.limits, ...limits };
    return this;
  }
  withAuthorize(authorize: Authorize): this {
    this.authorize = authorize;
    return this;
  }
  withAllowedOrigins(origins: string[]): this {
    this.allowedOrigins = origins;
    return this;
  }
  withAllowedHosts(hosts: string[]): this {
    this.allowedHosts = hosts;
    return this;
  }
  withRightsRecheck(ms: number): this {
    this.rightsRecheckMs = ms;
    return this;
  }
  withBasePath(basePath: string): this {
    this.basePath = basePath;
    return this;
  }
}

/** An entity with every default filled in. */
export interface ResolvedEntity {
  name: string;
  table: string;
  primaryKey?: string;
  strategy: SyncStrategy;
  resolve?: ConflictResolver;
  routes: string[];
  read?: ReadRule;
  scopeKey?: (user: SyncUser | null) => string;
  write?: WriteRule;
  schema?: StandardSchemaV1;
  render?: FragmentRenderer;
  renderDeleted?: DeletedRenderer;
  domId: (id: string) => string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Validate and fill defaults; throws on a configuration the engine cannot serve. */
export function resolveEntities(options: SyncEngineOptions): ResolvedEntity[] {
  if (!Array.isArray(options.entities) || options.entities.length === 0) {
    throw new TypeError('SyncEngine: `entities` must list at least one entity');
  }
  const seen = new Set<string>();
  return options.entities.map((entry) => {
    const entity: EntityConfig = typeof entry === 'string' ? { name: entry } : entry;
    const table = entity.table ?? entity.name;
    for (const [what, value] of [
      ['entity name', entity.name],
      ['table name', table],
    ] as const) {
      if (typeof value !== 'string' || !IDENTIFIER.test(value) || value.startsWith('_rhtmx')) {
        throw new TypeError(`SyncEngine: invalid ${what} ${JSON.stringify(value)}`);
      }
    }
    if (seen.has(entity.name)) throw new TypeError(`SyncEngine: entity ${entity.name} listed twice`);
    seen.add(entity.name);
    const strategy = entity.strategy ?? (entity.resolve ? SyncStrategy.Custom : (options.strategy ?? SyncStrategy.LastWriteWins));
    if (strategy === SyncStrategy.Custom && !entity.resolve) {
      throw new TypeError(`SyncEngine: entity ${entity.name} uses the custom strategy without a resolve function`);
    }
    for (const hook of ['render', 'renderDeleted', 'domId'] as const) {
      if (entity[hook] !== undefined && typeof entity[hook] !== 'function') {
        throw new TypeError(`SyncEngine: entity ${entity.name}: \`${hook}\` must be a function`);
      }
    }
    const name = entity.name;
    return {
      name,
      table,
      primaryKey: entity.primaryKey,
      strategy,
      resolve: entity.resolve,
      routes: entity.routes ?? [`/${entity.name}`],
      read: entity.read,
      scopeKey: entity.scopeKey,
      write: entity.write,
      schema: entity.schema,
      render: entity.render,
      renderDeleted: entity.renderDeleted,
      domId: entity.domId ?? ((id: string) => `${name}-${id}`),
    };
  });
}

/** Quotes an identifier that has already been checked against the real schema. */
export const quoteIdent = (name: string): string => `"${name.replaceAll('"', '""')}"`;
