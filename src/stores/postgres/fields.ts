/**
 * Field-level bookkeeping on PostgreSQL, the FieldStore PostgresStore opens.
 *
 * `_rhtmx_field_versions` holds, per (entity, row, field), the change-log
 * version, HLC, writer and JSON value of the last write that changed the
 * field, filled by a plpgsql trigger on the change log itself, so every
 * writer (field pushes, entity pushes, app code, psql, other nodes) keeps
 * field versions right. The pseudo-field `*` marks the row; value NULL is a
 * delete's tombstone.
 *
 * Cursors: versions commit out of order, so field changes are served only up
 * to the version horizon PostgresStore proves (horizon.ts): every writer of a
 * version at or below it has ended, so a read taken after the proof sees all
 * of them. A field entry is the field's latest state; one that moves past the
 * horizon is served with a later page, never lost.
 *
 * Pushes run push.ts's skeleton and record table (under the key the core made
 * with `fieldClientKey`). Each change locks its row before it reads the field
 * state, so the merge decision and the write are atomic, and two writers of
 * one row get log versions in the order they commit.
 */
import { isDeepStrictEqual } from 'node:util';
import type { PoolClient } from 'pg';
import { quoteIdent } from '../../core/config.js';
import { SyncError } from '../../core/errors.js';
import { fieldColumns } from '../../core/field/validation.js';
import { ErrorCode, type FieldChange, ROW_FIELD, type Row } from '../../core/protocol.js';
import type { SchemaIssue } from '../../core/standard-schema.js';
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
  guarded,
  NEVER_WRITTEN,
  type RowFieldStates,
  type RowWriteCheck,
  replayedField,
  type Store,
  type StoredOutcome,
  storedFieldOutcome,
  storedFor,
  type TableSchema,
  type WriteStamp,
} from '../../core/store.js';
import { describeWriteError, isChangeError, isUniqueViolation } from './errors.js';
import { bindArray, type LastEntry, type PushPlan, readServerRow, runPush } from './push.js';
import { type Catalog, FIELD_VERSIONS_TABLE, HLC_SETTING, keyFits, literal, type PreparedEntity } from './schema.js';
import { savepoint, transaction } from './transaction.js';

const TRIGGER_PREFIX = '_rhtmx_field_';

/** A `_rhtmx_field_versions` row (numbers may arrive as text). */
interface Entry {
  entity: string;
  entity_id: string;
  field: string;
  version: string | number;
  hlc: string | number;
  client_id: string | null;
  value: unknown;
}

/** A field-synced table: the fields it syncs and the table as the entity store introspected it. */
interface FieldEntity {
  target: FieldTarget;
  entity: PreparedEntity;
}

const stampOf = (row: { version: string | number; hlc: string | number; client_id: string | null }): WriteStamp => ({
  version: Number(row.version),
  hlc: Number(row.hlc),
  clientId: row.client_id,
});

/** A field's last write; a field without an entry predates field tracking, and the row's latest log entry bounds it. */
const fieldStamp = (entry: Entry | undefined, last: LastEntry | null): WriteStamp =>
  entry ? stampOf(entry) : last ? stampOf(last) : NEVER_WRITTEN;

function toFieldChange(row: Entry): FieldChange {
  const isRow = row.field === ROW_FIELD;
  const { entity, entity_id, field, client_id } = row;
  const value = isRow ? null : (row.value ?? null);
  return {
    entity,
    entity_id,
    field,
    value,
    version: Number(row.version),
    hlc: Number(row.hlc),
    client_id,
    action: isRow ? 'delete' : 'update',
  };
}

/** PostgreSQL implementation of the FieldStore capability. */
export class PostgresFieldStore implements FieldStore {
  private readonly entities = new Map<string, FieldEntity>();

  constructor(
    /** The entity store's catalog: its tables, already introspected, and our objects' names. */
    private readonly catalog: Catalog,
    /** The entity store: its proven version horizon is the field cursor too. */
    private readonly base: Pick<Store, 'currentVersion'>,
  ) {}

