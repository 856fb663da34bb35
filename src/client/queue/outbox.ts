/**
 * The durable entity outbox: local mutations, applied optimistically, sent
 * to the server in order (flusher.ts) and removed only when the server has
 * answered them.
 *
 * Invariants:
 * - A mutation, its optimistic row write and its mutation id are one
 *   transaction; it is queued (and `push` resolves) only once durable.
 * - Every mutation carries the browser's `client_id` and an increasing
 *   `mutation_id` (the counter lives in `META`, so tabs never reuse one); the
 *   server applies a retried id once and answers `duplicate`.
 * - A batch is one entity and never holds two mutations of one row: the
 *   later one's `base_version` is only known once the earlier one is acknowledged.
 * - A conflict or rejection settles that one mutation (its row goes back to
 *   the server's) and the queue moves on behind it.
 */
import type { ChangeAction, ClientMessage, PushChange, PushResult, Row, ServerMessage } from '../../core/protocol.js';
import type { RowChange } from '../events.js';
import { hlcNow, uuid } from '../hlc.js';
import { applyLocal, cursorKey, knownVersion, type OutboxEntry, pendingFor, rebase, type StoredRow } from '../local/replica.js';
import { type Db, META, OUTBOX } from '../local/store.js';
import type { Http } from '../net/http.js';
import { pushResults } from '../net/rpc.js';
import { type Flusher, flusher, type QueueHost, type SendAs } from './flusher.js';

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

/** Write a local mutation and its optimistic row in one transaction; resolves once durable. */
export async function enqueue(db: Db, entity: string, change: LocalChange): Promise<OutboxEntry> {
  const given = change.id ?? change.data?.id;
  const id = String(given ?? uuid());
  return db.write([entity, META, OUTBOX], async (tx) => {
    const mutationId = ((await tx.get<number>(META, 'mid')) ?? 0) + 1;
    tx.put(META, mutationId, 'mid');
    const prev = (await tx.get<StoredRow>(entity, id)) ?? null;
    const entry: OutboxEntry = {
      mutation_id: mutationId,
      entity,
      id,
      action: change.action,
      data: change.data ?? null,
      // A row only pending changes made (its server row gone meanwhile) is based on what they were based on;
      // an update of a row this replica does not hold is based on its cursor: the server must not take it for
      // a create once cleanup pruned the delete this replica already applied.
      base_version:
        change.base_version ??
        knownVersion(prev) ??
        (await pendingFor(tx, entity)).filter((other) => other.id === id).at(-1)?.base_version ??
        (change.action === 'update' && !prev ? (await tx.get<{ v: number }>(META, cursorKey(entity)))?.v || undefined : undefined),
      timestamp: hlcNow(),
      prev,
    };
    if (given === undefined || given === null) entry.tmp = true;
    tx.put(OUTBOX, entry);
    applyLocal(tx, entry, prev ?? undefined);
    return entry;
  });
}

/** A sender over the live WebSocket when there is one (`ws` returns null otherwise), else HTTP POST. */
export const sender =
  (http: Http, ws: (message: ClientMessage) => Promise<ServerMessage | null> | null): OutboxOptions['send'] =>
  (entity, changes, as) => {
    const body = { ...as, changes };
    return pushResults<PushResult>(ws({ type: 'push', entity, ...body }), () => http(`/${encodeURIComponent(entity)}`, body));
  };

/** What the entity outbox needs from the client. */
export interface OutboxOptions extends QueueHost {
  /** Send one batch of one entity; resolves with per-change results. */
  send(entity: string, changes: PushChange[], as: SendAs): Promise<PushResult[]>;
  /** Whether the entity's key is an integer the database assigns (then creates are sent without our temporary id). */
  integerKey(entity: string): Promise<boolean>;
  changed(rows: RowChange[]): void;
  conflict(detail: ConflictDetail): void;
  /** Pull again from the cursors in META (a reconnect). */
  refetch(): void;
}

