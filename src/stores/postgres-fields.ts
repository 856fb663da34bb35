/**
 * Field-level bookkeeping on PostgreSQL, next to PostgresStore.
 *
 * Same plan as on SQLite (stores/sqlite-fields.ts): `_rhtmx_field_versions`
 * holds, per (entity, row, field), the change-log version, HLC, writer and
 * JSON value of the last write that changed the field, filled by a plpgsql
 * trigger on the change log itself, so every writer (field pushes, entity
 * pushes, app code, psql, other nodes) keeps field versions right. The
 * pseudo-field `*` marks the row; value NULL is a delete's tombstone.
 *
 * Cursors: versions come from a sequence and commit out of order, so field
 * changes are served only up to the version horizon PostgresStore proves
 * (`currentVersion()`): every writer of a version at or below it has ended,
 * so a read taken after the proof sees all of them. A field entry is the
 * field's latest state; one that moves past the horizon is served with a
 * later page, never lost.
 *
 * Concurrency: each change locks its row (`SELECT … FOR UPDATE`) before it
 * reads the field state, so the merge decision and the write are atomic, and
 * two writers of one row get log versions in the order they commit.
 */
import { isDeepStrictEqual } from 'node:util';
import type { Pool, PoolClient } from 'pg';
import { quoteIdent } from '../core/config.js';
import { SyncError } from '../core/errors.js';
import { type ColumnSchema, ErrorCode, type FieldChange, ROW_FIELD, type Row } from '../core/protocol.js';
import type { SchemaIssue } from '../core/standard-schema.js';
import type { Store } from '../core/store.js';
import {
  type FieldChangePage,
  type FieldDecision,
  type FieldOutcome,
  type FieldPushBatch,
  type FieldServerState,
  type FieldSnapshotPage,
  type FieldStore,
  type FieldTarget,
  type FieldValue,
  type FieldWrite,
  NEVER_WRITTEN,
  type RowFieldStates,
  type RowWrite,
  type RowWriteCheck,
  type WriteStamp,
} from '../core/store.js';
import {
  CLIENT_SETTING,
  describeWriteError,
  HLC_SETTING,
  isChangeError,
  isRetryable,
  LOG_TABLE,
  lockClient,
  rowJsonBuilder,
} from './postgres.js';

export const FIELD_VERSIONS_TABLE = '_rhtmx_field_versions';
/** Last applied field mutation per client; separate from entity pushes so the two id sequences never collide. */
export const FIELD_CLIENTS_TABLE = '_rhtmx_field_clients';
const CAPTURE_FUNCTION = '_rhtmx_field_capture';
const TRIGGER_PREFIX = '_rhtmx_field_';

interface EntryRow {
  version: string;
  hlc: string;
  client_id: string | null;
  value: unknown;
}

interface ChangeRow extends EntryRow {
  entity: string;
  entity_id: string;
  field: string;
}

interface PreparedFieldEntity {
  target: FieldTarget;
  name: string;
  /** Schema-qualified, quoted table name. */
  table: string;
  /** Quoted primary key column. */
  key: string;
  keyIsInteger: boolean;
  columns: Map<string, ColumnSchema>;
  /** Array columns: the wire calls them json; pg wants a JS array, not JSON text. */
  arrays: Set<string>;
  /** SQL of the row's JSON from `<alias>` (bytea as upper-case hex, as the change log shows it). */
  rowJson: (alias: string) => string;
  /** SQL of the row's id as logged. */
  idText: (alias: string) => string;
}

const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
const stampOf = (row: { version: string | number; hlc: string | number; client_id: string | null }): WriteStamp => ({
  version: Number(row.version),
  hlc: Number(row.hlc),
  clientId: row.client_id,
});

function toFieldChange(row: ChangeRow): FieldChange {
  const isRow = row.field === ROW_FIELD;
  return {
    entity: row.entity,
    entity_id: row.entity_id,
    field: row.field,
    value: isRow ? null : (row.value ?? null),
    version: Number(row.version),
    hlc: Number(row.hlc),
    client_id: row.client_id,
    action: isRow ? 'delete' : 'update',
  };
}

