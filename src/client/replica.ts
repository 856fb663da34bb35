/**
 * The local replica: applying server changes (pull pages and live batches)
 * to IndexedDB.
 *
 * Invariants:
 * - A cursor is written in the same transaction as the rows it covers, so a
 *   crash can never leave a cursor ahead of durable rows (PouchDB #1240).
 * - A snapshot spanning several pages keeps its continuation token next to
 *   the cursor; a reload resumes the snapshot instead of trusting a cursor
 *   whose rows only partly arrived.
 * - Applying is idempotent: a change at or below the cursor, or not newer
 *   than the stored row, is skipped; pending local mutations are re-applied
 *   on top of every server row they touch (a rebase), so optimistic edits
 *   stay visible until the server answers them.
 */
import type { Change, PullResponse, Row } from '../core/protocol.js';
import { fetchJson, type HttpError } from './connection.js';
import type { RowChange } from './events.js';
import { hlcObserve } from './hlc.js';
import { type Db, META, OUTBOX, req } from './idb.js';
import { serverChangesMayApply } from './push-gate.js';

/** A row as stored: the server row, `id` as a string, plus bookkeeping fields stripped by `get`/`all`. */
export type StoredRow = Row & {
  id: string;
  /** Version of the server row this copy is based on. */
  _v?: number;
  /** Version our own acknowledged write produced, before its echo arrived. */
  _a?: number;
};

/** A mutation waiting in the outbox (also what `pending()` returns). */
export interface OutboxEntry {
  mutation_id: number;
  entity: string;
  id: string;
  action: Change['action'];
  data: Row | null;
  /** The row version this change was based on (absent for new rows). */
  base_version?: number;
  /** Hybrid logical clock timestamp of the local write. */
  timestamp: number;
  /** The local row before this change, to restore when the server rejects it without a row. */
  prev: StoredRow | null;
  /** The id was made by this client (a create without id): integer-keyed tables get the server's id instead. */
  tmp?: true;
}

/** Per-entity cursor in `rhtmx:meta` under `c:<entity>`: version and, mid-snapshot, the continuation token. */
export interface Cursor {
  v: number;
  n?: string;
  /** Mid-snapshot: the row count the first page announced, and rows loaded so far (progress survives a reload). */
  t?: number;
  l?: number;
}

/** Detail of `rhtmx:sync:progress`: a snapshot of several pages is loading; the last page reports `loaded === total`. */
export interface ProgressDetail {
  entity: string;
  loaded: number;
  total: number;
}

/** Meta key of an entity's cursor. */
export const cursorKey = (entity: string): string => `c:${entity}`;

/** Remove bookkeeping fields before handing a row to the app. */
export const publicRow = (row: StoredRow | undefined): Row | undefined => {
  if (!row) return row;
  const { _v, _a, ...rest } = row;
  return rest;
};

/** The version a new local change is based on: what we last saw from the server, or our acknowledged write. */
export const knownVersion = (row: StoredRow | null | undefined): number | undefined => Math.max(row?._v ?? 0, row?._a ?? 0) || undefined;

/** Apply one local mutation on top of a row; returns the resulting row (undefined when deleted). */
export function applyLocal(store: IDBObjectStore, entry: OutboxEntry, current: StoredRow | undefined): StoredRow | undefined {
  if (entry.action === 'delete') {
    store.delete(entry.id);
    return undefined;
  }
  const row: StoredRow = { ...current, ...entry.data, id: entry.id };
  store.put(row);
  return row;
}

/** Pending outbox entries of one entity, in mutation order. */
export const pendingFor = async (tx: IDBTransaction, entity: string): Promise<OutboxEntry[]> =>
  ((await req(tx.objectStore(OUTBOX).getAll())) as OutboxEntry[]).filter((entry) => entry.entity === entity);

/**
 * Apply server changes of one entity inside `tx`. `floor` is the cursor:
 * changes at or below it are already applied. Snapshot rows (`floor` null)
 * skip the per-row version read: their store was just cleared.
 */
