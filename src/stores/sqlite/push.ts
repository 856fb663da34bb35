/**
 * The one push skeleton, for entity and field pushes alike (`runPush`), and
 * the entity push's per-change apply (`EntityPush`; fields.ts has `FieldPush`).
 *
 * One IMMEDIATE transaction: read the client's exactly-once record → answer
 * each already applied change with its stored outcome (core/store.ts
 * `replayedChange`), decide and write each new one (each write one
 * statement, or under a savepoint once the database refused one: `runPush`) → store
 * each new outcome and record the highest mutation id. Record and outcomes
 * are written in the same transaction as the data, so a retried push is
 * applied exactly once and answered as the first time; outcomes are kept
 * for the client's last OUTCOME_WINDOW mutation ids (older ones are deleted
 * here, the rest with the client's record in `cleanup`). A push with no
 * mutation id writes no record. The write lock taken at BEGIN makes concurrent pushes (from
 * this process or another) apply one after the other, each seeing the id the
 * previous one recorded. better-sqlite3 is synchronous, so the core's
 * decisions run inside the transaction without an await.
 */
import { randomUUID } from 'node:crypto';
import { SyncError } from '../../core/errors.js';
import type { Row } from '../../core/protocol.js';
import {
  type AppliedChange,
  ClientRecord,
  guarded,
  NO_ROW,
  newOutcomes,
  OUTCOME_WINDOW,
  type PushBatch,
  replayedChange,
  replayedId,
  type ServerRowState,
  type StoredOutcome,
  storedFor,
  storedOutcome,
  type ValidatedChange,
  type WriteDecision,
} from '../../core/store.js';
import { columnValue } from '../../core/values.js';
import { describeWriteError } from './errors.js';
import type { Catalog, SyncedTable } from './schema.js';

/** A write's value, or why the database refused it. */
export type WriteResult<T> = { ok: true; value: T } | { ok: false; reason: string };

/** What `runPush` lends a plan's `apply`. */
export interface PushScope<C, R> {
  /** Outcomes so far; `apply` may settle later changes here (they are then skipped). */
  readonly results: Array<R | undefined>;
  /** The change is a retry of a mutation this client already applied. */
  isDuplicate(change: C): boolean;
  /**
   * Run one write, its log rows stamped with the push's origin and `hlc`
   * (through the context table the triggers read): a refused write rejects
   * this change only (`runPush` says how).
   */
  write<T>(hlc: number, statement: () => T): WriteResult<T>;
}

/** How one family of pushes handles its changes; `runPush` does the rest. */
export interface PushPlan<C extends { mutationId: number | null }, R> {
  /** `clientId`: key of the exactly-once record (null: no dedupe); `origin`: the id stamped on logged changes (default clientId). */
  readonly batch: { clientId: string | null; origin?: string | null; fresh?: boolean; retry?: number | null; changes: readonly C[] };
  /** The answer to an already applied change: its stored outcome (`stored`: its mutation's, null when none were kept) with the current state. */
  duplicate(change: C, stored: readonly StoredOutcome[] | null): R;
  /** Decide and write change `index`. */
  apply(index: number, scope: PushScope<C, R>): R;
  /** What is stored of a new change's outcome, to answer its retries. */
  stored(result: R): StoredOutcome;
}

/** A write the database refused while a push ran without savepoints: the push is run again with one per change. */
class Refused extends Error {}

/**
 * Apply a push in one transaction and record the client's highest mutation id in it.
 *
 * The transaction first runs without savepoints: each write is one statement,
 * which SQLite applies whole or not at all, and a savepoint would make every
 * write journal its pages (about twice the cost of an insert). Should the
 * database refuse any write, that transaction is rolled back and the push run
 * again in a new one, each write under a savepoint of its own, so a refused
 * write rejects its change only, with nothing of it left. (Decisions are pure
 * but for the HLC, which only moves on when the push is run again.)
 */
export function runPush<C extends { mutationId: number | null }, R>(catalog: Catalog, plan: PushPlan<C, R>): R[] {
  try {
    return pushTransaction(catalog, plan, false);
  } catch (error) {
    if (!(error instanceof Refused)) throw error;
    return pushTransaction(catalog, plan, true);
  }
}

