/**
 * The contract between field-level sync and a database: `FieldStore`.
 *
 * A FieldStore keeps per-field bookkeeping (version, HLC, writer, value) next
 * to the engine's change log and applies field pushes to the app's real
 * tables. Like the entity-level Store, the merge policy is not its business:
 * it reads the server state of each change inside its write transaction and
 * asks `decide` (core merge rules in field/merge.ts) what to do.
 *
 * Implementations: stores/sqlite-fields.ts. A PostgreSQL one follows the same
 * plan: the same two tables, an AFTER INSERT trigger on the change log that
 * records which fields a logged row write changed, `SELECT … FOR UPDATE` on
 * the field rows a push touches, and cursors capped like the main store's
 * (commits can land out of version order there).
 */
import type { ColumnSchema, Row } from '../core/protocol.js';
import type { SchemaIssue } from '../core/standard-schema.js';
import type { TableSchema } from '../core/store.js';
import type { FieldAction, FieldChange, FieldState } from './protocol.js';

/** A synced table and the columns field-level sync may write (every column but the primary key). */
export interface FieldTarget {
  schema: TableSchema;
  fields: ColumnSchema[];
}

/** A field value ready to bind: booleans stay booleans (each dialect binds them its way), blobs are Buffers. */
export type FieldValue = string | number | boolean | Buffer | null;

/** A pushed field change after validation (field checked against the real columns, value coerced). */
export interface FieldWrite {
  mutationId: number | null;
  entityId: string;
  /** Column name, or `*` for a row delete. */
  field: string;
  action: FieldAction;
  /** The value to store, coerced to the column's type (null for deletes). */
  value: FieldValue;
  /** The coerced value as the row's JSON shows it (booleans, hex for blobs, parsed JSON). */
  json: unknown;
  /** The value as the client sent it, reported back in conflicts. */
  clientValue: unknown;
  /** The client's timestamp as an HLC number (not yet clamped), or null. */
  timestamp: number | null;
  baseVersion: number | null;
  /** Why the value cannot be stored (e.g. not a number for an integer column); the change is rejected, not the push. */
  invalid: string | null;
}

/** Who wrote something last and when. Version 0 means never (or before the log began). */
export interface WriteStamp {
  version: number;
  hlc: number;
  clientId: string | null;
}

export const NEVER_WRITTEN: WriteStamp = Object.freeze({ version: 0, hlc: 0, clientId: null });

/** The server's state for one field change, read inside the push transaction. */
export interface FieldServerState {
  /** The row exists now. */
  exists: boolean;
  /** The whole current row as its JSON shows it (null when missing), for write rules. */
  current: Row | null;
  /** The field's current value as the row's JSON shows it (null when the row is missing). */
  value: unknown;
  /** The column already holds the pushed value (writing would change nothing). */
  same: boolean;
  /** The field's last write; when no field entry exists yet, the row's latest log entry. */
  field: WriteStamp;
  /** The row's latest write of any kind (what a row delete is ordered against). */
  row: WriteStamp;
  /** The row's delete, when the row is gone because it was deleted. */
  tombstone: WriteStamp | null;
}

/** What the merge rules decided for one change. */
export type FieldDecision =
  /** Write it (update the column, insert the row, or delete the row), stamped with this HLC. */
  | { kind: 'write'; hlc: number }
  /** Nothing to write, and the client's intent already holds (same value, row already gone): applied. */
  | { kind: 'keep' }
  /** Keep the server's value; report both values. */
  | { kind: 'conflict'; reason: string }
  /** Refuse the change. */
  | { kind: 'reject'; reason: string };

/** Outcome of one change, before it becomes a wire result. */
export interface FieldOutcome {
  change: FieldWrite;
  status: 'applied' | 'conflict' | 'rejected';
  duplicate?: boolean;
  version?: number;
  hlc?: number;
  /** The field's current value after the outcome (the server's value for conflicts). */
  value?: unknown;
  reason?: string;
  /** Schema validation issues of a rejected change. */
  issues?: SchemaIssue[];
}

/** One row write a push is about to make (after the merge decided to write). */
export interface RowWrite {
  action: 'create' | 'update' | 'delete';
  entityId: string;
  /** The row as it is now (null when it does not exist). */
  current: Row | null;
  /** Columns to write (empty for deletes); several for a row created field by field. */
  values: Record<string, FieldValue>;
  /** The same values as the row's JSON shows them. */
  json: Row;
  /** Index in the batch of the (first) change making this write. */
  index: number;
}

/** What the write check made of a row write: the values to write, or why not. */
export type RowWriteCheck = { ok: true; values: Record<string, FieldValue> } | { ok: false; reason: string; issues?: SchemaIssue[] };

/** Everything a store needs to apply one field push. */
export interface FieldPushBatch {
  entity: string;
  /** Key of the exactly-once bookkeeping (per user when authorization is on). */
  clientId: string | null;
  /** The client id as the client knows it, stamped on the written changes; defaults to clientId. */
  origin?: string | null;
  changes: FieldWrite[];
  /**
   * Called inside the transaction for each change that is not a duplicate.
   * Synchronous on purpose: SQLite transactions cannot span an await.
   */
  decide(change: FieldWrite, state: FieldServerState): FieldDecision;
  /**
   * Called inside the transaction right before each write (the app's write
   * rule and schema). A thrown SyncError (forbidden) must roll the whole push
   * back and propagate; a refusal rejects the changes of this write only.
   */
  prepareWrite?(write: RowWrite): RowWriteCheck;
}

/** A page of field changes after a cursor, in version order. */
export interface FieldChangePage {
  changes: FieldChange[];
  /** Cursor after this page. */
  version: number;
  hasMore: boolean;
}

/** A page of a field snapshot: every field of current rows, ordered by primary key. */
export interface FieldSnapshotPage {
  changes: FieldChange[];
  /** The version the snapshot is consistent with (taken on its first page). */
  version: number;
  /** Primary key of the last row on the page; absent on the last page. */
  after?: string;
}

/** Every field of one row, for `/latest`. */
export interface RowFieldStates {
  deleted: boolean;
  version: number;
  hlc: number;
  fields: Record<string, FieldState>;
}

/** A database that can keep field-level bookkeeping. All methods are async so a pg pool fits. */
export interface FieldStore {
  readonly dialect: 'sqlite' | 'postgres';
  /** Create the bookkeeping tables and (re)install the change-capture trigger for these tables. Idempotent. */
  init(targets: FieldTarget[]): Promise<void>;
  /**
   * Apply a field push in one transaction: write the real columns, record each
   * field's version/HLC/writer, and remember the client's last mutation id.
   */
  push(batch: FieldPushBatch): Promise<FieldOutcome[]>;
  /** Field changes with `version > since` (one entity, or all when omitted), at most about `limit`. */
  readChanges(since: number, limit: number, entity?: string): Promise<FieldChangePage>;
  /** Every field of current rows of an entity, `limit` rows per page, after primary key `after`. */
  snapshot(entity: string, limit: number, after?: string, atVersion?: number): Promise<FieldSnapshotPage>;
  /** Every field of one row; null when the row never existed. */
  latest(entity: string, entityId: string): Promise<RowFieldStates | null>;
  /** Highest change-log version a reader may use as a cursor now. */
  currentVersion(): Promise<number>;
  close(): Promise<void>;
}