/** The entity outbox's flusher: call it whenever there may be something to send. */
export function outboxFlusher(options: OutboxOptions): Flusher {
  const { db } = options;

  /** Apply the server's answers: drop acknowledged entries, revert conflicts and rejections to the server row. */
  const settle = async (batch: OutboxEntry[], results: PushResult[]) => {
    const { entity } = batch[0] as OutboxEntry;
    const conflicts: ConflictDetail[] = [];
    const rows = await db.write([entity, OUTBOX], async (tx) => {
      const queue = await pendingFor(tx, entity);
      const touched: RowChange[] = [];
      for (const [index, entry] of batch.entries()) {
        const result = results.find((candidate) => candidate.mutation_id === entry.mutation_id) ?? (results[index] as PushResult);
        tx.delete(OUTBOX, entry.mutation_id);
        const later = queue.filter((other) => other.mutation_id > entry.mutation_id && other.id === entry.id);
        let row = await tx.get<StoredRow>(entity, entry.id);
        const server = result.row === undefined ? undefined : result.row && { ...result.row, id: entry.id };
        if (result.status === 'applied') {
          // The database assigned the key of a create sent without one: move the row and its later changes to it.
          const id = result.id ?? entry.id;
          // Later changes of this row were made on top of this one: they are based on the version it produced.
          for (const other of later) {
            Object.assign(other, { id, base_version: other.base_version === entry.base_version ? result.version : other.base_version });
            tx.put(OUTBOX, other);
          }
          if (id !== entry.id) {
            tx.delete(entity, entry.id);
            // The live echo of the create may have arrived first.
            let moved = (await tx.get<StoredRow>(entity, id)) ?? (row && { ...row, id, _a: result.version });
            if (moved) tx.put(entity, moved);
            for (const other of later) moved = applyLocal(tx, { ...other, id }, moved);
            touched.push([entity, entry.id, 'delete'], [entity, id, 'create']);
            continue;
          }
          if (server === undefined) {
            if (row && result.version) tx.put(entity, { ...row, _a: result.version });
            continue;
          }
          // A retried (duplicate) or merged write: the server row is the truth.
          // A retry's stored version is the original write's; the row sent with it may be newer.
          const version = result.duplicate ? (result.server_version ?? result.version) : (result.version ?? result.server_version);
          row = server ? { ...server, _v: version } : undefined;
        } else {
          conflicts.push({ entity, id: entry.id, change: entry, result });
          row = server === undefined ? (entry.prev ?? undefined) : server ? { ...server, _v: result.server_version } : undefined;
        }
        if (row) tx.put(entity, row);
        else tx.delete(entity, entry.id);
        for (const other of later) row = rebase(tx, other, row);
        touched.push([entity, entry.id, row ? 'update' : 'delete']);
      }
      return touched;
    });
    options.changed(rows);
    for (const detail of conflicts) options.conflict(detail);
  };

  return flusher<OutboxEntry, PushResult>({
    ...options,
    store: OUTBOX,
    identity: 'id',
    key: (entry) => entry.mutation_id,
    fits: (batch, entry) => entry.entity === batch[0]?.entity && !batch.some((other) => other.id === entry.id),
    async send(batch, as) {
      const { entity } = batch[0] as OutboxEntry;
      const keyless = batch.some((entry) => entry.tmp) && (await options.integerKey(entity));
      // Only the wire fields: the entity is the request's, `prev` and `tmp` are this browser's.
      return options.send(
        entity,
        batch.map(({ entity, prev, tmp, ...change }) => ({ ...change, id: tmp && keyless ? undefined : change.id })),
        as,
      );
    },
    rejected: ({ mutation_id, id }, reason) => ({ mutation_id, id, status: 'rejected', reason }),
    settle,
    // Whether the server applied them is unknown: their entities are fetched whole again (a reset snapshot).
    async forgotten(lost) {
      await db.write([META], (tx) => {
        for (const { entity } of lost) tx.delete(META, cursorKey(entity));
      });
      options.refetch();
    },
  });
}
