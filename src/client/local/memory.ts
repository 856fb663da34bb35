/**
 * The storage contract (store.ts) in memory, for the soak's Node devices and
 * tests. Transactions run one at a time (IndexedDB serialises overlapping
 * read-write scopes the same way); writes are staged and land together when
 * the body returns, or not at all; values are structured clones.
 */
import { type Db, type Key, keyPath, type Tx } from './store.js';

/** One committed write: `[store]` clears, `[store, key]` deletes, `[store, key, value]` puts. */
export type Write = [store: string, key?: Key, value?: unknown];

/** A memory database; its committed state can be read synchronously and replayed. */
export interface MemoryDb extends Db {
  /** The committed values of a store by key, as of this call (do not modify). */
  peek(store: string): ReadonlyMap<Key, unknown>;
  /** Every committed value as writes: replayed, they rebuild this database. */
  dump(): Write[];
  /** Like a page going away: transactions not yet committed, and all later ones, fail. */
  close(): void;
}

/** IndexedDB's key order: numbers before strings. */
const order = (a: Key, b: Key): number => (typeof a === typeof b ? (a < b ? -1 : a > b ? 1 : 0) : typeof a === 'number' ? -1 : 1);

/** A memory database rebuilt from `history` (earlier commits, in order); `onCommit` sees each commit before it resolves. */
export function memoryDb(history: Iterable<Write[]> = [], onCommit?: (writes: Write[]) => void): MemoryDb {
  type Tables = Map<string, Map<Key, unknown>>;
  let data: Tables = new Map();
  const table = (tables: Tables, store: string) => tables.get(store) ?? (tables.set(store, new Map()).get(store) as Map<Key, unknown>);
  const apply = (tables: Tables, [store, key, value]: Write) => {
    if (key === undefined) table(tables, store).clear();
    else if (value === undefined) table(tables, store).delete(key);
    else table(tables, store).set(key, value);
  };
  for (const writes of history) for (const write of writes) apply(data, write);
  let closed = false;
  let turn: Promise<unknown> = Promise.resolve();

  const run = <T>(body: (tx: Tx) => Promise<T> | T): Promise<T> => {
    const next = turn.then(async () => {
      const gone = () => new DOMException('the database is closed', 'InvalidStateError');
      if (closed) throw gone();
      // The transaction works on a copy (the stores are small), which replaces the data once the body returns.
      const copy: Tables = new Map([...data].map(([store, values]) => [store, new Map(values)]));
      const writes: Write[] = [];
      const write = (change: Write) => {
        writes.push(change);
        apply(copy, change);
      };
      const result = await body({
        get: async <V>(store: string, key: Key) => structuredClone(table(copy, store).get(key)) as V | undefined,
        all: async <V>(store: string) =>
          [...table(copy, store)].sort(([a], [b]) => order(a, b)).map(([, value]) => structuredClone(value) as V),
        put(store, value, key = (value as Record<string, Key>)[keyPath(store) ?? '']) {
          if (key === undefined) throw new DOMException('no key', 'DataError');
          write([store, key, structuredClone(value)]);
        },
        delete: (store, key) => write([store, key]),
        clear: (store) => write([store]),
      });
      if (closed) throw gone();
      data = copy;
      if (writes.length) onCommit?.(writes);
      return result;
    });
    turn = next.catch(() => {});
    return next;
  };

  return {
    has: async (store) => data.has(store),
    read: (_stores, body) => run(body),
    write: (_stores, body) => run(body),
    peek: (store) => data.get(store) ?? new Map(),
    dump: () => [...data].flatMap(([store, values]) => [...values].map(([key, value]): Write => [store, key, value])),
    close() {
      closed = true;
    },
  };
}
