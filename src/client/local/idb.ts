/**
 * The storage contract (store.ts) over IndexedDB: one store per entity plus
 * `META`, `OUTBOX` and the field stores, created by version upgrades however
 * many tabs race to upgrade at once. `write` resolves at the transaction's
 * `complete` event, never at a request's `success`: until then a later abort
 * (QuotaExceededError, a closing tab) undoes it all.
 */
import { type Db, keyPath, META, OUTBOX, type Tx } from './store.js';

/** One IDB request as a promise; awaiting it inside a transaction keeps the transaction alive. */
const req = <T>(request: IDBRequest<T>): Promise<T> =>
  new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });

/** Open (lazily) the client's IndexedDB database `name`. */
export function openDb(name: string): Db {
  const wanted = new Set([META, OUTBOX]);
  let current: Promise<IDBDatabase> | null = null;

  const open = (): Promise<IDBDatabase> =>
    new Promise((resolve, reject) => {
      const attempt = (version?: number) => {
        const request = indexedDB.open(name, version);
        request.onupgradeneeded = () => {
          const db = request.result;
          for (const store of wanted) if (!db.objectStoreNames.contains(store)) db.createObjectStore(store, { keyPath: keyPath(store) });
        };
        request.onsuccess = () => {
          const db = request.result;
          if ([...wanted].some((store) => !db.objectStoreNames.contains(store))) {
            // Another tab may upgrade at the same time; loop until every store we need is there.
            db.close();
            attempt(db.version + 1);
            return;
          }
          // Another tab upgrades, or the browser closes the connection (storage cleared): reopen on next use.
          db.onversionchange = () => {
            db.close();
            current = null;
          };
          db.onclose = () => {
            current = null;
          };
          resolve(db);
        };
        request.onerror = (event) => {
          // A racing tab upgraded past the version we asked for: reopen at the latest one.
          if (request.error?.name === 'VersionError') {
            event.preventDefault();
            attempt();
          } else reject(request.error);
        };
      };
      attempt();
    });

  // A failed open is tried again on next use.
  const get = (): Promise<IDBDatabase> =>
    (current ??= open().catch((error) => {
      current = null;
      throw error;
    }));

  const ensure = async (stores: string[]): Promise<IDBDatabase> => {
    const db = await get();
    if (stores.every((store) => db.objectStoreNames.contains(store))) return db;
    for (const store of stores) wanted.add(store);
    db.close();
    current = null;
    return get();
  };

  const run = async <T>(stores: string[], mode: IDBTransactionMode, body: (tx: Tx) => Promise<T> | T): Promise<T> => {
    const begin = async () => (await ensure(stores)).transaction(stores, mode);
    // The connection was closed under us (an upgrade in this or another tab): once more on a fresh one.
    const tx = await begin().catch(begin);
    const store = (name: string) => tx.objectStore(name);
    return new Promise((resolve, reject) => {
      let result: T;
      tx.oncomplete = () => resolve(result);
      tx.onabort = () => reject(tx.error ?? new DOMException('transaction aborted', 'AbortError'));
      // The body starts synchronously: the transaction is only active until this task ends.
      (async () =>
        body({
          get: (name, key) => req(store(name).get(key)),
          all: (name) => req(store(name).getAll()),
          put: (name, value, key) => store(name).put(value, key),
          delete: (name, key) => store(name).delete(key),
          clear: (name) => store(name).clear(),
        }))().then(
        (value) => {
          result = value;
        },
        (error) => {
          try {
            tx.abort();
          } catch {}
          reject(error);
        },
      );
    });
  };

  return {
    has: async (store) => (await get()).objectStoreNames.contains(store),
    read: (stores, body) => run(stores, 'readonly', body),
    write: (stores, body) => run(stores, 'readwrite', body),
  };
}
