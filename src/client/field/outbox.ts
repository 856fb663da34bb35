/**
 * The durable field outbox: field edits applied to the local row at once,
 * sent to `/api/field-sync` in order, removed only once the server answered.
 *
 * Invariants:
 * - The edit, its optimistic row write and its mutation id (`fmid` in
 *   `rhtmx:meta`, shared by every tab, separate from entity mutation ids as
 *   on the server) are one IDB transaction; `record` resolves at `complete`.
 * - `base_version` is the version of what the user saw: the row's server
 *   version in the replica (every field's version is at or below it), or a
 *   newer version of that field this browser learnt from its own push or a
 *   conflict. A field version from a feed that runs ahead of the displayed
 *   row would claim a value the user never saw.
 * - A batch is one row (the seed's `push_fields`), never holds one field
 *   twice (the later edit's base is the version the earlier one produces),
 *   and keeps mutation-id order, so the server's exactly-once bookkeeping
 *   (highest applied id per client) holds across retries.
 * - Network failures retry with backoff forever; a conflict or rejection
 *   settles that one change and the queue moves on.
 */

import { type FieldAction, type FieldPushChange, type FieldPushResult, type LatestFieldsResponse, ROW_FIELD } from '../../core/protocol.js';
import { backoff } from '../connection.js';
import type { RowChange } from '../events.js';
import { hlcNow, hlcObserve } from '../hlc.js';
import { type Db, META, req } from '../idb.js';
import { knownVersion, type StoredRow } from '../replica.js';
import { FIELD_OUTBOX, FIELD_SEEN, overlay, pendingFields, type SeenFields, type StoredFieldChange, seenKey, writeRow } from './rows.js';

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

/** Sends one row's field changes; resolves with one result per change, in order. Throws a `SendError` on failure. */
export type FieldSender = (entity: string, id: string, changes: FieldPushChange[]) => Promise<FieldPushResult[]>;

/** Why a send failed: `rejected` means the server refused the request itself (retrying cannot help). */
export type SendError = Error & { rejected?: boolean };

/** What the flusher needs from the client. */
export interface FieldOutboxOptions {
  db: Db;
  send: FieldSender;
  /** The server's current fields of a row (null: the row never existed). */
  latest(entity: string, id: string): Promise<LatestFieldsResponse | null>;
  changed(rows: RowChange[]): void;
  /** A change the server did not apply as sent (the client adds the strategy and fires the event). */
  conflict(detail: Omit<FieldConflictDetail, 'strategy'>): void;
  /** IndexedDB failures (QuotaExceededError...), reported to the app; the outbox is kept and retried. */
  error(error: unknown): void;
  log(...args: unknown[]): void;
}

/** Most changes sent in one push. */
const BATCH = 100;

/** Write a field edit (or a row delete) and its optimistic row in one transaction; resolves once durable. */
export function record(
  db: Db,
  entity: string,
  id: string,
  field: string,
  action: FieldAction,
  value?: unknown,
): Promise<[StoredFieldChange, RowChange[]]> {
  return db.run([entity, META, FIELD_OUTBOX, FIELD_SEEN], 'readwrite', async (tx) => {
    const meta = tx.objectStore(META);
    const rows = tx.objectStore(entity);
    const mutationId = (((await req(meta.get('fmid'))) as number | undefined) ?? 0) + 1;
    meta.put(mutationId, 'fmid');
    const row = (await req(rows.get(id))) as StoredRow | undefined;
    const seen = ((await req(tx.objectStore(FIELD_SEEN).get(seenKey(entity, id)))) as SeenFields | undefined)?.f ?? {};
    // A row delete is based on the whole row: every field version seen.
    const base = Math.max(knownVersion(row) ?? 0, ...(field === ROW_FIELD ? Object.values(seen) : [seen[field] ?? 0]));
    const change: StoredFieldChange = { id: mutationId, entity, entity_id: id, field, action, timestamp: hlcNow() };
    if (action === 'update') change.value = value;
    if (base) change.base_version = base;
    tx.objectStore(FIELD_OUTBOX).add(change);
    return [change, writeRow(rows, entity, id, row, overlay(row, id, [change]))];
  });
}

