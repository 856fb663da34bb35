/**
 * The local replica: applying server changes (pull pages and live batches)
 * to the entity stores, over the storage contract (store.ts).
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
 * - Live batches apply in order; after one fails, none until the next
 *   catch-up pull, so a cursor never moves past a lost batch.
 */
import type { Change, LiveChangeMessage, PullResponse, Row } from '../../core/protocol.js';
import type { RowChange } from '../events.js';
import { hlcObserve, uuid } from '../hlc.js';
import type { Http, SyncHttpError } from '../net/http.js';
import { type Db, META, OUTBOX, type Tx } from './store.js';

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

/** Per-entity cursor in `META` under `c:<entity>`: version and, mid-snapshot, the continuation token. */
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

/** The browser's client id, made on first use; the entity and field clients share it. */
export async function clientIdIn(tx: Tx): Promise<string> {
  const id = (await tx.get<string>(META, 'cid')) ?? uuid();
  tx.put(META, id, 'cid');
  return id;
}

/** Remove bookkeeping fields before handing a row to the app. */
export const publicRow = (row: StoredRow | undefined): Row | undefined => {
  if (!row) return row;
  const { _v, _a, ...rest } = row;
  return rest;
};

/** The version a new local change is based on: what we last saw from the server, or our acknowledged write. */
export const knownVersion = (row: StoredRow | null | undefined): number | undefined => Math.max(row?._v ?? 0, row?._a ?? 0) || undefined;

/** Apply one local mutation on top of a row; returns the resulting row (undefined when deleted). */
export function applyLocal(tx: Tx, entry: OutboxEntry, current: StoredRow | undefined): StoredRow | undefined {
  if (entry.action === 'delete') {
    tx.delete(entry.entity, entry.id);
    return undefined;
  }
  const row: StoredRow = { ...current, ...entry.data, id: entry.id };
  tx.put(entry.entity, row);
  return row;
}

/**
 * Re-apply a pending change on a newer server row. What it now sits on is
 * what a rejection restores (`prev`): the row it was first made on may be
 * gone (a delete applied meanwhile), and the cursor has moved past that.
 */
export function rebase(tx: Tx, entry: OutboxEntry, row: StoredRow | undefined): StoredRow | undefined {
  entry.prev = row ?? null;
  tx.put(OUTBOX, entry);
  return applyLocal(tx, entry, row);
}

/** Pending outbox entries of one entity, in mutation order. */
export const pendingFor = async (tx: Tx, entity: string): Promise<OutboxEntry[]> =>
  (await tx.all<OutboxEntry>(OUTBOX)).filter((entry) => entry.entity === entity);

/**
 * Apply server changes of one entity inside `tx`. `floor` is the cursor:
 * changes at or below it are already applied. Snapshot rows (`floor` null)
 * skip the per-row version read: their store was just cleared.
 */
export async function applyServer(tx: Tx, entity: string, changes: Change[], floor: number | null): Promise<RowChange[]> {
  const pending = await pendingFor(tx, entity);
  const applied: RowChange[] = [];
  for (const change of changes) {
    hlcObserve(change.hlc);
    if (floor !== null && change.version <= floor) continue;
    const id = String(change.id ?? change.entity_id);
    const current = floor === null ? undefined : await tx.get<StoredRow>(entity, id);
    // Rows written before change capture was installed carry version 0, so only an existing copy can be newer.
    if (current && (current._v ?? 0) >= change.version) continue;
    let row: StoredRow | undefined = change.action === 'delete' || !change.data ? undefined : { ...change.data, id, _v: change.version };
    // Our acknowledged write is newer than this change: keep knowing it until its echo arrives.
    if (row && (current?._a ?? 0) > change.version) row._a = current?._a;
    if (row) tx.put(entity, row);
    else tx.delete(entity, id);
    for (const entry of pending) if (entry.id === id) row = rebase(tx, entry, row);
    // Live HTML travels with the row (to this tab's page and the others'); IndexedDB keeps the row only.
    applied.push(change.dom_id === undefined ? [entity, id, change.action] : [entity, id, change.action, [change.dom_id, change.html]]);
  }
  return applied;
}

/** What applying server changes needs from its client. */
export interface ReplicaHost {
  db: Db;
  /** The push gate (flusher.ts): resolves once no push waits for its answer. */
  idle(): Promise<void>;
  changed(rows: RowChange[]): void;
}

/**
 * Pull one entity until caught up: snapshot pages (`reset`, then `next`
 * tokens) or incremental pages (`since`, `has_more`), streamed in one
 * response where the server streams. Each page and its cursor land in one
 * transaction, while the next page is read and parsed. A stream cut short
 * resumes from the last page applied. Resolves with the cursor reached.
 */
