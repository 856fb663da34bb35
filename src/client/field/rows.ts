/**
 * Field changes on top of the entity-level replica's rows.
 *
 * Values live in the entity stores the entity client keeps (one row per id,
 * `_v` the server row version): the field client writes a recorded field into
 * that row at once, and re-applies still-pending field changes whenever the
 * entity client replaces the row with a newer server copy (a rebase), so an
 * edit stays visible until the server has answered it.
 *
 * Store names contain a colon, which entity names cannot, so they never collide.
 */

import { type FieldAction, ROW_FIELD } from '../../core/protocol.js';
import type { RowChange } from '../events.js';
import { req } from '../idb.js';
import type { StoredRow } from '../replica.js';

/** The field outbox, keyed (and so ordered) by the field mutation id. */
export const FIELD_OUTBOX = 'rhtmx:field-outbox';
/**
 * Per-row field versions this browser has seen outside the row's `_v`: what
 * its own applied pushes produced and what conflicts reported. Key
 * `<entity>:<id>`, value `{ id, f: { field: version } }`.
 */
export const FIELD_SEEN = 'rhtmx:field-seen';

/** A field change as stored in the field outbox (`id` is the mutation id). */
export interface StoredFieldChange {
  id: number;
  entity: string;
  entity_id: string;
  field: string;
  value?: unknown;
  action: FieldAction;
  base_version?: number;
  /** Client hybrid-logical-clock timestamp of the edit. */
  timestamp: number;
}

/** A `FIELD_SEEN` record. */
export interface SeenFields {
  id: string;
  f: Record<string, number>;
}

/** Key of a row's `FIELD_SEEN` record. */
export const seenKey = (entity: string, id: string): string => `${entity}:${id}`;

/** Pending field changes of one entity (of one row when `id` is given), oldest first. */
export const pendingFields = async (tx: IDBTransaction, entity: string, id?: string): Promise<StoredFieldChange[]> =>
  ((await req(tx.objectStore(FIELD_OUTBOX).getAll())) as StoredFieldChange[]).filter(
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
export function writeRow(
  store: IDBObjectStore,
  entity: string,
  id: string,
  current: StoredRow | undefined,
  next: StoredRow | undefined,
): RowChange[] {
  if (JSON.stringify(current) === JSON.stringify(next)) return [];
  if (next) store.put(next);
  else store.delete(id);
  return [[entity, id, next ? (current ? 'update' : 'create') : 'delete']];
}