/** The flusher: call it whenever there may be something to send; it never runs twice at once. */
export function fieldFlusher(options: FieldOutboxOptions): () => Promise<void> {
  const { db } = options;
  let running = false;
  let again = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const flush = async (): Promise<void> => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    // Back online, the connection state event flushes again.
    if (!navigator.onLine) {
      running = false;
      return;
    }
    // After the server refused a whole batch, send one change at a time to find the bad one.
    let limit = BATCH;
    try {
      for (;;) {
        again = false;
        const queue = (await db.run([FIELD_OUTBOX], 'readonly', (tx) => req(tx.objectStore(FIELD_OUTBOX).getAll()))) as StoredFieldChange[];
        const first = queue[0];
        if (!first) break;
        const batch: StoredFieldChange[] = [];
        const fields = new Set<string>();
        for (const change of queue) {
          if (change.entity !== first.entity || change.entity_id !== first.entity_id || fields.has(change.field) || batch.length >= limit)
            break;
          fields.add(change.field);
          batch.push(change);
        }
        let results: FieldPushResult[];
        try {
          results = await options.send(
            first.entity,
            first.entity_id,
            batch.map(({ id, entity_id, field, value, action, base_version, timestamp }) => ({
              mutation_id: id,
              entity_id,
              field,
              value,
              action,
              base_version,
              timestamp,
            })),
          );
        } catch (error) {
          if (!(error as SendError).rejected) throw error;
          if (batch.length > 1) {
            limit = 1;
            continue;
          }
          results = [
            { mutation_id: first.id, entity_id: first.entity_id, field: first.field, status: 'rejected', reason: (error as Error).message },
          ];
        }
        await settle(first.entity, first.entity_id, batch, results);
      }
      attempt = 0;
    } catch (error) {
      // Offline, server down, 5xx, 401, 429, a full disk...: keep everything and try again later, forever.
      options.log('field push failed, retrying', error);
      if (error instanceof DOMException && error.name !== 'TimeoutError') options.error(error);
      again = false;
      timer = setTimeout(flush, backoff(attempt++));
    } finally {
      running = false;
      if (again) void flush();
    }
  };

  /**
   * Apply the answers for one row: drop the changes, remember the versions
   * they taught us, and put the server's value in the row where it differs
   * from what was sent. The server's value is known "as of" a version; when
   * the replica already holds a later server row, or for a rejection, the
   * row's current fields are asked for instead.
   */
  const settle = async (entity: string, id: string, batch: StoredFieldChange[], results: FieldPushResult[]) => {
    let refresh = false;
    const reports: Array<Omit<FieldConflictDetail, 'strategy'>> = [];
    const rows = await db.run([entity, FIELD_OUTBOX, FIELD_SEEN], 'readwrite', async (tx) => {
      const box = tx.objectStore(FIELD_OUTBOX);
      const rowStore = tx.objectStore(entity);
      const seen = ((await req(tx.objectStore(FIELD_SEEN).get(seenKey(entity, id)))) as SeenFields | undefined) ?? {
        id: seenKey(entity, id),
        f: {},
      };
      const current = (await req(rowStore.get(id))) as StoredRow | undefined;
      let row = current;
      const queue = await pendingFields(tx, entity, id);
      for (const [index, change] of batch.entries()) {
        const result = results[index];
        // No answer for it: undo this whole settlement and retry later (the server dedupes what it applied).
        if (!result) throw new Error('push answer without a result');
        box.delete(change.id);
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
              box.put({ ...later, base_version: version });
            }
          }
        }
        if (!row) continue;
        if ((row._v ?? 0) > version) refresh = true;
        else row = { ...row, [change.field]: result.status === 'applied' ? result.value : result.server_value };
      }
      tx.objectStore(FIELD_SEEN).put(seen);
      const left = queue.filter((change) => !batch.some((sent) => sent.id === change.id));
      return writeRow(rowStore, entity, id, current, overlay(row, id, left));
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
    const rows = await db.run([entity, FIELD_OUTBOX], 'readwrite', async (tx) => {
      const store = tx.objectStore(entity);
      const current = (await req(store.get(id))) as StoredRow | undefined;
      let row = current;
      // A later server row already in the replica is newer than this answer.
      if (!state || (row?._v ?? 0) <= state.version) {
        row = undefined;
        if (state && !state.deleted) {
          row = { ...current, id };
          for (const [field, { value }] of Object.entries(state.fields)) row[field] = value;
        }
      }
      return writeRow(store, entity, id, current, overlay(row, id, await pendingFields(tx, entity, id)));
    });
    options.changed(rows);
  };

  return flush;
}