  async init(targets: FieldTarget[]): Promise<void> {
    const { log, fieldCapture } = this.catalog.names;
    await transaction(this.catalog.pool, async (client) => {
      // Several nodes may start at once: DDL and trigger replacement must not interleave.
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:field_init'))`);
      await client.query(this.ddl());
      const wanted = new Map(targets.map((target) => [`${TRIGGER_PREFIX}${target.schema.entity}`, target]));
      const existing = await client.query<{ name: string; args: Buffer }>(
        `SELECT tgname AS name, tgargs AS args FROM pg_trigger WHERE tgrelid = $1::regclass AND starts_with(tgname, $2)`,
        [log, TRIGGER_PREFIX],
      );
      for (const trigger of existing.rows) {
        const target = wanted.get(trigger.name);
        // Replacing a trigger locks the log table: leave an identical one alone.
        if (target && Buffer.compare(trigger.args, Buffer.from(`${triggerArgument(target)}\0`, 'utf8')) === 0) {
          wanted.delete(trigger.name);
          continue;
        }
        await client.query(`DROP TRIGGER IF EXISTS ${quoteIdent(trigger.name)} ON ${log}`);
      }
      for (const [name, target] of wanted) await client.query(createTriggerSql(name, log, fieldCapture, target));
    });
    for (const target of targets) this.entities.set(target.schema.entity, { target, entity: this.catalog.entity(target.schema.entity) });
  }

  /**
   * A field-synced table's columns changed (PostgresStore follows the
   * schema): make its log trigger carry the new field list, in the caller's
   * transaction (left alone when it already does: replacing it locks the
   * log). Tables this store does not sync are left alone.
   */
  async reinstallTrigger(client: PoolClient, schema: TableSchema): Promise<void> {
    if (!this.entities.has(schema.entity)) return;
    const { log, fieldCapture } = this.catalog.names;
    const target: FieldTarget = { schema, fields: fieldColumns(schema.columns) };
    const name = `${TRIGGER_PREFIX}${schema.entity}`;
    const existing = await client.query<{ args: Buffer }>(
      `SELECT tgargs AS args FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2`,
      [log, name],
    );
    const current = existing.rows[0];
    if (current && Buffer.compare(current.args, Buffer.from(`${triggerArgument(target)}\0`, 'utf8')) === 0) return;
    await client.query(`DROP TRIGGER IF EXISTS ${quoteIdent(name)} ON ${log}`);
    await client.query(createTriggerSql(name, log, fieldCapture, target));
  }

  /** Serve a field-synced table with its new columns (the catalog adopted them first). */
  adopt(schema: TableSchema): void {
    if (!this.entities.has(schema.entity)) return;
    const target: FieldTarget = { schema, fields: fieldColumns(schema.columns) };
    this.entities.set(schema.entity, { target, entity: this.catalog.entity(schema.entity) });
  }

