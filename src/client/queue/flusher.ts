/**
 * The one outbox flusher: drains a durable queue (entity mutations, field
 * edits) to the server for both clients.
 *
 * Invariants:
 * - It never runs twice at once; a call while it runs makes it go round again.
 * - Entries leave in key (mutation id) order: a batch is the queue's head
 *   plus the entries right behind it that `fits` allows; `settle` removes
 *   an entry only once the server answered it.
 * - A network failure (offline, 5xx, 401, 429, no socket reply, a full disk)
 *   keeps everything and retries with full-jitter backoff, forever.
 * - A refused request (`SyncHttpError.refused`) is split until one entry is
 *   left, which settles as rejected: one bad entry never blocks the queue.
 * - Server changes wait while a batch is in flight (`idle`, the push gate).
 * - Each queue pushes as its own client (`sendAs`): the browser's id, plus a
 *   generation once the server forgot it. Before a batch leaves, the highest
 *   key ever sent is durable; `fresh` goes with every push until one is
 *   answered. When the server has forgotten the client (409
 *   `client_unknown`, after its record was pruned), the entries sent before
 *   may or may not be applied: they settle as rejected (the log brings the
 *   server's rows), and the rest go on as a new, fresh client. Nothing is
 *   applied twice.
 */

import { clientIdIn } from '../local/replica.js';
import { type Db, META } from '../local/store.js';
import { backoff } from '../net/connection.js';
import { SyncHttpError } from '../net/http.js';

/** Most entries sent in one request. */
const BATCH = 100;

/** What a queue gets from its client. */
export interface QueueHost {
  db: Db;
  /** False while offline: the flusher then waits for the next call (reconnecting flushes). */
  online(): boolean;
  /** Storage failures (QuotaExceededError...), reported to the app; the queue is kept and retried. */
  error(error: unknown): void;
  log(...args: unknown[]): void;
}

/** Who a batch is sent as. */
export interface SendAs {
  client_id: string;
  /** No push of this id has been answered yet, and none of these were sent before (core/store.ts ClientRecord). */
  fresh?: true;
  /** Some of these were sent before: ms since the first of them left (true: unknown). */
  retry?: number | true;
}

/** What the flusher needs to know about one queue. */
export interface QueueOptions<Entry, Result> extends QueueHost {
  /** The queue's store; its key order is the send order. */
  store: string;
  /** META key of the queue's identity. */
  identity: string;
  /** An entry's key: its mutation id. */
  key(entry: Entry): number;
  /** Whether `entry` may join `batch` (which starts with the queue's head). */
  fits(batch: Entry[], entry: Entry): boolean;
  /** Send one batch; resolves with its results. */
  send(batch: Entry[], as: SendAs): Promise<Result[]>;
  /** The result standing for a lone entry whose request the server refused. */
  rejected(entry: Entry, reason: string): Result;
  /** Apply the answers, one per entry (and remove the entries), in one transaction. */
  settle(batch: Entry[], results: Result[]): Promise<void>;
  /** After `client_unknown`: these entries, settled as rejected, may have been applied; their rows need the server's state. */
  forgotten?(lost: Entry[]): Promise<void>;
}

/** A queue's flusher: call it whenever there may be something to send. */
export interface Flusher {
  (): Promise<void>;
  /**
   * The push gate: resolves once no batch waits for its answer (at once when
   * none does). Pull pages and live batches wait for it.
   *
   * A push answer describes the row as the push left it: `applied` keeps the
   * optimistic row, `duplicate` and `conflict` carry the server row of that
   * moment. A newer change of the same row applied before the answer is
   * settled would be overwritten by it, and since the cursor has already moved
   * past that change it never comes again: the replica keeps a deleted row, or
   * its own value over a newer one, for good. The answer of an HTTP push and
   * the live stream travel on separate connections, and a WebSocket reply can
   * trail a live batch too, so arrival order proves nothing. Live batches and
   * pull pages therefore wait for the answer and are applied after it; they
   * are version-checked and idempotent, so applying them late is always right.
   */
  idle(): Promise<void>;
}

/** A storage failure, not a network one: IndexedDB rejects with DOMExceptions, a request deadline with `TimeoutError`. */
export const isStorageError = (error: unknown): boolean => error instanceof DOMException && error.name !== 'TimeoutError';

