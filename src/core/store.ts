/**
 * The contract between the engine core and a database.
 *
 * A Store owns everything that touches SQL: installing the change-capture
 * triggers, reading the change log, taking consistent snapshots and applying
 * pushes inside one transaction. The core decides *what* to write (conflict
 * strategies live in core/conflict.ts); the store decides *how*.
 */
import type { Change, ChangeAction, ColumnSchema, Row } from './protocol.js';
import type { SchemaIssue } from './standard-schema.js';

/** A synced table as the store found it in the database. */
export interface TableSchema {
  /** Entity name used on the wire. */
  entity: string;
  /** Real table name. */
  table: string;
  primaryKey: string;
  columns: ColumnSchema[];
}

/** Which table an entity maps to, as configured (before introspection). */
export interface EntityTarget {
  entity: string;
  table: string;
  /** Configured primary key; the store introspects it when omitted. */
  primaryKey?: string;
}

/** A page of the change log for one entity. */
export interface LogPage {
  changes: Change[];
  /** Cursor after this page: the highest version this page covers. */
  version: number;
  hasMore: boolean;
}

/** A page of current rows (snapshot), ordered by primary key. */
export interface SnapshotPage {
  changes: Change[];
  /** The log version the snapshot is consistent with (taken on its first page). */
  version: number;
  /** Primary key of the last row on the page; absent when this is the last page. */
  after?: string;
}

/** The server's current state of a row, as seen inside a push transaction. */
export interface ServerRowState {
  row: Row | null;
  /** Version of the row's latest log entry, 0 when it never appeared in the log. */
  version: number;
  /** HLC of the row's latest write, 0 when unknown. */
  hlc: number;
  /** The row as it was at the client's base version, when the log still holds it. */
  base: Row | null;
}

/** A pushed change after validation (columns checked, id normalised). */
export interface ValidatedChange {
  mutationId: number | null;
  id: string | null;
  action: ChangeAction;
  data: Row;
  baseVersion: number | null;
  /** Client timestamp already clamped and converted to an HLC number, or null. */
  timestamp: number | null;
}

/** What the core decided for one change after looking at the server row. */
export type WriteDecision =
  /** Write `data` (a full or partial row) with this action. */
  | { kind: 'write'; action: ChangeAction; data: Row; hlc: number; merged?: boolean }
  /** Keep the server row; report a conflict carrying it. */
  | { kind: 'conflict'; reason: string }
  /** Refuse the change. */
  | { kind: 'reject'; reason: string; issues?: SchemaIssue[] };

/** Outcome of one change, before it is turned into a wire PushResult. */
export interface AppliedChange {
  mutationId: number | null;
  id: string | null;
  status: 'applied' | 'conflict' | 'rejected';
  version?: number;
  duplicate?: boolean;
  row?: Row | null;
  serverVersion?: number;
  reason?: string;
  merged?: boolean;
  /** Schema validation issues of a rejected change. */
  issues?: SchemaIssue[];
}

/** Everything a store needs to apply one push batch. */
export interface PushBatch {
  schema: TableSchema;
  /** Key of the exactly-once bookkeeping (per user when authorization is on). */
  clientId: string | null;
  /** The client id as the client knows it, stamped on the logged changes; defaults to clientId. */
  origin?: string | null;
  changes: ValidatedChange[];
  /**
   * Called inside the transaction for each change that is not a duplicate.
   * Must be synchronous: SQLite transactions cannot span an await. When it
   * throws a SyncError (a forbidden change), the store must roll the whole
   * batch back and rethrow it; other errors reject just that change.
   */
  decide: (change: ValidatedChange, server: ServerRowState, index: number) => WriteDecision;
}

/** A database the engine can sync. Implementations: SqliteStore, PostgresStore. */
export interface Store {
  readonly dialect: 'sqlite' | 'postgres';
  /** Introspect the tables, create the log tables and (re)install triggers. Idempotent. */
  init(targets: EntityTarget[]): Promise<TableSchema[]>;
  /** Highest version a reader may safely use as a cursor now. */
  currentVersion(): Promise<number>;
  /**
   * Changes of one entity with `version > since`, at most `limit`, plus the
   * cursor to continue from. Reads data and cursor in one consistent read.
   */
  readEntityLog(entity: string, since: number, limit: number): Promise<LogPage>;
  /** Changes of all entities with `version > since`, for live fan-out. */
  readLog(since: number, limit: number, entities?: readonly string[]): Promise<LogPage>;
  /**
   * Current rows of an entity, ordered by primary key, starting after `after`.
   * `atVersion` is the version the snapshot started at (first page: omitted).
   */
  snapshot(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage>;
  /** Lowest cursor still served incrementally; older cursors must refetch. */
  retainedSince(entity: string): Promise<number>;
  /** Apply a push batch in one transaction, recording the client's last mutation id in it. */
  push(batch: PushBatch): Promise<AppliedChange[]>;
  /** Rows in an entity's table (progress of a first catch-up). */
  countRows(entity: string): Promise<number>;
  /** Rows in the change log (metrics). */
  logSize(): Promise<number>;
  /** Prune log entries older than the cutoff (epoch ms). Returns how many were removed. */
  cleanup(olderThanMs: number): Promise<number>;
  /** Call `onChange` soon after any committed write to the log, by anyone. Returns a stop function. */
  watch(onChange: () => void): () => void;
  close(): Promise<void>;
}