export class PostgresFieldStore implements FieldStore {
  private readonly entities = new Map<string, PreparedFieldEntity>();
  private names!: { fv: string; clients: string; log: string; capture: string };

  constructor(
    /** The app's pool (PostgresStore's); borrowed, never ended. */
    readonly pool: Pool,
    /** The entity store: its proven version horizon is the field cursor too. */
    private readonly base: Pick<Store, 'currentVersion'>,
  ) {}

  async init(targets: FieldTarget[]): Promise<void> {
    await this.transaction(async (client) => {
      // Several nodes may start at once: DDL and trigger replacement must not interleave.
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:field_init'))`);
      const { rows } = await client.query<{ schema: string }>('SELECT current_schema() AS schema');
      const schemaName = rows[0]?.schema;
      if (!schemaName) throw new Error('rhtmx-sync: no current schema (check search_path)');
      const q = (name: string) => `${quoteIdent(schemaName)}.${quoteIdent(name)}`;
      this.names = { fv: q(FIELD_VERSIONS_TABLE), clients: q(FIELD_CLIENTS_TABLE), log: q(LOG_TABLE), capture: q(CAPTURE_FUNCTION) };
      await client.query(this.ddl());
      const wanted = new Map(targets.map((target) => [`${TRIGGER_PREFIX}${target.schema.entity}`, target]));
      const existing = await client.query<{ name: string; args: Buffer }>(
        `SELECT tgname AS name, tgargs AS args FROM pg_trigger
          WHERE tgrelid = $1::regclass AND starts_with(tgname, $2)`,
        [this.names.log, TRIGGER_PREFIX],
      );
      for (const trigger of existing.rows) {
        const target = wanted.get(trigger.name);
        // Replacing a trigger locks the log table: leave an identical one alone.
        if (target && Buffer.compare(trigger.args, Buffer.from(`${this.triggerArgument(target)}\0`, 'utf8')) === 0) {
          wanted.delete(trigger.name);
          continue;
        }
        await client.query(`DROP TRIGGER IF EXISTS ${quoteIdent(trigger.name)} ON ${this.names.log}`);
      }
      for (const [name, target] of wanted) {
        await client.query(
          `CREATE TRIGGER ${quoteIdent(name)} AFTER INSERT ON ${this.names.log} FOR EACH ROW
             WHEN (NEW.entity = ${literal(target.schema.entity)})
             EXECUTE FUNCTION ${this.names.capture}(${literal(this.triggerArgument(target))})`,
        );
      }
      for (const target of targets) this.entities.set(target.schema.entity, await this.prepare(client, target));
    });
  }

  /** The trigger's one argument: the field names (plain identifiers, so a comma list is unambiguous). */
  private triggerArgument(target: FieldTarget): string {
    return target.fields.map((column) => column.name).join(',');
  }

