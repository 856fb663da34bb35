/**
 * The wire vocabulary shared by the server and the browser client.
 *
 * This file must stay dependency-free and free of Node APIs: the browser
 * client imports it, and esbuild inlines it into `client.js`.
 * docs/protocol.md is the prose version of these types.
 *
 * Fields tagged `@compat` exist for clients written only from the original
 * crate's README (../shared/SEED.md; docs/protocol.md, "Compatibility"): they
 * repeat something another field says, in the shape those clients read. Our
 * own client never needs them; the server must keep sending them.
 */

/** Where the engine mounts its routes unless configured otherwise. */
export const DEFAULT_BASE_PATH = '/api/sync';
/** Where field-level sync routes live. */
export const DEFAULT_FIELD_BASE_PATH = '/api/field-sync';

/** What happened to a row. `create` and `update` carry the whole row in `data`. */
export type ChangeAction = 'create' | 'update' | 'delete';

/** A row as JSON: column name to value. */
export type Row = Record<string, unknown>;

/** One entry of the change log as it travels to clients. */
export interface Change {
  /** The entity (synced table) the change belongs to. */
  entity: string;
  /** The row's primary key, as a string (clients of the original crate send numbers too; we normalise). */
  id: string;
  /** Same as `id`. @compat the original crate's clients read `entity_id`. */
  entity_id: string;
  action: ChangeAction;
  /** The whole row after the change; `null` for deletes. */
  data: Row | null;
  /** Global, strictly increasing change-log version. */
  version: number;
  /** Hybrid logical clock timestamp of the write (see core/hlc.ts). */
  hlc?: number;
  /** The client that pushed the change, when it came through a push. */
  client_id?: string | null;
  /** Live HTML (live batches of entities with a renderer): the row's element id in pages. */
  dom_id?: string;
  /** Live HTML: the row's fragment, rendered for the receiver's read scope (a delete's: `renderDeleted`'s out-of-band elements); absent when rendering failed. */
  html?: string;
}

/** `GET /api/sync/:entity?since=V` answer. */
export interface PullResponse {
  entity: string;
  /** Cursor to continue from: every change up to this version is included or superseded. */
  version: number;
  changes: Change[];
  /** More pages follow: pull again with `since=version` (or the `next` snapshot cursor). */
  has_more: boolean;
  /**
   * The cursor was older than the retained change log (or `since=0`): `changes`
   * is a snapshot of current rows, and the client must drop its local copy of
   * the entity before applying it. Only set on the first page of a reset.
   */
  reset?: boolean;
  /** Snapshot pagination: pass back as `?since=0&snapshot=<next>` to get the next page. */
  next?: string;
  /**
   * First page of a multi-page snapshot: how many rows the table holds, for
   * progress display (`rhtmx:sync:progress`). An upper bound when read scopes
   * hide rows.
   */
  total?: number;
}

/** One client mutation in a push. */
export interface PushChange {
  /** Per-client increasing number; retried pushes with an already applied id are skipped. */
  mutation_id?: number;
  /** Row id. May be omitted on create for tables whose key the database assigns. */
  id?: string | number | null;
  action: ChangeAction;
  /** Columns to write. Updates may be partial. */
  data?: Row | null;
  /** The row version the client last saw; enables conflict detection. */
  base_version?: number | null;
  /** The client's hybrid logical clock timestamp, or an ISO date / epoch ms (@compat the original crate's style). */
  timestamp?: number | string | null;
}

/** `POST /api/sync/:entity` body. */
export interface PushRequest {
  client_id?: string;
  /** The client has never had an answer for this `client_id` (a new one): its first mutation ids may skip numbers. */
  fresh?: boolean;
  /** Some of these mutations were sent before (their answer never came): ms since the first of them left (see docs/protocol.md). */
  retry?: number | true;
  changes: PushChange[];
}

/** What happened to one pushed change. */
export type PushStatus = 'applied' | 'conflict' | 'rejected';

export interface PushResult {
  mutation_id?: number;
  /** Row id as stored (the database-assigned one for creates without id). */
  id: string | null;
  status: PushStatus;
  /** The change-log version the write produced (applied only). */
  version?: number;
  /** True when this mutation id was already applied by an earlier push: nothing was written again. */
  duplicate?: boolean;
  /** Conflicts: the server's current row (`null` when the server row is deleted). Merges: the merged row. */
  row?: Row | null;
  /** Current server version of the row (conflicts). */
  server_version?: number;
  /** Why a change was rejected or lost. */
  reason?: string;
  /** A custom resolver produced a merged row that differs from what the client sent. */
  merged?: boolean;
  /** Why the entity's schema refused the row (rejected only). */
  issues?: Array<{ message: string; path?: string }>;
}

