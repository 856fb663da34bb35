/**
 * The durable field outbox: field edits applied to the local row at once,
 * sent to `/api/field-sync` in order (the shared flusher), removed only once
 * the server answered.
 *
 * Values live in the entity stores the entity client keeps (one row per id,
 * `_v` the server row version): a recorded field is written into that row at
 * once, and still-pending field changes are re-applied whenever the entity
 * client replaces the row with a newer server copy (a rebase, `overlay`), so
 * an edit stays visible until the server has answered it.
 *
 * Invariants:
 * - The edit, its optimistic row write and its mutation id (`fmid` in
 *   `META`, shared by every tab, separate from entity mutation ids as on the
 *   server) are one transaction; `record` resolves once it is durable.
 * - `base_version` is the version of what the user saw: the row's server
 *   version in the replica (every field's version is at or below it), or a
 *   newer version of that field this browser learnt from its own push or a
 *   conflict. A field version from a feed that runs ahead of the displayed
 *   row would claim a value the user never saw.
 * - A batch is one row (the original crate's `push_fields`), never holds one
 *   field twice (the later edit's base is the version the earlier one
 *   produces), and keeps mutation-id order, so the server's exactly-once
 *   bookkeeping (highest applied id per client) holds across retries.
 *
 * Store names contain a colon, which entity names cannot, so they never collide.
 */
import { type FieldAction, type FieldPushChange, type FieldPushResult, type LatestFieldsResponse, ROW_FIELD } from '../../core/protocol.js';
import type { RowChange } from '../events.js';
import { hlcNow, hlcObserve } from '../hlc.js';
import { knownVersion, type StoredRow } from '../local/replica.js';
import { type Db, META, type Tx } from '../local/store.js';
import { type Flusher, flusher, type QueueHost, type SendAs } from '../queue/flusher.js';

/** The field outbox, keyed (and so ordered) by the field mutation id. */
export const FIELD_OUTBOX = 'rhtmx:field-outbox';
/**
 * Per-row field versions this browser has seen outside the row's `_v`: what
 * its own applied pushes produced and what conflicts reported. Key
 * `<entity>:<id>`, value `{ id, f: { field: version } }`.
 */
export const FIELD_SEEN = 'rhtmx:field-seen';

/** A field change as stored in the field outbox. */
export interface StoredFieldChange {
  /** The field mutation id. */
  id: number;
  entity: string;
  entity_id: string;
  /** Column name, or `*` for a row delete. */
  field: string;
  value?: unknown;
  action: FieldAction;
  /** The version of the field this browser had seen when the edit was made. */
  base_version?: number;
  /** Client hybrid-logical-clock timestamp of the edit. */
  timestamp: number;
}

/** Detail of `rhtmx:field:conflict`. */
export interface FieldConflictDetail {
  entity: string;
  id: string;
  field: string;
  /** The value the server kept (undefined for a rejection). */
  server_value: unknown;
  /** The value this browser sent. */
  client_value: unknown;
  /** The server's field merge strategy. */
  strategy: string;
  /** The server's answer: `status` is `conflict` or `rejected` (then `reason` says why). */
  result: FieldPushResult;
}

/** What the field outbox needs from the client. */
export interface FieldOutboxOptions extends QueueHost {
  /** Send one row's field changes; resolves with one result per change, in order. */
  send(entity: string, id: string, changes: FieldPushChange[], as: SendAs): Promise<FieldPushResult[]>;
  /** The server's current fields of a row (null: the row never existed). */
  latest(entity: string, id: string): Promise<LatestFieldsResponse | null>;
  changed(rows: RowChange[]): void;
  /** A change the server did not apply as sent (the client adds the strategy and fires the event). */
  conflict(detail: Omit<FieldConflictDetail, 'strategy'>): void;
}

const seenKey = (entity: string, id: string): string => `${entity}:${id}`;
/** A row's `FIELD_SEEN` record. */
const seenIn = async (tx: Tx, entity: string, id: string) =>
  (await tx.get<{ id: string; f: Record<string, number> }>(FIELD_SEEN, seenKey(entity, id))) ?? { id: seenKey(entity, id), f: {} };

/** Pending field changes of one entity (of one row when `id` is given), oldest first. */
export const pendingFields = async (tx: Tx, entity: string, id?: string): Promise<StoredFieldChange[]> =>
  (await tx.all<StoredFieldChange>(FIELD_OUTBOX)).filter(
    (change) => change.entity === entity && (id === undefined || change.entity_id === id),
  );

/** `row` with the changes of row `id` applied in order: a row delete removes it, an update (re-)creates it. */
export function overlay(row: StoredRow | undefined, id: string, changes: StoredFieldChange[]): StoredRow | undefined {
  for (const change of changes) {
    if (change.entity_id !== id) continue;
    row = change.field === ROW_FIELD ? undefined : { ...row, id, [change.field]: change.action === 'delete' ? null : change.value };
  }
  return row;
}

/** Store `next` in place of `current` when they differ; returns the row change to announce, if any. */
export function writeRow(tx: Tx, entity: string, id: string, current: StoredRow | undefined, next: StoredRow | undefined): RowChange[] {
  if (JSON.stringify(current) === JSON.stringify(next)) return [];
  if (next) tx.put(entity, next);
  else tx.delete(entity, id);
  return [[entity, id, next ? (current ? 'update' : 'create') : 'delete']];
}