  /**
   * The log trigger. Order matters: (1) a delete leaves only the row's
   * tombstone; (2) a row first seen on an update (it predates field sync) is
   * seeded from its previous log entry, so unchanged fields keep their old
   * version; (3) fields whose value differs from the recorded one (all of
   * them on create) take the new version; (4) the row marker follows creates.
   */
  private ddl(): string {
    const { fieldVersions: fv, log, fieldCapture } = this.catalog.names;
    const index = (suffix: string) => quoteIdent(`${FIELD_VERSIONS_TABLE}_${suffix}`);
    const set = 'version = EXCLUDED.version, hlc = EXCLUDED.hlc, client_id = EXCLUDED.client_id, value = EXCLUDED.value';
    return `
      CREATE TABLE IF NOT EXISTS ${fv} (
        entity text NOT NULL, entity_id text NOT NULL, field text NOT NULL,
        version bigint NOT NULL, hlc bigint NOT NULL, client_id text, value jsonb,
        PRIMARY KEY (entity, entity_id, field)
      );
      CREATE INDEX IF NOT EXISTS ${index('version')} ON ${fv} (version);
      CREATE INDEX IF NOT EXISTS ${index('entity')} ON ${fv} (entity, version);
      CREATE OR REPLACE FUNCTION ${fieldCapture}() RETURNS trigger LANGUAGE plpgsql AS $rhtmx$
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

  private entity(name: string): FieldEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised for field sync`);
    return entity;
  }

  /** SQL of the field entries (`entries`, by field) and latest log entry (`last`) of the row whose id is `id` ($1 is the entity). */
  private historySql(id: string): string {
    const { fieldVersions, log } = this.catalog.names;
    return `(SELECT jsonb_object_agg(f.field, to_jsonb(f)) FROM ${fieldVersions} f WHERE f.entity = $1 AND f.entity_id = ${id}) AS entries,
            (SELECT to_jsonb(l) FROM (SELECT version, hlc, client_id, action FROM ${log}
               WHERE entity = $1 AND entity_id = ${id} ORDER BY version DESC LIMIT 1) l) AS last`;
  }

  async currentVersion(): Promise<number> {
    return this.base.currentVersion();
  }

  async push(batch: FieldPushBatch): Promise<FieldOutcome[]> {
    return runPush(this.catalog, new FieldPush(this.catalog, this.entity(batch.entity).entity, batch));
  }

  async readChanges(since: number, limit: number, entityName?: string): Promise<FieldChangePage> {
    // Serve only up to the proven horizon; a read after the proof sees every write at or below it.
    const horizon = await this.base.currentVersion();
    if (horizon <= since) return { changes: [], version: since, hasMore: false };
    const select = `SELECT * FROM ${this.catalog.names.fieldVersions} WHERE (field <> '*' OR value IS NULL)`;
    const order = 'ORDER BY version, entity, entity_id, field';
    const byEntity = (param: string) => (entityName === undefined ? '' : `AND entity = ${param}`);
    const more = entityName === undefined ? [] : [entityName];
    const { rows } = await this.catalog.pool.query<Entry>(
      `${select} AND version > $1 AND version <= $2 ${byEntity('$4')} ${order} LIMIT $3`,
      [since, horizon, limit + 1, ...more],
    );
    if (rows.length <= limit) return { changes: rows.map(toFieldChange), version: horizon, hasMore: false };
    // A cursor is a version: never end a page in the middle of one write's fields.
    const cut = Number((rows[limit] as Entry).version);
    let page = rows.slice(0, limit).filter((row) => Number(row.version) < cut);
    if (page.length === 0) {
      // One write touched more fields than a page holds: serve that whole write.
      page = (await this.catalog.pool.query<Entry>(`${select} AND version = $1 ${byEntity('$2')} ${order}`, [cut, ...more])).rows;
    }
    return { changes: page.map(toFieldChange), version: Number((page[page.length - 1] as Entry).version), hasMore: true };
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<FieldSnapshotPage> {
    const { target, entity } = this.entity(entityName);
    // The cursor is proved before the rows are read: rows may be newer than it (pulled again later), never older.
    const version = atVersion ?? (await this.base.currentVersion());
    const params: unknown[] = [entityName, limit + 1];
    if (after !== undefined) {
      if (!keyFits(entity, after)) throw new SyncError(ErrorCode.BadCursor, 'invalid snapshot token', 400);
      params.push(after);
    }
    const { rows } = await this.catalog.pool.query<{
      id: string;
      data: Row;
      entries: Record<string, Entry> | null;
      last: LastEntry | null;
    }>(
      `SELECT ${entity.idText('t')} AS id, ${entity.rowJson('t')} AS data, ${this.historySql(entity.idText('t'))} FROM ${entity.table} t
        ${after === undefined ? '' : `WHERE t.${entity.key} > $3`} ORDER BY t.${entity.key} LIMIT $2`,
      params,
    );
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    const changes = rows.flatMap((row) =>
      target.fields.map((column): FieldChange => {
        const stamp = fieldStamp(row.entries?.[column.name], row.last);
        const { version, hlc, clientId: client_id } = stamp;
        return {
          entity: entityName,
          entity_id: row.id,
          field: column.name,
          value: row.data[column.name] ?? null,
          version,
          hlc,
          client_id,
          action: 'update',
        };
      }),
    );
    return { changes, version, after: hasMore ? rows[rows.length - 1]?.id : undefined };
  }

  async latest(entityName: string, entityId: string): Promise<RowFieldStates | null> {
    const { target, entity } = this.entity(entityName);
    const { rows } = await this.catalog.pool.query<{ data: Row | null; entries: Record<string, Entry> | null; last: LastEntry | null }>(
      `SELECT (SELECT ${entity.rowJson('t')} FROM ${entity.table} t WHERE t.${entity.key} = $3) AS data, ${this.historySql('$2')}`,
      [entityName, entityId, keyFits(entity, entityId) ? entityId : null],
    );
    const { data, entries, last } = rows[0] ?? { data: null, entries: null, last: null };
    if (!data) {
      const marker = entries?.[ROW_FIELD];
      const tombstone = marker && marker.value === null ? stampOf(marker) : last?.action === 'delete' ? stampOf(last) : null;
      return tombstone ? { deleted: true, version: tombstone.version, hlc: tombstone.hlc, fields: {} } : null;
    }
    const result: RowFieldStates = { deleted: false, version: 0, hlc: 0, fields: {} };
    for (const column of target.fields) {
      const stamp = fieldStamp(entries?.[column.name], last);
      result.fields[column.name] = { value: data[column.name] ?? null, version: stamp.version, hlc: stamp.hlc, client_id: stamp.clientId };
      result.version = Math.max(result.version, stamp.version);
      result.hlc = Math.max(result.hlc, stamp.hlc);
    }
    return result;
  }

  async rows(entityName: string, ids: readonly string[]): Promise<Map<string, Row>> {
    const { entity } = this.entity(entityName);
    const keys = [...new Set(ids)].filter((id) => keyFits(entity, id));
    if (keys.length === 0) return new Map();
    const select = `SELECT ${entity.idText('t')} AS id, ${entity.rowJson('t')} AS data FROM ${entity.table} t`;
    const query = (where: string) => this.catalog.pool.query<{ id: string; data: Row }>(`${select} WHERE ${where}`, [keys]);
    const found = await query(`t.${entity.key} = ANY ($1)`).catch((error: unknown) => {
      // An id the key type refuses (e.g. not a uuid) names no row: compare as logged instead of failing the read.
      if (!isChangeError(error)) throw error;
      return query(`${entity.idText('t')} = ANY ($1::text[])`);
    });
    return new Map(found.rows.map((row) => [row.id, row.data]));
  }

  async close(): Promise<void> {
    // The pool is the app's.
  }
}

