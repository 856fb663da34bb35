/**
 * The one push skeleton, for entity and field pushes alike (`runPush`), and
 * the entity push's per-change apply (`EntityPush`; fields.ts has `FieldPush`).
 *
 * One transaction: lock the client's exactly-once record → answer each
 * already applied change with its stored outcome (core/store.ts
 * `replayedChange`), decide and write each new one under a savepoint → store
 * each new outcome and record the highest mutation id. Record and outcomes
 * are written in the same transaction as the data, so a retried push is
 * applied exactly once and answered as the first time; outcomes are kept for
 * the client's last OUTCOME_WINDOW mutation ids (older ones are deleted here,
 * the rest with the client's record in `cleanup`). A push with no mutation id
 * locks and writes no record. The record's row lock makes concurrent pushes
 * of one client apply one after the other.
 */
import { randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import { quoteIdent } from '../../core/config.js';
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
import { describeWriteError, isUniqueViolation } from './errors.js';
import { type Catalog, CLIENT_SETTING, HLC_SETTING, type PgColumn, type PreparedEntity } from './schema.js';
import { savepoint, transaction } from './transaction.js';

/** How one family of pushes handles its changes; `runPush` does the rest. */
export interface PushPlan<C extends { mutationId: number | null }, R> {
  /** `clientId`: key of the exactly-once record (null: no dedupe); `origin`: the id stamped on logged changes (default clientId). */
  batch: { clientId: string | null; origin?: string | null; fresh?: boolean; retry?: number | null; changes: readonly C[] };
  /** Runs first, after the client record is locked (entity pushes lock their rows in key order). */
  lock?(client: PoolClient): Promise<void>;
  /** The answer to an already applied change: its stored outcome (`stored`: its mutation's, null when none were kept) with the current state. */
  duplicate(client: PoolClient, change: C, stored: readonly StoredOutcome[] | null): Promise<R>;
  /** Decide and write change `index`; may settle later changes too (filling `results`), which are then skipped. */
  apply(client: PoolClient, index: number, results: Array<R | undefined>, isDuplicate: (change: C) => boolean): Promise<R>;
  /** What is stored of a new change's outcome, to answer its retries. */
  stored(result: R): StoredOutcome;
}

/** Apply a push in one transaction (run again whole when PostgreSQL kills it for a deadlock). */
export function runPush<C extends { mutationId: number | null }, R>(catalog: Catalog, plan: PushPlan<C, R>): Promise<R[]> {
  const { clientId, origin = clientId, changes } = plan.batch;
  const { clients, outcomes } = catalog.names;
  // Without a mutation id nothing is deduplicated, and nothing is recorded (an empty push writes no record).
  const recorded = clientId !== null && changes.some((change) => change.mutationId !== null) ? clientId : null;
  const run = async (client: PoolClient): Promise<R[]> => {
    const record = recorded === null ? null : await lockClient(client, clients, recorded);
    if (record === NO_RECORD) {
      const pruned = plan.batch.retry == null ? 0 : await prunedBefore(client, catalog.names.meta);
      if (ClientRecord.unknown(plan.batch, changes, () => pruned)) throw ClientRecord.error();
    }
    const last = record === NO_RECORD ? -1 : record;
    // Logged rows carry the client id as the client knows it (the record's key may be per user).
    await client.query(`SELECT set_config('${CLIENT_SETTING}', $1, true)`, [origin ?? '']);
    await plan.lock?.(client);
    const isDuplicate = (change: C) => last !== null && change.mutationId !== null && change.mutationId <= last;
    const stored = await storedOutcomes(client, outcomes, recorded, changes.filter(isDuplicate));
    const results: Array<R | undefined> = new Array(changes.length);
    let highest = last ?? -1;
    for (const [index, change] of changes.entries()) {
      highest = Math.max(highest, change.mutationId ?? -1);
      if (results[index] !== undefined) continue; // settled together with an earlier change
      results[index] = isDuplicate(change)
        ? await plan.duplicate(client, change, stored.get(change.mutationId as number) ?? null)
        : await plan.apply(client, index, results, isDuplicate);
    }
    if (recorded !== null && highest > (last ?? -1)) {
      const fresh = [...newOutcomes(plan, changes, results, isDuplicate)];
      await client.query(
        `WITH pruned AS (DELETE FROM ${outcomes} WHERE client_id = $1 AND mutation_id <= $4)
         INSERT INTO ${outcomes} AS o (client_id, mutation_id, outcome_json)
           SELECT $1, t.mutation_id, t.outcome FROM unnest($2::bigint[], $3::jsonb[]) AS t(mutation_id, outcome)
           ON CONFLICT (client_id, mutation_id) DO UPDATE SET outcome_json = EXCLUDED.outcome_json, created_at = now()`,
        [
          recorded,
          fresh.map(([mutationId]) => mutationId),
          fresh.map(([, outcomes]) => JSON.stringify(outcomes)),
          highest - OUTCOME_WINDOW,
        ],
      );
      await client.query(`UPDATE ${clients} SET last_mutation_id = $2, updated_at = now() WHERE client_id = $1`, [recorded, highest]);
    }
    return results as R[];
  };
  return transaction(catalog.pool, run, { retry: true });
}

/** The cutoff (epoch ms) of the latest cleanup that pruned client records; 0 when none did. */
async function prunedBefore(client: PoolClient, meta: string): Promise<number> {
  const { rows } = await client.query<{ value: string }>(`SELECT value FROM ${meta} WHERE key = 'clients_pruned_before'`);
  return Number(rows[0]?.value ?? 0);
}

/** What `lockClient` answers for a client it had no record of (a record it just created, -1 as last). */
const NO_RECORD = -2;

/**
 * Lock a client's exactly-once row (created when missing) and return its last
 * applied mutation id (-1 when none, NO_RECORD when the row is new). The
 * upsert's row lock makes concurrent pushes of one client apply one after
 * the other, and a retried push sees the mutation id the first one recorded.
 */
async function lockClient(client: PoolClient, table: string, clientId: string): Promise<number> {
  const { rows } = await client.query<{ last: string; created: boolean }>(
    `INSERT INTO ${table} (client_id, last_mutation_id) VALUES ($1, -1)
       ON CONFLICT (client_id) DO UPDATE SET client_id = EXCLUDED.client_id RETURNING last_mutation_id AS last, xmax = 0 AS created`,
    [clientId],
  );
  return rows[0]?.created ? NO_RECORD : Number(rows[0]?.last ?? -1);
}

/** The stored outcomes of these already applied changes' mutations, by mutation id (absent: none kept). */
async function storedOutcomes(
  client: PoolClient,
  table: string,
  clientId: string | null,
  duplicates: ReadonlyArray<{ mutationId: number | null }>,
): Promise<Map<number, StoredOutcome[]>> {
  if (clientId === null || duplicates.length === 0) return new Map();
  const { rows } = await client.query<{ mutation_id: string; outcome_json: StoredOutcome[] }>(
    `SELECT mutation_id, outcome_json FROM ${table} WHERE client_id = $1 AND mutation_id = ANY($2::bigint[])`,
    [clientId, duplicates.map((change) => change.mutationId)],
  );
  return new Map(rows.map((row) => [Number(row.mutation_id), row.outcome_json]));
}

/** A row's latest log entry. */
export interface LastEntry {
  version: number;
  hlc: number;
  client_id: string | null;
  action: string;
}

/**
 * Lock (or just read) a row, then its latest log entry plus `extra` columns
 * ($1 entity, $2 id, then `params`) in a separate statement after the lock:
 * under READ COMMITTED it sees what whoever held the row before us wrote.
 */
export async function readServerRow<X>(
  client: PoolClient,
  catalog: Catalog,
  entity: PreparedEntity,
  id: string,
  lock: boolean,
  extra = '',
  params: unknown[] = [],
): Promise<X & { row: Row | null; last: LastEntry | null }> {
  const found = await client.query<{ data: Row }>(
    `SELECT ${entity.rowJson('t')} AS data FROM ${entity.table} t WHERE t.${entity.key} = $1${lock ? ' FOR UPDATE' : ''}`,
    [id],
  );
  const { rows } = await client.query<X & { last: LastEntry | null }>(
    `SELECT (SELECT to_jsonb(l) FROM (SELECT version, hlc, client_id, action FROM ${catalog.names.log}
               WHERE entity = $1 AND entity_id = $2 ORDER BY version DESC LIMIT 1) l) AS last ${extra}`,
    [entity.schema.entity, id, ...params],
  );
  return { ...(rows[0] as X & { last: LastEntry | null }), row: found.rows[0]?.data ?? null };
}

/** An entity push: whole-row changes, decided by the core's conflict strategy. */
export class EntityPush implements PushPlan<ValidatedChange, AppliedChange> {
  private readonly entity: PreparedEntity;

  constructor(
    private readonly catalog: Catalog,
    readonly batch: PushBatch,
  ) {
    this.entity = catalog.entity(batch.schema.entity);
  }

  /**
   * Lock every existing row of the batch now, in key order. Locked one by one in batch order, two
   * pushes (or a push and the app's own UPDATE) writing overlapping rows in different orders deadlock,
   * and PostgreSQL only breaks that after deadlock_timeout (1 s) by killing one of them.
   */
  async lock(client: PoolClient): Promise<void> {
    const ids = [...new Set(this.batch.changes.flatMap((change) => (change.id === null ? [] : [change.id])))];
    if (ids.length < 2) return;
    const { table, key } = this.entity;
    // An id the key type refuses (e.g. text for an integer key) fails here: that change is rejected on its own later.
    await savepoint(client, () => client.query(`SELECT 1 FROM ${table} t WHERE t.${key} = ANY($1) ORDER BY t.${key} FOR UPDATE`, [ids]));
  }

  async duplicate(client: PoolClient, change: ValidatedChange, stored: readonly StoredOutcome[] | null): Promise<AppliedChange> {
    // The server row is read now: it is what the client must converge to.
    const outcome = storedFor(change, stored);
    const id = replayedId(change, outcome);
    const read = id === null ? null : await savepoint(client, () => this.rowState(client, id, null, false));
    return replayedChange(change, outcome, read?.ok ? read.value : NO_ROW);
  }

  stored(result: AppliedChange): StoredOutcome {
    return storedOutcome(result);
  }

  async apply(client: PoolClient, index: number): Promise<AppliedChange> {
    const change = this.batch.changes[index] as ValidatedChange;
    const base = { mutationId: change.mutationId, id: change.id };
    for (let attempt = 1; ; attempt++) {
      let server = NO_ROW;
      const done = await savepoint(client, async (): Promise<AppliedChange> => {
        if (change.id !== null) server = await this.rowState(client, change.id, change.baseVersion, true);
        const decision = guarded<WriteDecision>(
          () => this.batch.decide(change, server, index),
          (message) => ({ kind: 'reject', reason: `resolver failed: ${message}` }),
        );
        if (decision.kind === 'reject') return { ...base, status: 'rejected', reason: decision.reason, issues: decision.issues };
        if (decision.kind === 'conflict') {
          return { ...base, status: 'conflict', reason: decision.reason, row: server.row, serverVersion: server.version };
        }
        await client.query(`SELECT set_config('${HLC_SETTING}', $1, true)`, [String(decision.hlc)]);
        const id = await this.write(client, change.id, decision, server.row !== null);
        if (id === null) return { ...base, id, status: 'applied', version: server.version, merged: decision.merged || undefined };
        const after = await client.query<{ version: string | null }>(
          `SELECT max(version) AS version FROM ${this.catalog.names.log} WHERE entity = $1 AND entity_id = $2`,
          [this.entity.schema.entity, id],
        );
        const version = Number(after.rows[0]?.version ?? server.version);
        const row = decision.merged ? (await this.rowState(client, id, null, false)).row : undefined;
        return { ...base, id, status: 'applied', version, merged: decision.merged || undefined, row };
      });
      if (done.ok) return done.value;
      // Two creates of one id raced: the other committed first. Decide again against its row.
      if (attempt === 1 && isUniqueViolation(done.error) && server.row === null && change.id !== null) continue;
      return { ...base, status: 'rejected', reason: describeWriteError(done.error, this.entity.schema.table) };
    }
  }

  private async rowState(client: PoolClient, id: string, baseVersion: number | null, lock: boolean): Promise<ServerRowState> {
    const log = this.catalog.names.log;
    const extra = `, (SELECT data FROM ${log} b WHERE b.entity = $1 AND b.entity_id = $2 AND b.version = $3) AS base`;
    const state = await readServerRow<{ base: Row | null }>(client, this.catalog, this.entity, id, lock, extra, [baseVersion]);
    return { row: state.row, version: Number(state.last?.version ?? 0), hlc: Number(state.last?.hlc ?? 0), base: state.base ?? null };
  }

  /** Runs the SQL for one decided write; returns the row id (database-assigned for keyless creates). */
  private async write(
    client: PoolClient,
    id: string | null,
    decision: Extract<WriteDecision, { kind: 'write' }>,
    exists: boolean,
  ): Promise<string | null> {
    const { schema, table, key, columns } = this.entity;
    if (decision.action === 'delete') {
      if (id !== null && exists) await client.query(`DELETE FROM ${table} WHERE ${key} = $1`, [id]);
      return id;
    }
    const names: string[] = [];
    const values: unknown[] = [];
    for (const [name, value] of Object.entries(decision.data)) {
      const column = columns.get(name);
      if (!column || name === schema.primaryKey) continue;
      names.push(name);
      values.push(coerceValue(column, value));
    }
    if (decision.action === 'update' && exists) {
      if (names.length === 0 || id === null) return id;
      const set = names.map((name, index) => `${quoteIdent(name)} = $${index + 1}`).join(', ');
      await client.query(`UPDATE ${table} SET ${set} WHERE ${key} = $${names.length + 1}`, [...values, id]);
      return id;
    }
    const rowId = id ?? (this.entity.keyIsInteger || this.entity.keyHasDefault ? null : randomUUID());
    if (rowId !== null) {
      names.unshift(schema.primaryKey);
      values.unshift(rowId);
    }
    const into =
      names.length === 0
        ? 'DEFAULT VALUES'
        : `(${names.map(quoteIdent).join(', ')}) VALUES (${names.map((_, i) => `$${i + 1}`).join(', ')})`;
    const { rows } = await client.query<{ id: string }>(
      `INSERT INTO ${table} ${into} RETURNING ${this.entity.idText(table)} AS id`,
      values,
    );
    return rows[0]?.id ?? rowId;
  }
}

/** Array columns: the one value semantics stores them as JSON text; pg serialises a JS array to an array literal. */
export function bindArray(column: PgColumn | undefined, value: unknown): unknown {
  if (column?.category !== 'A' || typeof value !== 'string') return value;
  try {
    const parsed: unknown = JSON.parse(value);
    if (Array.isArray(parsed)) return parsed;
  } catch {}
  return value;
}

/**
 * A decided value (core/values.ts; or a resolver's or schema's output, decided
 * now) as this dialect binds it. A value the column cannot hold throws a
 * ValueError, which rejects the change (errors.ts).
 */
function coerceValue(column: PgColumn, value: unknown): unknown {
  return bindArray(column, columnValue(column.schema, value));
}