  /**
   * The log trigger. Order matters: (1) a delete leaves only the row's
   * tombstone; (2) a row first seen on an update (it predates field sync) is
   * seeded from its previous log entry, so unchanged fields keep their old
   * version; (3) fields whose value differs from the recorded one (all of
   * them on create) take the new version; (4) the row marker follows creates.
   */
  private ddl(): string {
    const { fv, clients, log, capture } = this.names;
    const index = (suffix: string) => quoteIdent(`${FIELD_VERSIONS_TABLE}_${suffix}`);
    const set = 'version = EXCLUDED.version, hlc = EXCLUDED.hlc, client_id = EXCLUDED.client_id, value = EXCLUDED.value';
    return `
      CREATE TABLE IF NOT EXISTS ${fv} (
        entity text NOT NULL,
        entity_id text NOT NULL,
        field text NOT NULL,
        version bigint NOT NULL,
        hlc bigint NOT NULL,
        client_id text,
        value jsonb,
        PRIMARY KEY (entity, entity_id, field)
      );
      CREATE INDEX IF NOT EXISTS ${index('version')} ON ${fv} (version);
      CREATE INDEX IF NOT EXISTS ${index('entity')} ON ${fv} (entity, version);
      CREATE TABLE IF NOT EXISTS ${clients} (
        client_id text PRIMARY KEY,
        last_mutation_id bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE OR REPLACE FUNCTION ${capture}() RETURNS trigger LANGUAGE plpgsql AS $rhtmx$
      DECLARE
        v_fields text[] := string_to_array(NULLIF(TG_ARGV[0], ''), ',');
      BEGIN
        IF NEW.action = 'delete' THEN
          INSERT INTO ${fv} AS f (entity, entity_id, field, version, hlc, client_id, value)
          VALUES (NEW.entity, NEW.entity_id, '*', NEW.version, NEW.hlc, NEW.client_id, NULL)
          ON CONFLICT (entity, entity_id, field) DO UPDATE SET ${set};
          DELETE FROM ${fv} f WHERE f.entity = NEW.entity AND f.entity_id = NEW.entity_id AND f.field <> '*';
          RETURN NULL;
        END IF;
        IF NEW.action = 'update' AND NOT EXISTS (
          SELECT 1 FROM ${fv} f WHERE f.entity = NEW.entity AND f.entity_id = NEW.entity_id AND f.field = '*'
        ) THEN
          INSERT INTO ${fv} (entity, entity_id, field, version, hlc, client_id, value)
          SELECT NEW.entity, NEW.entity_id, c.name, COALESCE(p.version, 0), COALESCE(p.hlc, 0), p.client_id, p.data -> c.name
            FROM unnest(COALESCE(v_fields, '{}')) AS c(name)
            LEFT JOIN LATERAL (
              SELECT l.version, l.hlc, l.client_id, l.data FROM ${log} l
               WHERE l.entity = NEW.entity AND l.entity_id = NEW.entity_id AND l.version < NEW.version
               ORDER BY l.version DESC LIMIT 1
            ) p ON true
          ON CONFLICT DO NOTHING;
        END IF;
        INSERT INTO ${fv} AS f (entity, entity_id, field, version, hlc, client_id, value)
        SELECT NEW.entity, NEW.entity_id, c.name, NEW.version, NEW.hlc, NEW.client_id, NEW.data -> c.name
          FROM unnest(COALESCE(v_fields, '{}')) AS c(name)
        ON CONFLICT (entity, entity_id, field) DO UPDATE SET ${set}
          WHERE NEW.action = 'create' OR f.value IS DISTINCT FROM EXCLUDED.value;
        INSERT INTO ${fv} AS f (entity, entity_id, field, version, hlc, client_id, value)
        VALUES (NEW.entity, NEW.entity_id, '*', NEW.version, NEW.hlc, NEW.client_id, 'true'::jsonb)
        ON CONFLICT (entity, entity_id, field) DO UPDATE SET ${set}
          WHERE NEW.action = 'create' OR f.value IS NULL;
        RETURN NULL;
      END
      $rhtmx$;
    `;
  }

  private async prepare(client: PoolClient, target: FieldTarget): Promise<PreparedFieldEntity> {
    const { schema } = target;
    const found = await client.query<{ schema: string; name: string; oid: string }>(
      `SELECT n.nspname AS schema, c.relname AS name, c.oid::text AS oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = COALESCE(to_regclass($1), CASE WHEN strpos($2, '.') > 0 THEN to_regclass($2) END)`,
      [quoteIdent(schema.table), schema.table],
    );
    const relation = found.rows[0];
    if (!relation) throw new Error(`rhtmx-sync: table ${schema.table} does not exist`);
    const arrays = await client.query<{ name: string }>(
      `SELECT a.attname AS name FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND t.typcategory = 'A'`,
      [relation.oid],
    );
    const rowJson = rowJsonBuilder(schema);
    return {
      target,
      name: schema.entity,
      table: `${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`,
      key: quoteIdent(schema.primaryKey),
      keyIsInteger: schema.columns.find((column) => column.primaryKey)?.type === 'integer',
      columns: new Map(target.fields.map((column) => [column.name, column])),
      arrays: new Set(arrays.rows.map((row) => row.name)),
      rowJson,
      idText: (alias) => `(to_jsonb(${alias}.${quoteIdent(schema.primaryKey)}) #>> '{}')`,
    };
  }

  /** An id that can name a row of this table (integer keys must look like integers), or null. */
  private keyParam(entity: PreparedFieldEntity, id: string): string | null {
    return entity.keyIsInteger && !/^-?\d{1,19}$/.test(id) ? null : id;
  }