export async function applyServer(tx: IDBTransaction, entity: string, changes: Change[], floor: number | null): Promise<RowChange[]> {
  const store = tx.objectStore(entity);
  const pending = await pendingFor(tx, entity);
  const applied: RowChange[] = [];
  for (const change of changes) {
    hlcObserve(change.hlc);
    if (floor !== null && change.version <= floor) continue;
    const id = String(change.id ?? change.entity_id);
    const current = floor === null ? undefined : ((await req(store.get(id))) as StoredRow | undefined);
    // Rows written before change capture was installed carry version 0, so only an existing copy can be newer.
    if (current && (current._v ?? 0) >= change.version) continue;
    let row: StoredRow | undefined = change.action === 'delete' || !change.data ? undefined : { ...change.data, id, _v: change.version };
    // Our acknowledged write is newer than this change: keep knowing it until its echo arrives.
    if (row && (current?._a ?? 0) > change.version) row._a = current?._a;
    if (row) store.put(row);
    else store.delete(id);
    for (const entry of pending) if (entry.id === id) row = applyLocal(store, entry, row);
    applied.push([entity, id, change.action]);
  }
  return applied;
}

/**
 * Pull one entity until caught up: snapshot pages (`reset`, then `next`
 * tokens) or incremental pages (`since`, `has_more`). Each page and its
 * cursor land in one transaction. Resolves with the cursor reached.
 */
export async function pullEntity(
  db: Db,
  base: string,
  entity: string,
  changed: (rows: RowChange[]) => void,
  progress: (detail: ProgressDetail) => void,
): Promise<number> {
  const key = cursorKey(entity);
  for (;;) {
    const cursor = (await db.run([META], 'readonly', (tx) => req(tx.objectStore(META).get(key)))) as Cursor | undefined;
    const token = cursor?.n;
    let page: PullResponse;
    try {
      page = await fetchJson<PullResponse>(
        `${base}/${encodeURIComponent(entity)}?since=${token ? `0&snapshot=${encodeURIComponent(token)}` : (cursor?.v ?? 0)}`,
      );
    } catch (error) {
      // A snapshot token the server no longer accepts (e.g. after a deploy): start the snapshot over.
      if (!token || (error as HttpError).body?.error.code !== 'bad_cursor') throw error;
      await db.run([META], 'readwrite', (tx) => tx.objectStore(META).delete(key));
      continue;
    }
    // A push answer still on its way must not overwrite what this page brings (see push-gate.ts).
    await serverChangesMayApply(db);
    const snapshot = Boolean(token || page.reset);
    const [rows, next, total, loaded] = await db.run(
      [entity, META, OUTBOX],
      'readwrite',
      async (tx): Promise<[RowChange[], Cursor, number | undefined, number]> => {
        const meta = tx.objectStore(META);
        const now = (await req(meta.get(key))) as Cursor | undefined;
        let rows: RowChange[] = [];
        if (page.reset) {
          tx.objectStore(entity).clear();
          // Pending local changes survive a reset: re-apply them on the empty store.
          for (const entry of await pendingFor(tx, entity)) {
            applyLocal(tx.objectStore(entity), entry, (await req(tx.objectStore(entity).get(entry.id))) as StoredRow | undefined);
            rows.push([entity, entry.id, entry.action]);
          }
        }
        rows = rows.concat(await applyServer(tx, entity, page.changes, snapshot ? null : (now?.v ?? 0)));
        const next: Cursor = { v: snapshot ? page.version : Math.max(now?.v ?? 0, page.version) };
        const total = page.total ?? now?.t;
        const loaded = (token ? (now?.l ?? 0) : 0) + page.changes.length;
        if (page.next) Object.assign(next, { n: page.next, t: total, l: loaded });
        meta.put(next, key);
        return [rows, next, total, loaded];
      },
    );
    changed(rows);
    // A snapshot of several pages: its first page announced the row count (an upper bound under read rules).
    if (snapshot && total !== undefined) progress({ entity, loaded: page.has_more ? loaded : total, total });
    if (!page.has_more) return next.v;
  }
}