/** Write a field edit (or a row delete) and its optimistic row in one transaction; resolves once durable. */
export function record(
  db: Db,
  entity: string,
  id: string,
  field: string,
  action: FieldAction,
  value?: unknown,
): Promise<[StoredFieldChange, RowChange[]]> {
  return db.write([entity, META, FIELD_OUTBOX, FIELD_SEEN], async (tx) => {
    const mutationId = ((await tx.get<number>(META, 'fmid')) ?? 0) + 1;
    tx.put(META, mutationId, 'fmid');
    const row = await tx.get<StoredRow>(entity, id);
    const seen = (await seenIn(tx, entity, id)).f;
    // A row delete is based on the whole row: every field version seen.
    const base = Math.max(knownVersion(row) ?? 0, ...(field === ROW_FIELD ? Object.values(seen) : [seen[field] ?? 0]));
    const change: StoredFieldChange = { id: mutationId, entity, entity_id: id, field, action, timestamp: hlcNow() };
    if (action === 'update') change.value = value;
    if (base) change.base_version = base;
    tx.put(FIELD_OUTBOX, change);
    return [change, writeRow(tx, entity, id, row, overlay(row, id, [change]))];
  });
}

/** The field outbox's flusher: call it whenever there may be something to send. */
export function fieldFlusher(options: FieldOutboxOptions): Flusher {
  const { db } = options;

  /**
   * Apply the answers for one row: drop the changes, remember the versions
   * they taught us, and put the server's value in the row where it differs
   * from what was sent. The server's value is known "as of" a version; when
   * the replica already holds a later server row, or for a rejection, the
   * row's current fields are asked for instead.
   */
  const settle = async (batch: StoredFieldChange[], results: FieldPushResult[]) => {
    const { entity, entity_id: id } = batch[0] as StoredFieldChange;
    let refresh = false;
    const reports: Array<Omit<FieldConflictDetail, 'strategy'>> = [];
    const rows = await db.write([entity, FIELD_OUTBOX, FIELD_SEEN], async (tx) => {
      const seen = await seenIn(tx, entity, id);
      const current = await tx.get<StoredRow>(entity, id);
      let row = current;
      const queue = await pendingFields(tx, entity, id);
      for (const [index, change] of batch.entries()) {
        const result = results[index] as FieldPushResult;
        tx.delete(FIELD_OUTBOX, change.id);
        hlcObserve(result.hlc);
        if (result.status !== 'applied') {
          const { field, value } = change;
          reports.push({ entity, id, field, server_value: result.server_value, client_value: result.client_value ?? value, result });
        }
        const version = result.version ?? 0;
        if (change.field === ROW_FIELD || result.status === 'rejected') {
          // An applied row delete is already gone locally; a refused one needs the server's row back.
          refresh ||= result.status !== 'applied';
          continue;
        }
        seen.f[change.field] = Math.max(seen.f[change.field] ?? 0, version);
        if (result.status === 'applied') {
          // Later edits of this field were made on top of this one (the row showed it): they are based on the version it produced.
          for (const later of queue) {
            if (later.id > change.id && later.field === change.field && (later.base_version ?? 0) < version) {
              tx.put(FIELD_OUTBOX, { ...later, base_version: version });
            }
          }
        }
        if (!row) continue;
        if ((row._v ?? 0) > version) refresh = true;
        else row = { ...row, [change.field]: result.status === 'applied' ? result.value : result.server_value };
      }
      tx.put(FIELD_SEEN, seen);
      const left = queue.filter((change) => !batch.some((sent) => sent.id === change.id));
      return writeRow(tx, entity, id, current, overlay(row, id, left));
    });
    options.changed(rows);
    // The changes are settled whatever happens here: a failure only leaves the row to the next server change.
    if (refresh) await refreshRow(entity, id).catch(options.log);
    for (const report of reports) options.conflict(report);
  };

  /** Put the server's current fields into the local row (pending edits re-applied on top). */
  const refreshRow = async (entity: string, id: string) => {
    let state: LatestFieldsResponse | null;
    try {
      state = await options.latest(entity, id);
    } catch (error) {
      // The next server change of the row brings it anyway.
      options.log('latest failed', error);
      return;
    }
    hlcObserve(state?.hlc);
    const rows = await db.write([entity, FIELD_OUTBOX], async (tx) => {
      const current = await tx.get<StoredRow>(entity, id);
      let row = current;
      // A later server row already in the replica is newer than this answer.
      if (!state || (row?._v ?? 0) <= state.version) {
        row = undefined;
        if (state && !state.deleted) {
          row = { ...current, id };
          for (const [field, { value }] of Object.entries(state.fields)) row[field] = value;
        }
      }
      return writeRow(tx, entity, id, current, overlay(row, id, await pendingFields(tx, entity, id)));
    });
    options.changed(rows);
  };

  return flusher<StoredFieldChange, FieldPushResult>({
    ...options,
    store: FIELD_OUTBOX,
    identity: 'fid',
    key: (change) => change.id,
    fits: (batch, change) =>
      change.entity === batch[0]?.entity && change.entity_id === batch[0].entity_id && !batch.some((other) => other.field === change.field),
    send: (batch, as) =>
      options.send(
        (batch[0] as StoredFieldChange).entity,
        (batch[0] as StoredFieldChange).entity_id,
        batch.map(({ id, entity, ...change }) => ({ ...change, mutation_id: id })),
        as,
      ),
    rejected: ({ id, entity_id, field }, reason) => ({ mutation_id: id, entity_id, field, status: 'rejected', reason }),
    settle,
  });
}
