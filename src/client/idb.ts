/**
 * IndexedDB access: one object store per entity (keyPath `id`, always a
 * string), `rhtmx:meta` for cursors and ids, `rhtmx:outbox` for mutations.
 *
 * Invariant: a write counts only once its transaction fires `complete`
 * (`request.onsuccess` is not durable), so `run` resolves there and nowhere
 * else. Stores for entities configured later are added by a version upgrade;
 * a tab that holds an older connection closes it on `versionchange` and
 * reopens lazily, so upgrades in other tabs are never blocked for long.
 */

/** Cursors (`c:<entity>`), the client id (`cid`) and the last mutation id (`mid`). Keys are out of line. */
export const META = 'rhtmx:meta';
/** Durable outbox, keyed (and so ordered) by `mutation_id`. */
export const OUTBOX = 'rhtmx:outbox';

/** Turn one IDB request into a promise; awaiting it inside a transaction keeps the transaction alive. */
export const req = <T>(request: IDBRequest<T>): Promise<T> =>
  new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });

/** A database handle that creates missing stores and survives upgrades from other tabs. */
export interface Db {
  /** Make sure these stores exist (version upgrade when needed). */
  ensure(stores: string[]): Promise<IDBDatabase>;
  /** Whether a store exists (without opening anything). */
  has(store: string): Promise<boolean>;
  /**
   * Run `body` in one transaction. Resolves with its result at `complete`;
   * rejects with the transaction's error (e.g. QuotaExceededError) on abort.
   */
  run<T>(stores: string[], mode: IDBTransactionMode, body: (tx: IDBTransaction) => Promise<T> | T): Promise<T>;
}

/** Open (lazily) the client's database; stores are created on first use. */
export function openDb(name: string): Db {
  const wanted = new Set([META, OUTBOX]);
  let current: Promise<IDBDatabase> | null = null;

  const open = (): Promise<IDBDatabase> =>
    new Promise((resolve, reject) => {
      const attempt = (version?: number) => {
        const request = indexedDB.open(name, version);
        request.onupgradeneeded = () => {
          const db = request.result;
          for (const store of wanted) {
            if (!db.objectStoreNames.contains(store)) {
              db.createObjectStore(store, store === META ? undefined : { keyPath: store === OUTBOX ? 'mutation_id' : 'id' });
            }
          }
        };
        request.onsuccess = () => {
          const db = request.result;
          if ([...wanted].some((store) => !db.objectStoreNames.contains(store))) {
            // Another tab may upgrade at the same time; loop until every store we need is there.
            db.close();
            attempt(db.version + 1);
            return;
          }
          db.onversionchange = () => {
            db.close();
            current = null;
          };
          // The browser may close the connection (storage cleared): reopen on next use.
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

  const get = (): Promise<IDBDatabase> => {
    if (!current) {
      current = open();
      current.catch(() => {
        current = null;
      });
    }
    return current;
  };

  const ensure = async (stores: string[]): Promise<IDBDatabase> => {
    const db = await get();
    if (stores.every((store) => db.objectStoreNames.contains(store))) return db;
    for (const store of stores) wanted.add(store);
    db.close();
    current = null;
    return get();
  };

  return {
    ensure,
    has: async (store) => (await get()).objectStoreNames.contains(store),
    async run<T>(stores: string[], mode: IDBTransactionMode, body: (tx: IDBTransaction) => Promise<T> | T): Promise<T> {
      let tx: IDBTransaction;
      try {
        tx = (await ensure(stores)).transaction(stores, mode);
      } catch {
        // The connection was closed under us (an upgrade in this or another tab): once more on a fresh one.
        tx = (await ensure(stores)).transaction(stores, mode);
      }
      return new Promise((resolve, reject) => {
        let result: T;
        tx.oncomplete = () => resolve(result);
        tx.onabort = () => reject(tx.error ?? new DOMException('transaction aborted', 'AbortError'));
        // Called synchronously: the transaction is only active until this task ends.
        let pending: Promise<T>;
        try {
          pending = Promise.resolve(body(tx));
        } catch (error) {
          pending = Promise.reject(error);
        }
        pending.then(
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
    },
  };
}