/** The log trigger of one field-synced entity. */
function createTriggerSql(name: string, log: string, fieldCapture: string, target: FieldTarget): string {
  return `CREATE TRIGGER ${quoteIdent(name)} AFTER INSERT ON ${log} FOR EACH ROW WHEN (NEW.entity = ${literal(target.schema.entity)})
    EXECUTE FUNCTION ${fieldCapture}(${literal(triggerArgument(target))})`;
}

/** The trigger's one argument: the field names (plain identifiers, so a comma list is unambiguous). */
function triggerArgument(target: FieldTarget): string {
  return target.fields.map((column) => column.name).join(',');
}

/** One change's write in progress: the changes writing its row together, and whether that write creates the row. */
interface RowGroup {
  members: Array<{ index: number; change: FieldWrite; hlc: number }>;
  creates: boolean;
}

/** A field push: one column per change, decided by the core's merge rules. */
class FieldPush implements PushPlan<FieldWrite, FieldOutcome> {
  constructor(
    private readonly catalog: Catalog,
    private readonly entity: PreparedEntity,
    readonly batch: FieldPushBatch,
  ) {}

  async duplicate(client: PoolClient, change: FieldWrite, stored: readonly StoredOutcome[] | null): Promise<FieldOutcome> {
    const outcome = storedFor(change, stored);
    // The field's state is read now: it is what the client converges to.
    const read = await savepoint(client, () => this.readState(client, change, false));
    if (!read.ok) return replayedField(change, outcome, { version: 0, hlc: 0, value: null });
    const state = read.value;
    const current = change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.field;
    return replayedField(change, outcome, { version: current.version, hlc: current.hlc, value: state.value });
  }