function pushTransaction<C extends { mutationId: number | null }, R>(catalog: Catalog, plan: PushPlan<C, R>, careful: boolean): R[] {
  const { clientId, changes } = plan.batch;
  // Logged rows carry the client id as the client knows it (the record's key may be per user or per family).
  const origin = plan.batch.origin === undefined ? clientId : plan.batch.origin;
  const { s, db } = catalog;
  const run = db.transaction((): R[] => {
    // Without a mutation id nothing is deduplicated, and nothing is recorded (an empty push writes no record).
    const recorded = clientId !== null && changes.some((change) => change.mutationId !== null) ? clientId : null;
    const record = recorded === null ? null : (s.lastMutation.get(recorded) as number | undefined);
    if (
      recorded !== null &&
      record === undefined &&
      ClientRecord.unknown(plan.batch, changes, () => (s.getMeta.get('clients_pruned_before') as number | undefined) ?? 0)
    )
      throw ClientRecord.error();
    const last = recorded === null ? null : (record ?? -1);
    const scope: PushScope<C, R> = {
      results: new Array(changes.length),
      isDuplicate: (change) => last !== null && change.mutationId !== null && change.mutationId <= last,
      write<T>(hlc: number, statement: () => T): WriteResult<T> {
        const stamped = () => {
          s.setContext.run(origin, hlc);
          return statement();
        };
        try {
          return { ok: true, value: careful ? catalog.savepoint(stamped) : stamped() };
        } catch (error) {
          if (!careful) throw new Refused();
          return { ok: false, reason: describeWriteError(error) };
        }
      },
    };
    const storedOf = (mutationId: number): StoredOutcome[] | null => {
      const json = s.outcome.get(recorded, mutationId) as string | undefined;
      return json === undefined ? null : (JSON.parse(json) as StoredOutcome[]);
    };
    let highest = last ?? -1;
    s.openContext.run();
    try {
      for (const [index, change] of changes.entries()) {
        highest = Math.max(highest, change.mutationId ?? -1);
        if (scope.results[index] !== undefined) continue; // settled together with an earlier change
        scope.results[index] = scope.isDuplicate(change)
          ? plan.duplicate(change, storedOf(change.mutationId as number))
          : plan.apply(index, scope);
      }
      if (recorded !== null && highest > (last ?? -1)) {
        const now = Date.now();
        const kept = [...newOutcomes(plan, changes, scope.results, scope.isDuplicate)].filter(([id]) => id > highest - OUTCOME_WINDOW);
        if (kept.length > 0) s.saveOutcomes.run(recorded, now, JSON.stringify(kept));
        s.pruneOutcomes.run(recorded, highest - OUTCOME_WINDOW);
        s.saveMutation.run(recorded, highest, now);
      }
    } finally {
      s.clearContext.run();
    }
    return scope.results as R[];
  });
  return run.immediate();
}

/** An entity push: whole-row changes, decided by the core's conflict strategy. */
export class EntityPush implements PushPlan<ValidatedChange, AppliedChange> {
  private readonly entity: SyncedTable;

  constructor(
    private readonly catalog: Catalog,
    readonly batch: PushBatch,
  ) {
    this.entity = catalog.entity(batch.schema.entity);
  }

  duplicate(change: ValidatedChange, stored: readonly StoredOutcome[] | null): AppliedChange {
    // The server row is read now: it is what the client must converge to.
    const outcome = storedFor(change, stored);
    const id = replayedId(change, outcome);
    return replayedChange(change, outcome, id === null ? NO_ROW : this.rowState(id, null));
  }

  stored(result: AppliedChange): StoredOutcome {
    return storedOutcome(result);
  }

  apply(index: number, scope: PushScope<ValidatedChange, AppliedChange>): AppliedChange {
    const change = this.batch.changes[index] as ValidatedChange;
    const base = { mutationId: change.mutationId, id: change.id };
    const server = change.id === null ? NO_ROW : this.rowState(change.id, change.baseVersion);
    const decision = guarded<WriteDecision>(
      () => this.batch.decide(change, server, index),
      (message) => ({ kind: 'reject', reason: `resolver failed: ${message}` }),
    );
    if (decision.kind === 'reject') return { ...base, status: 'rejected', reason: decision.reason, issues: decision.issues };
    if (decision.kind === 'conflict') {
      return { ...base, status: 'conflict', reason: decision.reason, row: server.row, serverVersion: server.version };
    }
    const written = scope.write(decision.hlc, () => this.write(change.id, decision, server.row !== null));
    if (!written.ok) return { ...base, status: 'rejected', reason: written.reason };
    const id = written.value;
    const version = (id === null ? undefined : this.catalog.loggedVersion(this.entity.schema.entity, id)) ?? server.version;
    const row = decision.merged && id !== null ? this.entity.row(id) : undefined;
    return { ...base, id, status: 'applied', version, merged: decision.merged || undefined, row };
  }

  private rowState(id: string, baseVersion: number | null): ServerRowState {
    const last = this.catalog.lastEntry(this.entity.schema.entity, id);
    const base = baseVersion === null ? null : (this.catalog.s.baseRow.get(this.entity.schema.entity, id, baseVersion) as string | null);
    return {
      row: this.entity.row(id),
      version: last?.version ?? 0,
      hlc: last?.hlc ?? 0,
      base: base ? (JSON.parse(base) as Row) : null,
    };
  }

  /** Runs the SQL for one decided write; returns the row id (database-assigned for keyless creates). */
  private write(id: string | null, decision: Extract<WriteDecision, { kind: 'write' }>, exists: boolean): string | null {
    const { schema, columns } = this.entity;
    if (decision.action === 'delete') {
      if (id !== null && exists) this.entity.delete(id);
      return id;
    }
    // Only real columns reach the SQL, by name; the key is never rewritten. Values bind as core/values.ts decides
    // (a resolver's or schema's output too): a value its column cannot hold throws, rejecting the change.
    const values: Row = {};
    for (const [name, value] of Object.entries(decision.data)) {
      const column = columns.get(name);
      if (name !== schema.primaryKey && column) values[name] = columnValue(column, value);
    }
    if (decision.action === 'update' && exists) return this.entity.write('update', id, values);
    return this.entity.write('insert', id ?? (this.entity.keyIsInteger ? null : randomUUID()), values);
  }
}