  private entity(name: string): PreparedFieldEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised for field sync`);
    return entity;
  }

  /** Run `work` in one transaction on a pooled client. */
  private async transaction<T>(work: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await client.query('ROLLBACK').catch((rollbackError: Error) => {
        broken = rollbackError;
      });
      throw error;
    } finally {
      client.release(broken);
    }
  }

  async currentVersion(): Promise<number> {
    return this.base.currentVersion();
  }

  // ---------------------------------------------------------------- push

  async push(batch: FieldPushBatch): Promise<FieldOutcome[]> {
    const entity = this.entity(batch.entity);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.transaction((client) => this.pushIn(client, entity, batch));
      } catch (error) {
        // Two pushes locking the same rows in opposite orders: PostgreSQL kills one; run it again.
        if (isRetryable(error) && attempt < 5) continue;
        throw error;
      }
    }
  }

  private async pushIn(client: PoolClient, entity: PreparedFieldEntity, batch: FieldPushBatch): Promise<FieldOutcome[]> {
    const lastApplied = batch.clientId === null ? null : await lockClient(client, this.names.clients, batch.clientId);
    const origin = batch.origin !== undefined ? batch.origin : batch.clientId;
    await client.query(`SELECT set_config('${CLIENT_SETTING}', $1, true)`, [origin ?? '']);
    const isDuplicate = (change: FieldWrite) => lastApplied !== null && change.mutationId !== null && change.mutationId <= lastApplied;
    const outcomes: Array<FieldOutcome | undefined> = new Array(batch.changes.length);
    for (const [index, change] of batch.changes.entries()) {
      if (outcomes[index]) continue; // settled together with an earlier change that inserted its row
      if (isDuplicate(change)) outcomes[index] = await this.duplicate(client, entity, change);
      else await this.applyOne(client, entity, batch, index, outcomes, isDuplicate);
    }
    const highest = Math.max(-1, ...batch.changes.map((change) => change.mutationId ?? -1));
    if (batch.clientId !== null && highest > (lastApplied ?? -1)) {
      await client.query(`UPDATE ${this.names.clients} SET last_mutation_id = $2, updated_at = now() WHERE client_id = $1`, [
        batch.clientId,
        highest,
      ]);
    }
    return outcomes as FieldOutcome[];
  }

  private async readState(client: PoolClient, entity: PreparedFieldEntity, change: FieldWrite, lock: boolean): Promise<FieldServerState> {
    const found = await client.query<{ data: Row }>(
      `SELECT ${entity.rowJson('t')} AS data FROM ${entity.table} t WHERE t.${entity.key} = $1${lock ? ' FOR UPDATE' : ''}`,
      [change.entityId],
    );
    const current = found.rows[0]?.data ?? null;
    // A separate statement after the lock: under READ COMMITTED it sees what whoever held the row before us wrote.
    const { rows } = await client.query<{
      last_version: string | null;
      last_hlc: string | null;
      last_client: string | null;
      last_action: string | null;
      entry: EntryRow | null;
      marker: EntryRow | null;
    }>(
      `SELECT last.version AS last_version, last.hlc AS last_hlc, last.client_id AS last_client, last.action AS last_action,
              (SELECT to_jsonb(f) FROM ${this.names.fv} f WHERE f.entity = $1 AND f.entity_id = $2 AND f.field = $3) AS entry,
              (SELECT to_jsonb(f) FROM ${this.names.fv} f WHERE f.entity = $1 AND f.entity_id = $2 AND f.field = '*') AS marker
         FROM (SELECT 1) one LEFT JOIN LATERAL (
           SELECT version, hlc, client_id, action FROM ${this.names.log} WHERE entity = $1 AND entity_id = $2 ORDER BY version DESC LIMIT 1
         ) last ON true`,
      [entity.name, change.entityId, change.field],
    );
    const state = rows[0];
    const row =
      state?.last_version != null
        ? stampOf({ version: state.last_version, hlc: state.last_hlc ?? 0, client_id: state.last_client })
        : NEVER_WRITTEN;
    let tombstone: WriteStamp | null = null;
    if (current === null) {
      if (state?.marker && state.marker.value === null) tombstone = stampOf(state.marker);
      else if (state?.last_action === 'delete') tombstone = row;
    }
    if (change.field === ROW_FIELD) return { exists: current !== null, current, value: null, same: false, field: row, row, tombstone };
    if (current === null) return { exists: false, current, value: null, same: false, field: tombstone ?? NEVER_WRITTEN, row, tombstone };
    const value = current[change.field] ?? null;
    return {
      exists: true,
      current,
      value,
      same: change.invalid === null && isDeepStrictEqual(value, change.json ?? null),
      // No entry yet: the row predates field tracking; its latest log entry bounds the field's last write.
      field: state?.entry ? stampOf(state.entry) : row,
      row,
      tombstone: null,
    };
  }

  private decide(batch: FieldPushBatch, change: FieldWrite, state: FieldServerState): FieldDecision {
    try {
      return batch.decide(change, state);
    } catch (error) {
      if (error instanceof SyncError) throw error; // forbidden: the whole push rolls back
      return { kind: 'reject', reason: `merge failed: ${(error as Error).message}` };
    }
  }

  /** The app's write rule and schema for one row write; a SyncError (forbidden) aborts the whole push. */
  private check(batch: FieldPushBatch, write: RowWrite): RowWriteCheck {
    if (!batch.prepareWrite) return { ok: true, values: write.values };
    try {
      return batch.prepareWrite(write);
    } catch (error) {
      if (error instanceof SyncError) throw error;
      return { ok: false, reason: `write check failed: ${(error as Error).message}` };
    }
  }

  /** The outcome of a decision that writes nothing. */
  private settled(change: FieldWrite, decision: Exclude<FieldDecision, { kind: 'write' }>, state: FieldServerState): FieldOutcome {
    if (decision.kind === 'reject') return { change, status: 'rejected', reason: decision.reason };
    const current =
      change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.exists ? state.field : (state.tombstone ?? state.field);
    const outcome: FieldOutcome = {
      change,
      status: decision.kind === 'keep' ? 'applied' : 'conflict',
      version: current.version,
      hlc: current.hlc,
      value: state.value,
    };
    if (decision.kind === 'conflict') outcome.reason = decision.reason;
    return outcome;
  }

  private async duplicate(client: PoolClient, entity: PreparedFieldEntity, change: FieldWrite): Promise<FieldOutcome> {
    // The original outcome is not stored; the field's current state is, and it is what the client converges to.
    await client.query('SAVEPOINT rhtmx_field');
    try {
      const state = await this.readState(client, entity, change, false);
      await client.query('RELEASE SAVEPOINT rhtmx_field');
      const current = change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.field;
      return { change, status: 'applied', duplicate: true, version: current.version, hlc: current.hlc, value: state.value };
    } catch (error) {
      if (!isChangeError(error)) throw error;
      await client.query('ROLLBACK TO SAVEPOINT rhtmx_field');
      return { change, status: 'applied', duplicate: true, version: 0, hlc: 0, value: null };
    }
  }

  /** A value as the column takes it: arrays as JS arrays (pg serialises them), the rest as coerced. */
  private bind(entity: PreparedFieldEntity, field: string, value: FieldValue): unknown {
    if (entity.arrays.has(field) && typeof value === 'string') {
      try {
        const parsed: unknown = JSON.parse(value);
        if (Array.isArray(parsed)) return parsed;
      } catch {}
    }
    return value;
  }

  private async applied(client: PoolClient, entity: PreparedFieldEntity, change: FieldWrite, hlc: number): Promise<FieldOutcome> {
    const { rows } = await client.query<EntryRow>(
      `SELECT version, hlc, client_id, value FROM ${this.names.fv} WHERE entity = $1 AND entity_id = $2 AND field = $3`,
      [entity.name, change.entityId, change.field],
    );
    const entry = rows[0];
    return {
      change,
      status: 'applied',
      version: entry ? Number(entry.version) : undefined,
      hlc: entry ? Number(entry.hlc) : hlc,
      value: change.field === ROW_FIELD ? null : (entry?.value ?? null),
    };
  }

  private async applyOne(
    client: PoolClient,
    entity: PreparedFieldEntity,
    batch: FieldPushBatch,
    index: number,
    outcomes: Array<FieldOutcome | undefined>,
    isDuplicate: (change: FieldWrite) => boolean,
  ): Promise<void> {
    const change = batch.changes[index] as FieldWrite;
    // A savepoint per change: a constraint failure rejects this change (and its row's group) only.
    for (let attempt = 1; ; attempt++) {
      await client.query('SAVEPOINT rhtmx_field');
      const group: Array<{ index: number; change: FieldWrite; hlc: number }> = [];
      let inserting = false;
      try {
        const state = await this.readState(client, entity, change, true);
        const decision = this.decide(batch, change, state);
        if (decision.kind !== 'write') {
          outcomes[index] = this.settled(change, decision, state);
          await client.query('RELEASE SAVEPOINT rhtmx_field');
          return;
        }
        if (change.field === ROW_FIELD || state.exists) {
          const remove = change.field === ROW_FIELD;
          const checked = this.check(batch, {
            action: remove ? 'delete' : 'update',
            entityId: change.entityId,
            current: state.current,
            values: remove ? {} : { [change.field]: change.value },
            json: remove ? {} : { [change.field]: change.json },
            index,
          });
          if (!checked.ok) {
            outcomes[index] = { change, status: 'rejected', reason: checked.reason, issues: checked.issues };
            await client.query('RELEASE SAVEPOINT rhtmx_field');
            return;
          }
          await client.query(`SELECT set_config('${HLC_SETTING}', $1, true)`, [String(decision.hlc)]);
          if (remove) {
            await client.query(`DELETE FROM ${entity.table} WHERE ${entity.key} = $1`, [change.entityId]);
          } else {
            const value = this.bind(entity, change.field, checked.values[change.field] ?? change.value);
            await client.query(`UPDATE ${entity.table} SET ${quoteIdent(change.field)} = $1 WHERE ${entity.key} = $2`, [
              value,
              change.entityId,
            ]);
          }
          outcomes[index] = await this.applied(client, entity, change, decision.hlc);
          await client.query('RELEASE SAVEPOINT rhtmx_field');
          return;
        }
        // A new row (or one re-created after its delete): the later changes to it in this push go into the
        // same INSERT, so a row whose columns are NOT NULL can be created field by field in one push.
        inserting = true;
        group.push({ index, change, hlc: decision.hlc });
        for (let next = index + 1; next < batch.changes.length; next++) {
          const other = batch.changes[next] as FieldWrite;
          if (other.entityId !== change.entityId || outcomes[next] || isDuplicate(other)) continue;
          if (other.field === ROW_FIELD) break; // a later delete of the row must see it inserted first
          const otherDecision = this.decide(batch, other, state);
          if (otherDecision.kind === 'write') group.push({ index: next, change: other, hlc: otherDecision.hlc });
          else outcomes[next] = this.settled(other, otherDecision, state);
        }
        const values: Record<string, FieldValue> = {};
        const json: Row = {};
        for (const member of group) {
          values[member.change.field] = member.change.value;
          json[member.change.field] = member.change.json;
        }
        const checked = this.check(batch, { action: 'create', entityId: change.entityId, current: null, values, json, index });
        if (!checked.ok) {
          this.rejectGroup(group, outcomes, checked.reason, checked.issues);
          await client.query('RELEASE SAVEPOINT rhtmx_field');
          return;
        }
        const fields = Object.keys(values);
        const hlc = Math.max(...group.map((member) => member.hlc));
        await client.query(`SELECT set_config('${HLC_SETTING}', $1, true)`, [String(hlc)]);
        const columns = [entity.target.schema.primaryKey, ...fields];
        await client.query(
          `INSERT INTO ${entity.table} (${columns.map(quoteIdent).join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')})`,
          [change.entityId, ...fields.map((field) => this.bind(entity, field, checked.values[field] ?? values[field] ?? null))],
        );
        // The row's log entry carries the newest stamp; each field keeps its own.
        for (const member of group) {
          await client.query(
            `UPDATE ${this.names.fv} SET hlc = $4 WHERE entity = $1 AND entity_id = $2 AND field = $3
               AND version = (SELECT version FROM ${this.names.fv} WHERE entity = $1 AND entity_id = $2 AND field = '*')`,
            [entity.name, change.entityId, member.change.field, member.hlc],
          );
        }
        for (const member of group) outcomes[member.index] = await this.applied(client, entity, member.change, member.hlc);
        await client.query('RELEASE SAVEPOINT rhtmx_field');
        return;
      } catch (error) {
        if (error instanceof SyncError || !isChangeError(error)) throw error;
        await client.query('ROLLBACK TO SAVEPOINT rhtmx_field');
        for (const member of group) outcomes[member.index] = undefined;
        // Two creators of one row raced and the other committed first: decide again against its row.
        if (attempt === 1 && inserting && (error as { code?: string }).code === '23505') continue;
        const reason = describeWriteError(error, entity.target.schema.table);
        if (group.length > 0) this.rejectGroup(group, outcomes, reason);
        else outcomes[index] = { change, status: 'rejected', reason };
        return;
      }
    }
  }

  private rejectGroup(
    group: Array<{ index: number; change: FieldWrite }>,
    outcomes: Array<FieldOutcome | undefined>,
    reason: string,
    issues?: SchemaIssue[],
  ): void {
    for (const member of group) outcomes[member.index] = { change: member.change, status: 'rejected', reason, issues };
  }

  // ---------------------------------------------------------------- reads

  async readChanges(since: number, limit: number, entityName?: string): Promise<FieldChangePage> {
    // Serve only up to the proven horizon; a read after the proof sees every write at or below it.
    const horizon = await this.base.currentVersion();
    if (horizon <= since) return { changes: [], version: since, hasMore: false };
    const fv = this.names.fv;
    const columns = 'entity, entity_id, field, version, hlc, client_id, value';
    const visible = `(field <> '*' OR value IS NULL)`;
    const order = 'ORDER BY version, entity, entity_id, field';
    const byEntity = entityName === undefined ? '' : 'AND entity = $4';
    const params: unknown[] = [since, horizon, limit + 1];
    if (entityName !== undefined) params.push(entityName);
    const { rows } = await this.pool.query<ChangeRow>(
      `SELECT ${columns} FROM ${fv} WHERE version > $1 AND version <= $2 ${byEntity} AND ${visible} ${order} LIMIT $3`,
      params,
    );
    if (rows.length <= limit) return { changes: rows.map(toFieldChange), version: horizon, hasMore: false };
    // A cursor is a version: never end a page in the middle of one write's fields.
    const cut = Number((rows[limit] as ChangeRow).version);
    let page = rows.slice(0, limit).filter((row) => Number(row.version) < cut);
    if (page.length === 0) {
      // One write touched more fields than a page holds: serve that whole write.
      const whole = await this.pool.query<ChangeRow>(
        `SELECT ${columns} FROM ${fv} WHERE version = $1 ${entityName === undefined ? '' : 'AND entity = $2'} AND ${visible} ${order}`,
        entityName === undefined ? [cut] : [cut, entityName],
      );
      page = whole.rows;
    }
    return { changes: page.map(toFieldChange), version: Number((page[page.length - 1] as ChangeRow).version), hasMore: true };
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<FieldSnapshotPage> {
    const entity = this.entity(entityName);
    // The cursor is proved before the rows are read: rows may be newer than it (pulled again later), never older.
    const version = atVersion ?? (await this.base.currentVersion());
    const params: unknown[] = [limit + 1];
    if (after !== undefined) {
      const key = this.keyParam(entity, after);
      if (key === null) throw new SyncError(ErrorCode.BadCursor, 'invalid snapshot token', 400);
      params.push(key);
    }
    const { rows } = await this.pool.query<{ id: string; data: Row }>(
      `SELECT ${entity.idText('t')} AS id, ${entity.rowJson('t')} AS data FROM ${entity.table} t
        ${after === undefined ? '' : `WHERE t.${entity.key} > $2`} ORDER BY t.${entity.key} LIMIT $1`,
      params,
    );
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    const ids = rows.map((row) => row.id);
    const recorded = await this.pool.query<EntryRow & { entity_id: string; field: string }>(
      `SELECT entity_id, field, version, hlc, client_id FROM ${this.names.fv}
        WHERE entity = $1 AND entity_id = ANY ($2::text[]) AND field <> '*'`,
      [entityName, ids],
    );
    const entries = new Map<string, Map<string, WriteStamp>>();
    for (const entry of recorded.rows) {
      let fields = entries.get(entry.entity_id);
      if (!fields) {
        fields = new Map();
        entries.set(entry.entity_id, fields);
      }
      fields.set(entry.field, stampOf(entry));
    }
    const fallbacks = await this.rowStamps(
      entityName,
      ids.filter((id) => entity.target.fields.some((column) => !entries.get(id)?.has(column.name))),
    );
    const changes: FieldChange[] = [];
    for (const row of rows) {
      for (const column of entity.target.fields) {
        const stamp = entries.get(row.id)?.get(column.name) ?? fallbacks.get(row.id) ?? NEVER_WRITTEN;
        changes.push({
          entity: entityName,
          entity_id: row.id,
          field: column.name,
          value: row.data[column.name] ?? null,
          version: stamp.version,
          hlc: stamp.hlc,
          client_id: stamp.clientId,
          action: 'update',
        });
      }
    }
    return { changes, version, after: hasMore ? ids[ids.length - 1] : undefined };
  }

  /** The latest log entry of each row (fields without an entry predate field tracking). */
  private async rowStamps(entity: string, ids: string[]): Promise<Map<string, WriteStamp>> {
    if (ids.length === 0) return new Map();
    const { rows } = await this.pool.query<{ entity_id: string; version: string; hlc: string; client_id: string | null }>(
      `SELECT DISTINCT ON (entity_id) entity_id, version, hlc, client_id FROM ${this.names.log}
        WHERE entity = $1 AND entity_id = ANY ($2::text[]) ORDER BY entity_id, version DESC`,
      [entity, ids],
    );
    return new Map(rows.map((row) => [row.entity_id, stampOf(row)]));
  }

  async latest(entityName: string, entityId: string): Promise<RowFieldStates | null> {
    const entity = this.entity(entityName);
    const key = this.keyParam(entity, entityId);
    const { rows } = await this.pool.query<{ data: Row | null; entries: Array<EntryRow & { field: string }> | null; last: LogLast | null }>(
      `SELECT (SELECT ${entity.rowJson('t')} FROM ${entity.table} t WHERE t.${entity.key} = $3) AS data,
              (SELECT jsonb_agg(to_jsonb(f)) FROM ${this.names.fv} f WHERE f.entity = $1 AND f.entity_id = $2) AS entries,
              (SELECT to_jsonb(l) FROM (SELECT version, hlc, client_id, action FROM ${this.names.log}
                 WHERE entity = $1 AND entity_id = $2 ORDER BY version DESC LIMIT 1) l) AS last`,
      [entityName, entityId, key],
    );
    const found = rows[0];
    const entries = new Map((found?.entries ?? []).map((entry) => [entry.field, entry]));
    const last = found?.last ? stampOf(found.last) : null;
    if (!found?.data) {
      const marker = entries.get(ROW_FIELD);
      const tombstone = marker && marker.value === null ? stampOf(marker) : found?.last?.action === 'delete' ? last : null;
      return tombstone ? { deleted: true, version: tombstone.version, hlc: tombstone.hlc, fields: {} } : null;
    }
    const result: RowFieldStates = { deleted: false, version: 0, hlc: 0, fields: {} };
    for (const column of entity.target.fields) {
      const entry = entries.get(column.name);
      const stamp = entry ? stampOf(entry) : (last ?? NEVER_WRITTEN);
      result.fields[column.name] = {
        value: found.data[column.name] ?? null,
        version: stamp.version,
        hlc: stamp.hlc,
        client_id: stamp.clientId,
      };
      result.version = Math.max(result.version, stamp.version);
      result.hlc = Math.max(result.hlc, stamp.hlc);
    }
    return result;
  }

  async close(): Promise<void> {
    // The pool is the app's.
  }
}

interface LogLast {
  version: string | number;
  hlc: string | number;
  client_id: string | null;
  action: string;
}