  stored(outcome: FieldOutcome): StoredOutcome {
    return storedFieldOutcome(outcome);
  }

  async apply(client: PoolClient, index: number, results: Array<FieldOutcome | undefined>, isDuplicate: (change: FieldWrite) => boolean) {
    const change = this.batch.changes[index] as FieldWrite;
    const skip = (next: number) => results[next] !== undefined || isDuplicate(this.batch.changes[next] as FieldWrite);
    for (let attempt = 1; ; attempt++) {
      // A savepoint per change: a constraint failure rejects this change (and the others writing its row) only.
      const settled = new Map<number, FieldOutcome>();
      const group: RowGroup = { members: [], creates: false };
      const done = await savepoint(client, () => this.write(client, index, settled, group, skip));
      if (!done.ok) {
        // Two creators of one row raced and the other committed first: decide again against its row.
        if (attempt === 1 && group.creates && isUniqueViolation(done.error)) continue;
        const reason = describeWriteError(done.error, this.entity.schema.table);
        for (const member of group.members.length > 0 ? group.members : [{ index, change }]) {
          settled.set(member.index, rejected(member.change, reason));
        }
      }
      for (const [at, outcome] of settled) if (at !== index) results[at] = outcome;
      return settled.get(index) as FieldOutcome;
    }
  }

  /** Decide change `index` and write it; the outcomes it settles go into `settled`. */
  private async write(
    client: PoolClient,
    index: number,
    settled: Map<number, FieldOutcome>,
    group: RowGroup,
    skip: (index: number) => boolean,
  ): Promise<void> {
    const { table, key, schema } = this.entity;
    const { changes, prepareWrite } = this.batch;
    const change = changes[index] as FieldWrite;
    const state = await this.readState(client, change, true);
    const decision = this.decide(change, state);
    if (decision.kind !== 'write') return void settled.set(index, settledOutcome(change, decision, state));
    const remove = change.field === ROW_FIELD;
    group.members.push({ index, change, hlc: decision.hlc });
    group.creates = !remove && !state.exists;
    // A new row (or one re-created after its delete): the later changes to it in this push go into the
    // same INSERT, so a row whose columns are NOT NULL can be created field by field in one push.
    for (let next = index + 1; group.creates && next < changes.length; next++) {
      const other = changes[next] as FieldWrite;
      if (other.entityId !== change.entityId || skip(next)) continue;
      if (other.field === ROW_FIELD) break; // a later delete of the row must see it inserted first
      const otherDecision = this.decide(other, state);
      if (otherDecision.kind === 'write') group.members.push({ index: next, change: other, hlc: otherDecision.hlc });
      else settled.set(next, settledOutcome(other, otherDecision, state));
    }
    const values: Record<string, FieldValue> = {};
    const json: Row = {};
    for (const { change: member } of remove ? [] : group.members) {
      values[member.field] = member.value;
      json[member.field] = member.json;
    }
    const write = {
      action: remove ? 'delete' : group.creates ? 'create' : 'update',
      entityId: change.entityId,
      current: state.current,
      values,
      json,
      index,
    } as const;
    const checked = guarded<RowWriteCheck>(
      () => (prepareWrite ? prepareWrite(write) : { ok: true, values }),
      (message) => ({ ok: false, reason: `write check failed: ${message}` }),
    );
    if (!checked.ok) {
      for (const member of group.members) settled.set(member.index, rejected(member.change, checked.reason, checked.issues));
      return;
    }
    await client.query(`SELECT set_config('${HLC_SETTING}', $1, true)`, [String(Math.max(...group.members.map((member) => member.hlc)))]);
    const fields = Object.keys(values);
    const bound = fields.map((field) => bindArray(this.entity.columns.get(field), checked.values[field] ?? values[field] ?? null));
    if (remove) await client.query(`DELETE FROM ${table} WHERE ${key} = $1`, [change.entityId]);
    else if (!group.creates)
      await client.query(`UPDATE ${table} SET ${quoteIdent(change.field)} = $1 WHERE ${key} = $2`, [...bound, change.entityId]);
    else {
      const columns = [schema.primaryKey, ...fields];
      const placeholders = columns.map((_, i) => `$${i + 1}`).join(', ');
      await client.query(`INSERT INTO ${table} (${columns.map(quoteIdent).join(', ')}) VALUES (${placeholders})`, [
        change.entityId,
        ...bound,
      ]);
      // The row's log entry carries the newest stamp; each field keeps its own.
      const fv = this.catalog.names.fieldVersions;
      for (const member of group.members) {
        await client.query(
          `UPDATE ${fv} SET hlc = $4 WHERE entity = $1 AND entity_id = $2 AND field = $3
             AND version = (SELECT version FROM ${fv} WHERE entity = $1 AND entity_id = $2 AND field = '*')`,
          [schema.entity, change.entityId, member.change.field, member.hlc],
        );
      }
    }
    for (const member of group.members) settled.set(member.index, await this.applied(client, member.change, member.hlc));
  }

