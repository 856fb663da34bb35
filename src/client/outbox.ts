/**
 * The durable outbox: local mutations, applied optimistically, sent to the
 * server in order and removed only when the server has answered them.
 *
 * Invariants:
 * - A mutation, its optimistic row write and its mutation id are one IDB
 *   transaction; it is queued (and `push` resolves) only at `complete`.
 * - Every mutation carries the browser's `client_id` and an increasing
 *   `mutation_id` (the counter lives in IDB, so tabs never reuse one); the
 *   server applies a retried id once and answers `duplicate`.
 * - Network failures retry with backoff forever; a conflict or rejection
 *   settles that one mutation and the queue moves on behind it.
 * - A batch never holds two mutations of one row: the later one's
 *   `base_version` is only known once the earlier one is acknowledged.
 */
import type { ChangeAction, PushChange, PushResult, Row, ServerMessage } from '../core/protocol.js';
import { backoff, deadline } from './connection.js';
import type { RowChange } from './events.js';
import { hlcNow, uuid } from './hlc.js';
import { type Db, META, OUTBOX, req } from './idb.js';
import { holdServerChanges } from './push-gate.js';
import { applyLocal, knownVersion, type OutboxEntry, pendingFor, type StoredRow } from './replica.js';

/** What `push(entity, change)` takes. */
export interface LocalChange {
  /** Row id; a UUID is made for creates without one. */
  id?: string | number;
  action: ChangeAction;
  data?: Row | null;
  /** Override the version the change is based on (defaults to the row version this browser knows). */
  base_version?: number;
}

/** Detail of `rhtmx:sync:conflict`. */
export interface ConflictDetail {
  entity: string;
  id: string;
  change: OutboxEntry;
  result: PushResult;
}

/** Why a send failed: `rejected` means the server refused the request itself (retrying cannot help). */
export type SendError = Error & { rejected?: boolean };

/** Sends one batch of one entity; resolves with per-change results. */
export type Sender = (entity: string, changes: PushChange[]) => Promise<PushResult[]>;

/** Most mutations sent in one request. */
const BATCH = 100;

/** Write a local mutation and its optimistic row in one transaction; resolves once durable. */
export async function enqueue(db: Db, entity: string, change: LocalChange): Promise<OutboxEntry> {
  const given = change.id ?? change.data?.id;
  const id = String(given ?? uuid());
  return db.run([entity, META, OUTBOX], 'readwrite', async (tx) => {
    const meta = tx.objectStore(META);
    const store = tx.objectStore(entity);
    const mutationId = (((await req(meta.get('mid'))) as number | undefined) ?? 0) + 1;
    meta.put(mutationId, 'mid');
    const prev = ((await req(store.get(id))) as StoredRow | undefined) ?? null;
    const entry: OutboxEntry = {
      mutation_id: mutationId,
      entity,
      id,
      action: change.action,
      data: change.data ?? null,
      base_version: change.base_version ?? knownVersion(prev),
      timestamp: hlcNow(),
      prev,
    };
    if (given === undefined || given === null) entry.tmp = true;
    tx.objectStore(OUTBOX).add(entry);
    applyLocal(store, entry, prev ?? undefined);
    return entry;
  });
}

/**
 * Error codes that refuse the request itself; everything else (and any answer
 * without our JSON error body, e.g. a proxy's 404) is retried. A bare 413 is
 * a refusal too: the batch is split until it fits.
 */
const REFUSED = /^(413|bad_request|bad_json|unknown_entity|unknown_column|payload_too_large|json_too_deep|unknown_message)$/;