/**
 * A queue's identity in META: its generation, the highest key it sent,
 * whether a push of it was answered, and when the last batch of new keys
 * (from `f`) first left.
 */
interface Identity {
  g?: number;
  s?: number;
  k?: 1;
  t?: number;
  f?: number;
}

/** The flusher of one queue: call it whenever there may be something to send. */
export function flusher<Entry, Result>(options: QueueOptions<Entry, Result>): Flusher {
  const { db, store, identity, key } = options;
  let gate = Promise.resolve();
  let running = false;
  let again = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const flush = async (): Promise<void> => {
    if (running) {
      again = true;
      return;
    }
    clearTimeout(timer);
    if (!options.online()) return;
    running = true;
    // After the server refused a whole batch, send one at a time to find the bad entry.
    let limit = BATCH;
    try {
      for (;;) {
        again = false;
        // Server changes arriving before the answer is settled are applied after it (`idle`).
        let release!: () => void;
        gate = new Promise((resolve) => {
          release = resolve;
        });
        try {
          let results: Result[];
          // One transaction reads the queue's head and makes the batch's identity durable before it leaves.
          // `before`: the identity as this batch found it; `sent` the highest key that left before it.
          const next = await db.write([store, META], async (tx): Promise<[Entry[], SendAs, Identity] | null> => {
            const batch: Entry[] = [];
            for (const entry of await tx.all<Entry>(store)) {
              if (batch.length >= limit || (batch.length && !options.fits(batch, entry))) break;
              batch.push(entry);
            }
            if (!batch.length) return null;
            const self = (await tx.get<Identity>(META, identity)) ?? {};
            const first = key(batch[0] as Entry);
            const top = key(batch.at(-1) as Entry);
            const id = await clientIdIn(tx);
            const client_id = self.g ? `${id}.${self.g}` : id;
            // Sent before: the server may have applied it, and must not take this for a new client.
            if (first <= (self.s ?? 0)) {
              if (top > (self.s ?? 0)) tx.put(META, { ...self, s: top }, identity);
              return [batch, { client_id, retry: self.t && first >= (self.f ?? 1) ? Date.now() - self.t : true }, self];
            }
            tx.put(META, { ...self, s: top, t: Date.now(), f: first }, identity);
            // A queue that sent before identities were kept (its first key is not 1) was answered then.
            return [batch, !self.k && (self.g || self.s || first === 1) ? { client_id, fresh: true } : { client_id }, self];
          });
          if (!next) break;
          const [batch, as, before] = next;
          const sent = before.s ?? 0;
          try {
            results = await options.send(batch, as);
            if (!before.k)
              await db.write([META], async (tx) => tx.put(META, { ...(await tx.get<Identity>(META, identity)), k: 1 }, identity));
          } catch (error) {
            // The server answered no (4xx, or a socket error reply): nothing of it was applied, so none of it counts as sent.
            if (error instanceof SyncHttpError && error.status < 500) await db.write([META], (tx) => tx.put(META, before, identity));
            if (error instanceof SyncHttpError && error.code === 'client_unknown') {
              // Nothing of this batch was applied (409); what left before may have been.
              const lost = await db.write([META, store], async (tx) => {
                tx.put(META, { g: ((await tx.get<Identity>(META, identity))?.g ?? 0) + 1 }, identity);
                return (await tx.all<Entry>(store)).filter((entry) => key(entry) <= sent);
              });
              for (const entry of lost) await options.settle([entry], [options.rejected(entry, error.message)]);
              await options.forgotten?.(lost);
              continue;
            }
            if (!(error instanceof SyncHttpError && error.refused)) throw error;
            if (batch.length > 1) {
              limit = 1;
              continue;
            }
            results = [options.rejected(batch[0] as Entry, error.message)];
          }
          // An entry without a result: settle nothing, retry later (the server dedupes what it applied).
          if (results.length < batch.length) throw new Error('push answer without a result');
          await options.settle(batch, results);
        } finally {
          release();
        }
      }
      attempt = 0;
    } catch (error) {
      options.log('push failed, retrying', error);
      if (isStorageError(error)) options.error(error);
      again = false;
      timer = setTimeout(flush, backoff(attempt++));
    } finally {
      running = false;
      if (again) void flush();
    }
  };
  return Object.assign(flush, { idle: () => gate });
}