  private async readState(client: PoolClient, change: FieldWrite, lock: boolean): Promise<FieldServerState> {
    const fv = this.catalog.names.fieldVersions;
    const extra = `, (SELECT to_jsonb(f) FROM ${fv} f WHERE f.entity = $1 AND f.entity_id = $2 AND f.field = $3) AS entry,
                     (SELECT to_jsonb(f) FROM ${fv} f WHERE f.entity = $1 AND f.entity_id = $2 AND f.field = '*') AS marker`;
    type Extra = { entry: Entry | null; marker: Entry | null };
    const found = await readServerRow<Extra>(client, this.catalog, this.entity, change.entityId, lock, extra, [change.field]);
    const { row: current, last, marker } = found;
    const row = last ? stampOf(last) : NEVER_WRITTEN;
    let tombstone: WriteStamp | null = null;
    if (current === null) {
      if (marker && marker.value === null) tombstone = stampOf(marker);
      else if (last?.action === 'delete') tombstone = row;
    }
    if (change.field === ROW_FIELD) return { exists: current !== null, current, value: null, same: false, field: row, row, tombstone };
    if (current === null) return { exists: false, current, value: null, same: false, field: tombstone ?? NEVER_WRITTEN, row, tombstone };
    const value = current[change.field] ?? null;
    const same = change.invalid === null && isDeepStrictEqual(value, change.json ?? null);
    return { exists: true, current, value, same, field: fieldStamp(found.entry ?? undefined, last), row, tombstone: null };
  }

  private decide(change: FieldWrite, state: FieldServerState): FieldDecision {
    return guarded<FieldDecision>(
      () => this.batch.decide(change, state),
      (message) => ({ kind: 'reject', reason: `merge failed: ${message}` }),
    );
  }

  private async applied(client: PoolClient, change: FieldWrite, hlc: number): Promise<FieldOutcome> {
    const { rows } = await client.query<Entry>(
      `SELECT version, hlc, client_id, value FROM ${this.catalog.names.fieldVersions} WHERE entity = $1 AND entity_id = $2 AND field = $3`,
      [this.entity.schema.entity, change.entityId, change.field],
    );
    const entry = rows[0];
    const value = change.field === ROW_FIELD ? null : (entry?.value ?? null);
    return { change, status: 'applied', version: entry ? Number(entry.version) : undefined, hlc: entry ? Number(entry.hlc) : hlc, value };
  }
}

const rejected = (change: FieldWrite, reason: string, issues?: SchemaIssue[]): FieldOutcome => ({
  change,
  status: 'rejected',
  reason,
  issues,
});

/** The outcome of a decision that writes nothing. */
function settledOutcome(change: FieldWrite, decision: Exclude<FieldDecision, { kind: 'write' }>, state: FieldServerState): FieldOutcome {
  if (decision.kind === 'reject') return rejected(change, decision.reason);
  const current =
    change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.exists ? state.field : (state.tombstone ?? state.field);
  const status = decision.kind === 'keep' ? 'applied' : 'conflict';
  const outcome: FieldOutcome = { change, status, version: current.version, hlc: current.hlc, value: state.value };
  if (decision.kind === 'conflict') outcome.reason = decision.reason;
  return outcome;
}