/** `POST /api/sync/:entity` answer. */
export interface PushResponse {
  entity: string;
  results: PushResult[];
  /** Highest change-log version after the push. */
  version: number;
}

/** Error body of every 4xx/5xx answer. */
export interface ErrorBody {
  error: { code: string; message: string; details?: unknown };
}

/** Payload of a live change message (SSE `data:` and WebSocket `change`). */
export interface LiveChangeMessage {
  type: 'change';
  /** Every change up to this version for the subscribed entities has been sent. */
  version: number;
  changes: Change[];
  /** Present when the batch holds exactly one change. @compat the original crate's single-change shape. */
  change?: Change;
}

/**
 * The live protocol a connection declares (docs/protocol.md, "Live protocol"):
 * `?protocol=2` on the WebSocket URL (`<basePath>/ws`, `<fieldBasePath>/ws`)
 * or the event-stream URL (`<basePath>/events`). With it, live changes come
 * one message per batch ({@link LiveChangeMessage}, {@link FieldChangeMessage};
 * SSE: unnamed events with that JSON). Our own client always declares it.
 *
 * @compat A connection that declares nothing (or `protocol=1`) is a client of
 * the original crate, which reads only `change`: it gets one message per
 * change ({@link SeedChangeMessage}, {@link SeedFieldChangeMessage}; SSE:
 * `event: sync` whose data is the {@link Change} itself).
 */
export const PROTOCOL_PARAM = 'protocol';
/** The batch protocol's number, the value of {@link PROTOCOL_PARAM}. */
export const BATCH_PROTOCOL = 2;
/** The query our client appends to live URLs: `${PROTOCOL_PARAM}=${BATCH_PROTOCOL}`. */
export const BATCH_QUERY = 'protocol=2';

/** @compat One live change as the original crate sends it, to connections that declare no protocol. */
export interface SeedChangeMessage {
  type: 'change';
  /** Every change up to this version for the subscribed entities has been sent. */
  version: number;
  change: Change;
}

/** Messages a WebSocket client sends on `/api/sync/ws`. `ref` is echoed in the reply. */
export type ClientMessage =
  | { type: 'subscribe'; entities: string[]; since?: number; ref?: string | number }
  | { type: 'unsubscribe'; entities: string[]; ref?: string | number }
  | { type: 'sync'; entity: string; since?: number; limit?: number; snapshot?: string; ref?: string | number }
  | ({ type: 'push'; entity: string; ref?: string | number } & (
      | { client_id?: string; fresh?: boolean; retry?: number | true; changes: PushChange[] }
      | {
          entity_id?: string | number;
          action: ChangeAction;
          data?: Row | null;
          mutation_id?: number;
          client_id?: string;
          fresh?: boolean;
          retry?: number | true;
          base_version?: number;
          timestamp?: number | string;
        }
    ))
  | { type: 'ping'; ref?: string | number; t?: number };

/** Messages the server sends on `/api/sync/ws`. */
export type ServerMessage =
  | { type: 'hello'; version: number; server_time: number; entities: string[] }
  | { type: 'subscribed'; entities: string[]; version: number; ref?: string | number }
  | { type: 'unsubscribed'; entities: string[]; ref?: string | number }
  | ({ type: 'sync'; ref?: string | number } & PullResponse)
  | {
      type: 'push_ack';
      entity: string;
      /** @compat the original crate's single-change push. */
      entity_id?: string | null;
      version: number;
      results: PushResult[];
      ref?: string | number;
    }
  | LiveChangeMessage
  | { type: 'pong'; ref?: string | number; t?: number; server_time: number }
  | { type: 'error'; code: string; message: string; ref?: string | number };

/** Column description published by `GET /api/sync/schema` so clients can coerce form values. */
export interface ColumnSchema {
  name: string;
  /** Normalised type: what the client coerces form strings to. */
  type: 'integer' | 'number' | 'boolean' | 'text' | 'json' | 'blob';
  nullable: boolean;
  primaryKey: boolean;
}

export interface EntitySchemaInfo {
  name: string;
  primaryKey: string;
  columns: ColumnSchema[];
  /** How the app's own routes name this entity (e.g. `/todos`), for the offline htmx mapping. */
  routes: string[];
}

/** `GET /api/sync/schema` answer. */
export interface SchemaResponse {
  version: number;
  entities: EntitySchemaInfo[];
  field_sync: boolean;
}