export async function pullEntity(
  { db, idle, changed }: ReplicaHost,
  http: Http,
  entity: string,
  progress: (detail: ProgressDetail) => void,
): Promise<number> {
  const key = cursorKey(entity);
  const pages =
    http.lines ??
    async function* <T>(path: string) {
      yield await http<T>(path);
    };
  for (;;) {
    const cursor = await db.read([META], (tx) => tx.get<Cursor>(META, key));
    const token = cursor?.n;
    const stop = new AbortController();
    const stream = pages<PullResponse>(
      `/${encodeURIComponent(entity)}?since=${token ? `0&snapshot=${encodeURIComponent(token)}` : (cursor?.v ?? 0)}&stream=1`,
      stop.signal,
    );
    try {
      let ahead = stream.next();
      for (;;) {
        const { value: page, done } = await ahead;
        // Cut short (or a server that does not stream): go on from the cursor the last page left.
        if (done) break;
        ahead = stream.next();
        ahead.catch(() => {});
        // A push answer still on its way must not overwrite what this page brings (the push gate, flusher.ts).
        await idle();
        const [rows, next, snapshot, total, loaded] = await db.write([entity, META, OUTBOX], async (tx) => {
          const now = await tx.get<Cursor>(META, key);
          // Mid-snapshot (a token stored by the page before): this page continues it.
          const continuing = !page.reset && now?.n !== undefined;
          const snapshot = page.reset || continuing;
          const rows: RowChange[] = [];
          if (page.reset) {
            tx.clear(entity);
            // Pending local changes survive a reset: re-apply them on the empty store.
            for (const entry of await pendingFor(tx, entity)) {
              rebase(tx, entry, await tx.get<StoredRow>(entity, entry.id));
              rows.push([entity, entry.id, entry.action]);
            }
          }
          rows.push(...(await applyServer(tx, entity, page.changes, snapshot ? null : (now?.v ?? 0))));
          const next: Cursor = { v: snapshot ? page.version : Math.max(now?.v ?? 0, page.version) };
          const total = page.total ?? now?.t;
          const loaded = (continuing ? (now?.l ?? 0) : 0) + page.changes.length;
          if (page.next) Object.assign(next, { n: page.next, t: total, l: loaded });
          tx.put(META, next, key);
          return [rows, next, snapshot, total, loaded] as const;
        });
        changed(rows);
        // A snapshot of several pages: its first page announced the row count (an upper bound under read rules).
        if (snapshot && total !== undefined) progress({ entity, loaded: page.has_more ? loaded : total, total });
        if (!page.has_more) return next.v;
      }
    } catch (error) {
      // A snapshot token the server no longer accepts (e.g. after a deploy): start the snapshot over.
      if (!token || (error as SyncHttpError).code !== 'bad_cursor') throw error;
      await db.write([META], (tx) => tx.delete(META, key));
    } finally {
      stop.abort();
    }
  }
}

/**
 * Apply live batches for `entities` (read at each batch): each batch and the
 * cursors it moves are one transaction, for every entity whose copy is
 * complete (a pull brings the rest). A failed batch is reported to `failed`,
 * whose caller reconnects: its cursor did not move, so the pull brings it again.
 */
export function liveApplier({ db, idle, changed }: ReplicaHost, entities: string[], failed: (error: unknown) => void) {
  let chain = Promise.resolve();
  let stalled = false;
  return {
    /** Queue one live batch behind the others. */
    apply(message: LiveChangeMessage): void {
      chain = chain.then(async () => {
        if (stalled) return;
        // A push answer still on its way must not overwrite what this batch brings (the push gate, flusher.ts).
        await idle();
        const changesOf = (entity: string) => message.changes.filter((change) => change.entity === entity);
        const names = entities.filter((entity) => changesOf(entity).length);
        try {
          const rows = await db.write([...names, META, OUTBOX], async (tx) => {
            const rows: RowChange[] = [];
            for (const entity of entities) {
              const cursor = await tx.get<Cursor>(META, cursorKey(entity));
              // Not caught up yet (or mid-snapshot): the pull will bring these.
              if (!cursor || cursor.n) continue;
              if (names.includes(entity)) rows.push(...(await applyServer(tx, entity, changesOf(entity), cursor.v)));
              if (message.version > cursor.v) tx.put(META, { v: message.version }, cursorKey(entity));
            }
            return rows;
          });
          changed(rows);
        } catch (error) {
          stalled = true;
          failed(error);
        }
      });
    },
    /** A catch-up pull is starting: batches apply again. */
    resume(): void {
      stalled = false;
    },
  };
}
