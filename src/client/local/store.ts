/**
 * The storage contract the sync logic runs on: named stores, read and
 * written in transactions (as Replicache's kv store), implemented over
 * IndexedDB (idb.ts) in the browser and in memory (memory.ts) for the soak's
 * Node devices and tests, which so run the same replica and outbox code.
 *
 * - `write` resolves only once the transaction is durable (IndexedDB:
 *   `complete`, not a request's `success`); a body that throws, or a write
 *   that fails, rolls it all back and rejects.
 * - A body awaits only its own `tx` reads: an IndexedDB transaction commits
 *   by itself once a task passes without a request on it.
 * - Writes apply in order; reads see the transaction's own earlier writes.
 */

/** A store key: row ids and meta keys are strings, outbox keys numbers (which sort first). */
export type Key = string | number;

/** Reads and writes inside one transaction. */
export interface Tx {
  get<T>(store: string, key: Key): Promise<T | undefined>;
  /** Every value of a store, in key order (the outbox: mutation order). */
  all<T>(store: string): Promise<T[]>;
  /** Insert or replace; `key` only for a store without a key path (`META`). */
  put(store: string, value: unknown, key?: Key): void;
  delete(store: string, key: Key): void;
  clear(store: string): void;
}

/** A database; the stores a transaction names are created on first use. */
export interface Db {
  /** Whether a store exists (reading an unknown entity must not create one). */
  has(store: string): Promise<boolean>;
  read<T>(stores: string[], body: (tx: Tx) => Promise<T> | T): Promise<T>;
  write<T>(stores: string[], body: (tx: Tx) => Promise<T> | T): Promise<T>;
}

/** Cursors (`c:<entity>`), the client id (`cid`), mutation counters (`mid`, `fmid`) and the schema; keys out of line. */
export const META = 'rhtmx:meta';
/** The durable entity outbox, keyed (and so ordered) by `mutation_id`. */
export const OUTBOX = 'rhtmx:outbox';

/** A store's key path: none for `META`, `mutation_id` for the outbox, `id` for rows and field records. */
export const keyPath = (store: string): string | undefined => (store === META ? undefined : store === OUTBOX ? 'mutation_id' : 'id');