/** Error codes used across HTTP and WebSocket. */
export const ErrorCode = {
  BadRequest: 'bad_request',
  BadJson: 'bad_json',
  UnknownEntity: 'unknown_entity',
  UnknownColumn: 'unknown_column',
  BadCursor: 'bad_cursor',
  TooLarge: 'payload_too_large',
  TooDeep: 'json_too_deep',
  NotFound: 'not_found',
  MethodNotAllowed: 'method_not_allowed',
  Unauthorized: 'unauthorized',
  Forbidden: 'forbidden',
  RateLimited: 'rate_limited',
  /** 415: a push whose Content-Type is not JSON. */
  UnsupportedMediaType: 'unsupported_media_type',
  /** 426: a WebSocket path asked for without an upgrade. */
  UpgradeRequired: 'upgrade_required',
  Internal: 'internal',
  /** 501: a configured feature this store cannot serve. */
  NotImplemented: 'not_implemented',
  /** 503: the engine is starting, failed to start or is closed. */
  Unavailable: 'unavailable',
  UnknownMessage: 'unknown_message',
  /** 409: a push names mutation ids of a client whose exactly-once record is gone (core/store.ts ClientRecord). */
  ClientUnknown: 'client_unknown',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * WebSocket close codes the engine uses (docs/security.md lists them with the
 * limits behind them). 4000–4999 is the range RFC 6455 leaves to applications;
 * the last three digits echo the HTTP status of the same refusal.
 */
export const CloseCode = {
  /** Server shutting down: reconnect later. */
  GoingAway: 1001,
  /** Replies and live batches waiting to be sent passed `maxBufferedBytes`: reconnect and pull. */
  SlowConsumer: 4008,
  /** More than `wsMessagesPerSecond` messages, or more requests waiting than `maxPendingRequests`. */
  RateLimited: 4029,
  /** The session ended (authorize now answers 401, or names another user). */
  SessionEnded: 4401,
  /** The user lost the right to connect (authorize now answers 403). */
  Forbidden: 4403,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** WebSocket close code sent to a consumer that fell too far behind; it reconnects and pulls. */
export const CLOSE_SLOW_CONSUMER = CloseCode.SlowConsumer;

/**
 * WebSocket close code: a subscribed entity's table changed shape (its schema
 * changed); reconnect and pull, which answers `reset: true` (must-refetch).
 * Beside `CloseCode`, not in it, so the browser bundles (which never read it) do not carry it.
 */
export const CLOSE_MUST_REFETCH = 4205;

// ─── Field-level sync (`/api/field-sync/*`, docs/field-sync.md) ───────────────

/** What happened to a field. `delete` with field {@link ROW_FIELD} deletes the whole row. */
export type FieldAction = 'update' | 'delete';

/** The pseudo-field that stands for the whole row: `{field: '*', action: 'delete'}` deletes it. */
export const ROW_FIELD = '*';

/** One field's change as it travels to clients (pull pages and live `field_change` messages). */
export interface FieldChange {
  entity: string;
  /** The row's primary key, as a string. */
  entity_id: string;
  /** Column name, or `*` for a row delete. */
  field: string;
  /** The field's value after the change, as the row's JSON shows it; `null` for row deletes. */
  value: unknown;
  /** The change-log version of the write that last changed this field. */
  version: number;
  /** Hybrid logical clock timestamp of that write (see core/hlc.ts). */
  hlc: number;
  /** The client whose push wrote it; null for writes made by app code or raw SQL. */
  client_id: string | null;
  action: FieldAction;
}

/** `GET /api/field-sync/:entity?since=V` answer. */
export interface FieldPullResponse {
  entity: string;
  /** Cursor to continue from: every field change up to this version is included or superseded. */
  version: number;
  /** Oldest first; only each field's latest state (a field changed twice appears once). */
  changes: FieldChange[];
  /** More pages follow: pull again with `since=version`, or with `snapshot=next` during a snapshot. */
  has_more: boolean;
  /** `since=0`: `changes` is a snapshot of every field of every current row. */
  reset?: boolean;
  /** Snapshot pagination token: pass back as `?since=0&snapshot=<next>`. */
  next?: string;
}

/** One field change a client pushes. */
export interface FieldPushChange {
  /** Per-client increasing number (equal numbers group changes into one mutation); retries are applied once. */
  mutation_id?: number;
  entity_id: string | number;
  /** Column name, or `*` with action `delete` to delete the row. */
  field: string;
  /** New value; coerced to the column's type. Required for `update`. */
  value?: unknown;
  /** `update` (default) or `delete` (`*`: delete the row; a column: set it to NULL). */
  action?: FieldAction;
  /** When the client made the edit: a packed HLC number, epoch milliseconds or an ISO date. */
  timestamp?: number | string | null;
  /** The field's version the client last saw; enables conflict detection (server-wins, keep-both). */
  base_version?: number | null;
}

/** `POST /api/field-sync/:entity` body. */
export interface FieldPushRequest {
  client_id?: string;
  /** As in PushRequest. */
  fresh?: boolean;
  retry?: number | true;
  changes: FieldPushChange[];
}

export type FieldPushStatus = 'applied' | 'conflict' | 'rejected';

/** What happened to one pushed field change. */
export interface FieldPushResult {
  mutation_id?: number;
  entity_id: string;
  field: string;
  status: FieldPushStatus;
  /** The field's version now (applied: the write's version; conflict: the server's). */
  version?: number;
  /** The field's HLC now. */
  hlc?: number;
  /** Applied: the value stored (after coercion). */
  value?: unknown;
  /** Conflict: the value the server kept. */
  server_value?: unknown;
  /** Conflict: the value the client sent (keep-both: the app decides between the two). */
  client_value?: unknown;
  /** Why a change was a conflict or rejected. */
  reason?: string;
  /** This mutation id was applied before; nothing was written now. */
  duplicate?: boolean;
  /** Rejected by the entity's schema: what was wrong. */
  issues?: Array<{ message: string; path?: string }>;
}

/** `POST /api/field-sync/:entity` answer. */
export interface FieldPushResponse {
  entity: string;
  results: FieldPushResult[];
  /** How many results are `applied`. */
  applied: number;
  /** How many results are `conflict`. */
  conflicts: number;
  /** How many results are `rejected`. */
  rejected: number;
  /** Highest change-log version after the push. */
  version: number;
}

/** The current state of one field. */
export interface FieldState {
  value: unknown;
  version: number;
  hlc: number;
  client_id: string | null;
}

/** `GET /api/field-sync/:entity/:entity_id/latest` answer. */
export interface LatestFieldsResponse {
  entity: string;
  entity_id: string;
  /** The row was deleted (`fields` is then empty; `version`/`hlc` are the delete's). */
  deleted: boolean;
  /** Highest version among the row's fields. */
  version: number;
  /** Highest HLC among the row's fields. */
  hlc: number;
  fields: Record<string, FieldState>;
}

/** Live field changes: one batch, encoded once and shared by every subscriber with the same entities. */
export interface FieldChangeMessage {
  type: 'field_change';
  /** Every field change up to this version for the subscribed entities has been sent. */
  version: number;
  changes: FieldChange[];
  /** Present when the batch holds exactly one change. @compat the original crate's single-change shape. */
  change?: FieldChange;
}

/** @compat One live field change as the original crate sends it, to connections that declare no protocol. */
export interface SeedFieldChangeMessage {
  type: 'field_change';
  /** Every field change up to this version for the subscribed entities has been sent. */
  version: number;
  change: FieldChange;
}

/** One field of a `push_fields` message. */
export interface PushFieldsEntry {
  field: string;
  value?: unknown;
  action?: FieldAction;
  timestamp?: number | string | null;
  base_version?: number | null;
  mutation_id?: number;
}

/** Messages a client sends on `/api/field-sync/ws`. `ref` is echoed in the reply. */
export type FieldClientMessage =
  | { type: 'subscribe'; entities: string[]; since?: number; ref?: string | number }
  | { type: 'unsubscribe'; entities: string[]; ref?: string | number }
  | { type: 'sync'; entity: string; since?: number; limit?: number; snapshot?: string; ref?: string | number }
  | {
      type: 'push_fields';
      entity: string;
      entity_id: string | number;
      fields: PushFieldsEntry[];
      client_id?: string;
      fresh?: boolean;
      retry?: number | true;
      /** Applies to every field that does not carry its own. */
      mutation_id?: number;
      ref?: string | number;
    }
  | { type: 'latest'; entity: string; entity_id: string | number; ref?: string | number }
  | { type: 'ping'; t?: number; ref?: string | number };

/** Messages the server sends on `/api/field-sync/ws`. */
export type FieldServerMessage =
  | { type: 'hello'; version: number; server_time: number; entities: string[]; strategy: string }
  | { type: 'subscribed'; entities: string[]; version: number; ref?: string | number }
  | { type: 'unsubscribed'; entities: string[]; ref?: string | number }
  | ({ type: 'sync'; ref?: string | number } & FieldPullResponse)
  | ({ type: 'latest'; ref?: string | number } & LatestFieldsResponse)
  | {
      type: 'push_ack';
      entity: string;
      entity_id: string;
      applied: number;
      conflicts: number;
      rejected: number;
      version: number;
      results: FieldPushResult[];
      ref?: string | number;
    }
  | FieldChangeMessage
  | { type: 'pong'; t?: number; server_time: number; ref?: string | number }
  | { type: 'error'; code: string; message: string; ref?: string | number };