/** A sender over the live WebSocket when there is one, else HTTP POST. */
export function sender(base: string, clientId: () => string, ws: (message: any) => Promise<ServerMessage | null> | null): Sender {
  const fail = (reason: string, rejected: boolean): never => {
    throw Object.assign(new Error(reason), { rejected }) as SendError;
  };
  return async (entity, changes) => {
    const body = { client_id: clientId(), changes };
    const viaSocket = ws({ type: 'push', entity, ...body });
    if (viaSocket) {
      const reply = await viaSocket;
      if (reply?.type === 'push_ack') return reply.results;
      return reply?.type === 'error' ? fail(reply.message, REFUSED.test(reply.code)) : fail('no reply', false);
    }
    const response = await fetch(`${base}/${encodeURIComponent(entity)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: deadline(),
    });
    const answer = await response.json().catch(() => null);
    if (response.ok) return answer.results;
    return fail(answer?.error?.message ?? `HTTP ${response.status}`, REFUSED.test(answer?.error?.code ?? String(response.status)));
  };
}

/** What the flusher needs from the client. */
export interface OutboxOptions {
  db: Db;
  send: Sender;
  /** Whether the entity's key is an integer the database assigns (then creates are sent without our temporary id). */
  integerKey(entity: string): Promise<boolean>;
  changed(rows: RowChange[]): void;
  conflict(detail: ConflictDetail): void;
  /** IndexedDB failures (e.g. QuotaExceededError), reported to the app; the outbox is kept and retried. */
  error(error: unknown): void;
  log(...args: unknown[]): void;
}

/** The flusher: call it whenever there may be something to send; it never runs twice at once. */
export function outboxFlusher(options: OutboxOptions): () => Promise<void> {
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
    // The `online` event reconnects, and the new connection flushes.
    if (!navigator.onLine) {
      running = false;
      return;
    }
    // After the server refused a whole batch, send one at a time to find the bad mutation.
    let limit = BATCH;
    try {
      for (;;) {
        again = false;
        const queue = (await db.run([OUTBOX], 'readonly', (tx) => req(tx.objectStore(OUTBOX).getAll()))) as OutboxEntry[];
        const entity = queue[0]?.entity;
        if (entity === undefined) break;
        const batch: OutboxEntry[] = [];
        const ids = new Set<string>();
        for (const entry of queue) {
          if (entry.entity !== entity || ids.has(entry.id) || batch.length >= limit) break;
          ids.add(entry.id);
          batch.push(entry);
        }
        const keyless = batch.some((entry) => entry.tmp) && (await options.integerKey(entity));
        // Server changes arriving before the answer is settled are applied after it (see push-gate.ts).
        const release = holdServerChanges(db);
        try {
          let results: PushResult[];
          try {
            results = await options.send(
              entity,
              batch.map(({ mutation_id, id, action, data, base_version, timestamp, tmp }) => ({
                mutation_id,
                id: tmp && keyless ? undefined : id,
                action,
                data,
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
            const [only] = batch as [OutboxEntry];
            results = [{ mutation_id: only.mutation_id, id: only.id, status: 'rejected', reason: (error as Error).message }];
          }
          await settle(entity, batch, results);
        } finally {
          release();
        }
      }
      attempt = 0;
    } catch (error) {
      // Offline, server down, 5xx, 401, 429, a full disk...: keep everything and try again later, forever.
      options.log('push failed, retrying', error);
      if (error instanceof DOMException && error.name !== 'TimeoutError') options.error(error);
      again = false;
      timer = setTimeout(flush, backoff(attempt++));
    } finally {
      running = false;
      if (again) void flush();
    }
  };

  /** Apply the server's answers: drop acknowledged entries, revert conflicts and rejections to the server row. */
  const settle = async (entity: string, batch: OutboxEntry[], results: PushResult[]) => {
    const conflicts: ConflictDetail[] = [];
    const rows = await db.run([entity, OUTBOX], 'readwrite', async (tx) => {
      const store = tx.objectStore(entity);
      const box = tx.objectStore(OUTBOX);
      const queue = await pendingFor(tx, entity);
      const touched: RowChange[] = [];
      for (const [index, entry] of batch.entries()) {
        const result = results.find((candidate) => candidate.mutation_id === entry.mutation_id) ?? results[index];
        // No answer for it: undo this whole settlement and retry later (the server dedupes what it applied).
        if (!result) throw new Error('push answer without a result');
        box.delete(entry.mutation_id);
        const later = queue.filter((other) => other.mutation_id > entry.mutation_id && other.id === entry.id);
        let row = (await req(store.get(entry.id))) as StoredRow | undefined;
        const server = result.row === undefined ? undefined : result.row && { ...result.row, id: entry.id };
        if (result.status === 'applied') {
          // The database assigned the key of a create sent without one: move the row and its later changes to it.
          const id = result.id ?? entry.id;
          // Later changes of this row were made on top of this one: they are based on the version it produced.
          for (const other of later) {
            box.put({ ...other, id, base_version: other.base_version === entry.base_version ? result.version : other.base_version });
          }
          if (id !== entry.id) {
            store.delete(entry.id);
            // The live echo of the create may have arrived first.
            let moved = ((await req(store.get(id))) as StoredRow | undefined) ?? (row && { ...row, id, _a: result.version });
            if (moved) store.put(moved);
            for (const other of later) moved = applyLocal(store, { ...other, id }, moved);
            touched.push([entity, entry.id, 'delete'], [entity, id, 'create']);
            continue;
          }
          if (server === undefined) {
            if (row && result.version) store.put({ ...row, _a: result.version });
            continue;
          }
          // A retried (duplicate) or merged write: the server row is the truth.
          row = server ? { ...server, _v: result.version ?? result.server_version } : undefined;
        } else {
          conflicts.push({ entity, id: entry.id, change: entry, result });
          row = server === undefined ? (entry.prev ?? undefined) : server ? { ...server, _v: result.server_version } : undefined;
        }
        if (row) store.put(row);
        else store.delete(entry.id);
        for (const other of later) row = applyLocal(store, other, row);
        touched.push([entity, entry.id, row ? 'update' : 'delete']);
      }
      return touched;
    });
    options.changed(rows);
    for (const detail of conflicts) options.conflict(detail);
  };

  return flush;
}
