/**
 * The contract between the engine core and a database.
 *
 * A Store owns everything that touches SQL: installing the change-capture
 * triggers, reading the change log, taking consistent snapshots and applying
 * pushes inside one transaction. The core decides *what* to write (conflict
 * strategies live in core/conflict.ts); the store decides *how*.
 */

import { SyncError } from './errors.js';
import {
  type Change,
  type ChangeAction,
  type ColumnSchema,
  ErrorCode,
  type FieldAction,
  type FieldChange,
  type FieldState,
  type Row,
} from './protocol.js';
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

/**
 * A snapshot page as the JSON text of its changes (what `changesJson` makes
 * of the same page): a page nobody filters is sent without a row object,
 * a parse or a serialization in between.
 */
export interface SnapshotJson {
  json: string;
  version: number;
  after?: string;
}

/** A current row as a snapshot reads it: its data as the JSON text the database built, and its latest log version (0: never logged). */
export interface SnapshotRow {
  id: string;
  data: string;
  version: number;
}

/**
 * A page of current rows (snapshot), ordered by primary key. The rows keep
 * the database's JSON text; `snapshotChanges` parses it.
 */
export interface SnapshotPage {
  rows: SnapshotRow[];
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

/**
 * A change's outcome as its push transaction stored it, so a retry is
 * answered with it (`duplicate: true`). Stores keep, per (client key,
 * mutation id), the list of the outcomes of the changes carrying that id (a
 * field push may send several fields as one mutation). The server row or
 * field value is not stored: it is read fresh for the answer.
 */
export interface StoredOutcome {
  status: 'applied' | 'conflict' | 'rejected';
  /** Field change: which row and field it was (picks it out of its mutation's list). */
  entityId?: string;
  field?: string;
  /** Applied: the row id (the one the database gave a create sent without one). */
  id?: string | null;
  /** Applied: the version the write produced. */
  version?: number;
  /** Applied field change: its HLC. */
  hlc?: number;
  merged?: boolean;
  /** Conflict or rejected: why. */
  reason?: string;
  issues?: SchemaIssue[];
}

/** Outcomes are kept for a client's latest mutation ids only: those above `last - OUTCOME_WINDOW`. */
export const OUTCOME_WINDOW = 1000;

/** What an entity push stores of one change's outcome. */
export function storedOutcome(result: AppliedChange): StoredOutcome {
  if (result.status === 'applied') return { status: 'applied', id: result.id, version: result.version, merged: result.merged || undefined };
  return { status: result.status, reason: result.reason, issues: result.issues };
}

/** What a field push stores of one change's outcome. */
export function storedFieldOutcome(outcome: FieldOutcome): StoredOutcome {
  const { entityId, field } = outcome.change;
  if (outcome.status === 'applied') return { status: 'applied', entityId, field, version: outcome.version, hlc: outcome.hlc };
  return { status: outcome.status, entityId, field, reason: outcome.reason, issues: outcome.issues };
}

/** The outcomes to store of a push's new changes, by mutation id (several changes of a field push may share one). */
export function newOutcomes<C extends { mutationId: number | null }, R>(
  plan: { stored(result: R): StoredOutcome },
  changes: readonly C[],
  results: ReadonlyArray<R | undefined>,
  isDuplicate: (change: C) => boolean,
): Map<number, StoredOutcome[]> {
  const byMutation = new Map<number, StoredOutcome[]>();
  for (const [index, change] of changes.entries()) {
    if (change.mutationId === null || isDuplicate(change)) continue;
    const list = byMutation.get(change.mutationId) ?? [];
    list.push(plan.stored(results[index] as R));
    byMutation.set(change.mutationId, list);
  }
  return byMutation;
}

/** The stored outcome of this change among its mutation's (null when none was kept). */
export function storedFor(change: ValidatedChange | FieldWrite, stored: readonly StoredOutcome[] | null): StoredOutcome | null {
  if (!stored) return null;
  if (!('field' in change)) return stored[0] ?? null;
  return stored.find((outcome) => outcome.entityId === change.entityId && outcome.field === change.field) ?? null;
}

/**
 * The answer to a retried entity mutation: its stored outcome, with the
 * server row as it is now (`current`, read in the push transaction). Without
 * a stored outcome (recorded before outcomes were kept, or below the window),
 * the answer is `applied` with the current row, which the client converges to.
 */
export function replayedChange(
  change: ValidatedChange,
  stored: StoredOutcome | null,
  current: { row: Row | null; version: number },
): AppliedChange {
  const base = { mutationId: change.mutationId, duplicate: true } as const;
  if (stored === null) {
    return { ...base, id: change.id, status: 'applied', row: current.row, serverVersion: current.version, version: current.version };
  }
  if (stored.status === 'rejected') return { ...base, id: change.id, status: 'rejected', reason: stored.reason, issues: stored.issues };
  const id = stored.status === 'applied' && stored.id !== undefined ? stored.id : change.id;
  const answer: AppliedChange = { ...base, id, status: stored.status, row: current.row, serverVersion: current.version };
  if (stored.status === 'conflict') answer.reason = stored.reason;
  else {
    answer.version = stored.version ?? current.version;
    if (stored.merged) answer.merged = true;
  }
  return answer;
}

/** The id whose current row answers a retried entity mutation (a keyless create's stored id). */
export function replayedId(change: ValidatedChange, stored: StoredOutcome | null): string | null {
  return stored?.status === 'applied' && stored.id !== undefined ? stored.id : change.id;
}

/**
 * The exactly-once rule for a client without a record. Records are pruned
 * after `cleanup`'s client retention; a client coming back after that may
 * hold mutations the server applied before it forgot them, so a push of an
 * unknown client whose lowest mutation id is above 1 is refused with 409
 * `client_unknown` (nothing written), never applied again. A client that
 * has never had an answer for its id says so with `fresh` (its first
 * mutations may have been refused without a record), and is recorded.
 * A client resending mutations it sent before says `retry`: how many ms
 * ago the first of them left. Without a record, if that was before the
 * cutoff of a cleanup that pruned client records (`clients_pruned_before`),
 * the push is refused too, whatever the ids (a first push applied, its
 * answer lost, then pruned); a later one cannot have lost a record.
 */
export const ClientRecord = {
  /** Whether a push of a client without a record must be refused. */
  unknown: (
    push: { fresh?: boolean; retry?: number | null },
    changes: ReadonlyArray<{ mutationId: number | null }>,
    prunedBefore: () => number,
  ): boolean =>
    (push.retry != null && Date.now() - push.retry <= prunedBefore() && prunedBefore() > 0) ||
    (!push.fresh && Math.min(...changes.map((change) => change.mutationId ?? Number.POSITIVE_INFINITY)) > 1),
  error: (): SyncError =>
    new SyncError(
      ErrorCode.ClientUnknown,
      'the server has no exactly-once record for this client_id (pruned after a long absence): its changes may already be applied; start a new client_id',
      409,
    ),
};

/** An entity's must-refetch horizon, as the hub's prune check reads it. */
export interface PrunedHorizon {
  entity: string;
  horizon: number;
  /** Set by `raiseHorizon` (above every cursor handed out then), not by a cleanup. */
  raised: boolean;
  /** When a cleanup last raised it (epoch ms; 0 when none did). */
  prunedAt: number;
}

/** Everything a store needs to apply one push batch. */
export interface PushBatch {
  schema: TableSchema;
  /** Key of the exactly-once bookkeeping (per user when authorization is on). */
  clientId: string | null;
  /** The writer stamped on the logged changes (`writerOf` the client id, never the id itself); defaults to clientId. */
  origin?: string | null;
  /** See `ClientRecord`. */
  fresh?: boolean;
  retry?: number | null;
  changes: ValidatedChange[];
  /**
   * Called inside the transaction for each change that is not a duplicate.
   * Must be synchronous: SQLite transactions cannot span an await. When it
   * throws a SyncError (a forbidden change), the store must roll the whole
   * batch back and rethrow it; other errors reject just that change.
   */
  decide: (change: ValidatedChange, server: ServerRowState, index: number) => WriteDecision;
}

/**
 * Run a core callback (decide, a write check) inside a store's push: a
 * SyncError (forbidden) rolls the whole push back; any other error becomes
 * `fallback`, rejecting just that change. Every dialect's push uses it.
 */
export function guarded<T>(call: () => T, fallback: (message: string) => T): T {
  try {
    return call();
  } catch (error) {
    if (error instanceof SyncError) throw error;
    return fallback((error as Error).message);
  }
}

/**
 * A snapshot page from up to `limit + 1` current rows in key order (the extra
 * row only says that more follow). Every dialect's snapshot read ends here.
 */
export function snapshotPage(rows: SnapshotRow[], limit: number, version: number): SnapshotPage {
  const more = rows.length > limit;
  if (more) rows.length = limit;
  return { rows, version, after: more ? rows[rows.length - 1]?.id : undefined };
}

/** A snapshot page's rows as creates (each at its latest version), their data parsed. */
export function snapshotChanges(entity: string, page: SnapshotPage): Change[] {
  return page.rows.map((row) => ({
    entity,
    id: row.id,
    entity_id: row.id,
    action: 'create',
    data: JSON.parse(row.data) as Row,
    version: row.version,
  }));
}

/** The JSON text of `snapshotChanges(entity, page)`, built around the database's row text instead of parsing it. */
export function changesJson(entity: string, page: SnapshotPage): string {
  const head = `{"entity":${JSON.stringify(entity)},"id":`;
  let text = '[';
  for (let index = 0; index < page.rows.length; index++) {
    const row = page.rows[index] as SnapshotRow;
    const id = JSON.stringify(row.id);
    text += `${index ? ',' : ''}${head}${id},"entity_id":${id},"action":"create","data":${row.data},"version":${row.version}}`;
  }
  return `${text}]`;
}

/** The state of a row the server never had. */
export const NO_ROW: ServerRowState = Object.freeze({ row: null, version: 0, hlc: 0, base: null });

/** A database the engine can sync. Implementations: SqliteStore, PostgresStore. */
export interface Store {
  /**
   * Field-level bookkeeping on the same database (the optional capability that
   * field-level sync needs); absent when this store cannot keep it.
   */
  openFieldStore?(): Promise<FieldStore>;
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
  /** The same page as `snapshot`, as the JSON text of its changes. */
  snapshotJson(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotJson>;
  /** Lowest cursor still served incrementally; older cursors must refetch. */
  retainedSince(entity: string): Promise<number>;
  /** The entities whose `retainedSince` is above `since` (the hub's check that cleanup pruned nothing it had yet to read). */
  prunedAbove(since: number): Promise<PrunedHorizon[]>;
  /** Give these entities a new must-refetch horizon above every cursor handed out so far; returns it. */
  raiseHorizon(entities: readonly string[]): Promise<number>;
  /** Apply a push batch in one transaction, recording the client's last mutation id in it. */
  push(batch: PushBatch): Promise<AppliedChange[]>;
  /** Rows in an entity's table (progress of a first catch-up). */
  countRows(entity: string): Promise<number>;
  /** Rows in the change log (metrics). */
  logSize(): Promise<number>;
  /**
   * Prune what a caught-up client no longer needs, in one transaction: log
   * entries older than `olderThanMs` (epoch ms) that a newer entry supersedes
   * or that record a delete (remembering the newest pruned delete per entity,
   * so `retainedSince` sends older cursors a reset), the field bookkeeping's
   * tombstones at or below that horizon, and exactly-once client records of
   * both families not used since `clientsOlderThanMs`. Returns how many log
   * entries were removed.
   */
  cleanup(olderThanMs: number, clientsOlderThanMs: number): Promise<number>;
  /** Call `onChange` soon after any committed write to the log, by anyone. Returns a stop function. */
  watch(onChange: () => void): () => void;
  /**
   * Follow the synced tables' schema while the store runs (DDL by anyone: a
   * migration, another process, another node). Once a table's shape changed
   * (`shapeFingerprint`), the store has re-installed its capture triggers
   * (entity and field) and raised the entity's must-refetch horizon, so
   * `retainedSince` sends every cursor handed out before the change a reset;
   * then it calls `listener` with the new shapes. Failures (a synced table
   * renamed or dropped) go to `onError`. Optional: a store without it is
   * introspected once, at `init`. Only while someone `watch`es. Returns a stop function.
   */
  onSchemaChange?(listener: (schemas: TableSchema[]) => void, onError?: (error: unknown) => void): () => void;
  close(): Promise<void>;
}

/**
 * A table's shape as one number (a 53-bit hash): its primary key and, in
 * order, each column's name, wire type, nullability and the type the database
 * declares (`declaredTypes`, same order). Stores persist it per entity: a
 * different one at start or after DDL means clients hold rows of another shape.
 */
export function shapeFingerprint(schema: TableSchema, declaredTypes: readonly string[]): number {
  const text = JSON.stringify([
    schema.primaryKey,
    schema.columns.map((column, index) => [column.name, column.type, column.nullable, declaredTypes[index] ?? '']),
  ]);
  // cyrb53: small, fast, well distributed; no Node or Web crypto in core.
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index);
    h1 = Math.imul(h1 ^ code, 2654435761);
    h2 = Math.imul(h2 ^ code, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

// ─── Field-level sync: the optional capability ───────────────────────────────

/** A synced table and the columns field-level sync may write (every column but the primary key). */
export interface FieldTarget {
  schema: TableSchema;
  fields: ColumnSchema[];
}

/** A field value ready to bind: booleans stay booleans (each dialect binds them its way), blobs are bytes. */
export type FieldValue = string | number | boolean | Uint8Array | null;

/**
 * The exactly-once record of a client's field pushes. Entity and field pushes
 * share one client table; a client's two mutation-id sequences are kept apart
 * by this suffix on the field key, so the same `client_id` used for both never
 * makes one family's retry look like the other's duplicate.
 */
export function fieldClientKey(clientKey: string): string {
  return `${clientKey}\u001ffields`;
}

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

/**
 * The answer to a retried field mutation: its stored outcome, with the
 * field's state as it is now (`current`: its last write and value). Without a
 * stored outcome the answer is `applied` with the current state, as before.
 */
export function replayedField(
  change: FieldWrite,
  stored: StoredOutcome | null,
  current: { version: number; hlc: number; value: unknown },
): FieldOutcome {
  if (stored?.status === 'rejected') return { change, status: 'rejected', duplicate: true, reason: stored.reason, issues: stored.issues };
  const answer: FieldOutcome = { change, status: stored?.status ?? 'applied', duplicate: true, ...current };
  if (stored?.status === 'conflict') answer.reason = stored.reason;
  if (stored?.status === 'applied') {
    answer.version = stored.version ?? current.version;
    answer.hlc = stored.hlc ?? current.hlc;
  }
  return answer;
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
  /** Key of the exactly-once record, already namespaced by the core with `fieldClientKey` (same table as entity pushes). */
  clientId: string | null;
  /** The writer stamped on the written changes (`writerOf` the client id, never the id itself); defaults to clientId. */
  origin?: string | null;
  /** See `ClientRecord`. */
  fresh?: boolean;
  retry?: number | null;
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

/**
 * Field-level bookkeeping (per-field version, HLC, writer and value), the
 * optional capability a Store offers through `Store.openFieldStore()`. Like
 * the Store, it decides nothing: it reads the server state of each change
 * inside its write transaction and asks `decide` (core/merge rules) what to do.
 * All methods are async so a pg pool fits.
 */
export interface FieldStore {
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
  /**
   * The current rows with these ids, as the row's JSON shows them (what read
   * rules judge); ids of missing rows are absent from the map.
   */
  rows(entity: string, ids: readonly string[]): Promise<Map<string, Row>>;
  /** Highest change-log version a reader may use as a cursor now. */
  currentVersion(): Promise<number>;
  close(): Promise<void>;
}
