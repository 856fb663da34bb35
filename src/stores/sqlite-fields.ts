/**
 * Field-level bookkeeping on SQLite (better-sqlite3), next to SqliteStore.
 *
 * `_rhtmx_field_versions` holds, per (entity, row, field), the change-log
 * version, HLC and writer of the last write that changed the field, plus its
 * value as the row's JSON shows it. It is filled by one trigger per entity
 * on the change log itself: whenever the entity triggers log a row write (a
 * field push, an entity push, app code, raw SQL, another process), the log
 * trigger compares the logged row with the recorded field values and bumps
 * only the fields that changed. So every writer keeps field versions right,
 * field versions share the log's version sequence, and a field push is
 * simply an UPDATE of one real column.
 *
 * The pseudo-field `*` marks the row: value NULL is a tombstone carrying the
 * delete's version and HLC, so deletes are ordered against later updates.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { quoteIdent } from '../core/config.js';
import { SyncError } from '../core/errors.js';
import type { ColumnSchema, Row } from '../core/protocol.js';
import { type FieldChange, ROW_FIELD } from '../core/protocol.js';
import type { SchemaIssue } from '../core/standard-schema.js';
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
import { CONTEXT_TABLE, LOG_TABLE } from './sqlite.js';

type Database = BetterSqlite3.Database;
type Statement = BetterSqlite3.Statement;

export const FIELD_VERSIONS_TABLE = '_rhtmx_field_versions';
/** Last applied field mutation per client; separate from entity pushes so the two id sequences never collide. */
export const FIELD_CLIENTS_TABLE = '_rhtmx_field_clients';
const TRIGGER_PREFIX = '_rhtmx_field_';
/** Most distinct INSERT column sets cached per entity (column subsets of one table, bounded anyway). */
const MAX_CACHED_INSERTS = 64;

interface EntryRow {
  version: number;
  hlc: number;
  client_id: string | null;
  value: string | null;
}

interface ChangeRow extends EntryRow {
  entity: string;
  entity_id: string;
  field: string;
}

interface LogStampRow {
  version: number;
  hlc: number;
  client_id: string | null;
  action: string;
}

interface PreparedFieldEntity {
  target: FieldTarget;
  name: string;
  columns: Map<string, ColumnSchema>;
  keyIsInteger: boolean;
  selectRow: Statement;
  deleteRow: Statement;
  snapshotFirst: Statement;
  snapshotAfter: Statement;
  updates: Map<string, Statement>;
  inserts: Map<string, Statement>;
}

const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
const stampOf = (row: { version: number; hlc: number; client_id: string | null }): WriteStamp => ({
  version: row.version,
  hlc: row.hlc,
  clientId: row.client_id,
});

/** SQLite has no boolean type: bind 1/0. */
const bindValue = (value: FieldValue): string | number | Buffer | null => (typeof value === 'boolean' ? (value ? 1 : 0) : value);

function sameStored(stored: unknown, bound: unknown): boolean {
  if (Buffer.isBuffer(stored) || Buffer.isBuffer(bound)) {
    return Buffer.isBuffer(stored) && Buffer.isBuffer(bound) && stored.equals(bound);
  }
  return stored === bound;
}

/** A raw column value as the change log's row JSON shows it (see SqliteStore's json encoding). */
export function columnJsonValue(column: ColumnSchema, raw: unknown): unknown {
  if (raw === null || raw === undefined) return null;
  switch (column.type) {
    case 'boolean':
      return typeof raw === 'number' ? raw !== 0 : Boolean(Number(raw));
    case 'blob':
      return (Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw))).toString('hex').toUpperCase();
    case 'json':
      if (typeof raw !== 'string') return raw;
      try {
        return JSON.parse(raw);
      } catch {
        return raw;
      }
    default:
      return Buffer.isBuffer(raw) ? raw.toString('utf8') : raw;
  }
}

const parseValue = (value: string | null): unknown => (value === null ? null : JSON.parse(value));

function toFieldChange(row: ChangeRow): FieldChange {
  return {
    entity: row.entity,
    entity_id: row.entity_id,
    field: row.field,
    value: row.field === ROW_FIELD ? null : parseValue(row.value),
    version: row.version,
    hlc: row.hlc,
    client_id: row.client_id,
    action: row.field === ROW_FIELD ? 'delete' : 'update',
  };
}

/** Constraint messages name the kind and the column, which helps; anything else is not shown to clients. */
function describeWriteError(error: unknown): string {
  const code = (error as { code?: string }).code ?? '';
  const message = (error as Error).message ?? '';
  // "NOT NULL constraint failed: todos.title": the kind and the column, never SQL text.
  if (code.startsWith('SQLITE_CONSTRAINT'))
    return (/((?:[A-Z]+ )*constraint failed.*)$/.exec(message)?.[1] ?? 'constraint failed').slice(0, 200);
  if (code === 'SQLITE_MISMATCH') return 'datatype mismatch';
  return 'write failed';
}

export class SqliteFieldStore implements FieldStore {
  private readonly entities = new Map<string, PreparedFieldEntity>();
  private s!: {
    maxVersion: Statement;
    lastLog: Statement;
    entry: Statement;
    rowEntries: Statement;
    pageEntries: Statement;
    changesAll: Statement;
    changesEntity: Statement;
    changesAtAll: Statement;
    changesAtEntity: Statement;
    setHlc: Statement;
    lastMutation: Statement;
    saveMutation: Statement;
    setContext: Statement;
    clearContext: Statement;
  };

  constructor(readonly db: Database) {}

  async init(targets: FieldTarget[]): Promise<void> {
    const db = this.db;
    db.exec(`
      CREATE TABLE IF NOT EXISTS ${FIELD_VERSIONS_TABLE} (
        entity TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        field TEXT NOT NULL,
        version INTEGER NOT NULL,
        hlc INTEGER NOT NULL,
        client_id TEXT,
        value TEXT,
        PRIMARY KEY (entity, entity_id, field)
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS ${FIELD_VERSIONS_TABLE}_version ON ${FIELD_VERSIONS_TABLE} (version);
      CREATE INDEX IF NOT EXISTS ${FIELD_VERSIONS_TABLE}_entity ON ${FIELD_VERSIONS_TABLE} (entity, version);
      CREATE TABLE IF NOT EXISTS ${FIELD_CLIENTS_TABLE} (
        client_id TEXT PRIMARY KEY,
        last_mutation_id INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
    `);
    db.transaction(() => {
      // Triggers of entities no longer configured would keep writing bookkeeping nobody reads.
      const stale = db
        .prepare(`SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND substr(name, 1, ?) = ?`)
        .pluck()
        .all(LOG_TABLE, TRIGGER_PREFIX.length, TRIGGER_PREFIX) as string[];
      for (const name of stale) db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(name)}`);
      for (const target of targets) db.exec(this.triggerSql(target));
    })();
    this.prepareShared();
    for (const target of targets) this.prepareEntity(target);
  }

  /**
   * The log trigger for one entity. Order matters: (1) a row first seen on an
   * update (it predates field sync) is seeded from its previous log entry, so
   * unchanged fields keep their old version; (2) fields whose value differs
   * from the recorded one (all of them on create) take the new version;
   * (3) the row marker follows creates and deletes; (4) a deleted row keeps
   * only its tombstone.
   */
  private triggerSql(target: FieldTarget): string {
    const entity = literal(target.schema.entity);
    const fv = FIELD_VERSIONS_TABLE;
    const same = `entity = NEW.entity AND entity_id = NEW.entity_id`;
    const fields = target.fields.map((column) => `(${literal(column.name)}, ${literal(`$."${column.name}"`)})`).join(', ');
    const fieldStatements =
      target.fields.length === 0
        ? ''
        : `
        INSERT OR IGNORE INTO ${fv} (entity, entity_id, field, version, hlc, client_id, value)
          SELECT NEW.entity, NEW.entity_id, c.column1, COALESCE(p.version, 0), COALESCE(p.hlc, 0), p.client_id, p.data -> c.column2
          FROM (VALUES ${fields}) AS c
          LEFT JOIN (SELECT version, hlc, client_id, data FROM ${LOG_TABLE}
                     WHERE ${same} AND version < NEW.version ORDER BY version DESC LIMIT 1) AS p ON 1
          WHERE NEW.action = 'update' AND NOT EXISTS (SELECT 1 FROM ${fv} WHERE ${same} AND field = '*');
        INSERT INTO ${fv} (entity, entity_id, field, version, hlc, client_id, value)
          SELECT NEW.entity, NEW.entity_id, c.column1, NEW.version, NEW.hlc, NEW.client_id, NEW.data -> c.column2
          FROM (VALUES ${fields}) AS c
          WHERE NEW.action <> 'delete'
          ON CONFLICT (entity, entity_id, field) DO UPDATE SET
            version = excluded.version, hlc = excluded.hlc, client_id = excluded.client_id, value = excluded.value
          WHERE NEW.action = 'create' OR ${fv}.value IS NOT excluded.value;`;
    return `
      CREATE TRIGGER ${quoteIdent(`${TRIGGER_PREFIX}${target.schema.entity}`)} AFTER INSERT ON ${LOG_TABLE}
      WHEN NEW.entity = ${entity} BEGIN
        ${fieldStatements}
        INSERT INTO ${fv} (entity, entity_id, field, version, hlc, client_id, value)
          VALUES (NEW.entity, NEW.entity_id, '*', NEW.version, NEW.hlc, NEW.client_id,
                  CASE WHEN NEW.action = 'delete' THEN NULL ELSE 'true' END)
          ON CONFLICT (entity, entity_id, field) DO UPDATE SET
            version = excluded.version, hlc = excluded.hlc, client_id = excluded.client_id, value = excluded.value
          WHERE NEW.action <> 'update' OR ${fv}.value IS NULL;
        DELETE FROM ${fv} WHERE NEW.action = 'delete' AND ${same} AND field <> '*';
      END;`;
  }

  private prepareShared(): void {
    const db = this.db;
    const fv = FIELD_VERSIONS_TABLE;
    const columns = 'entity, entity_id, field, version, hlc, client_id, value';
    // Row markers are bookkeeping; only tombstones (value NULL) travel, as row deletes.
    const visible = `(field <> '*' OR value IS NULL)`;
    const order = 'ORDER BY version, entity, entity_id, field';
    this.s = {
      // The log's AUTOINCREMENT counter, as SqliteStore reads it: pruning never moves it back.
      maxVersion: db.prepare(`SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '${LOG_TABLE}'), 0)`).pluck(),
      lastLog: db.prepare(
        `SELECT version, hlc, client_id, action FROM ${LOG_TABLE} WHERE entity = ? AND entity_id = ? ORDER BY version DESC LIMIT 1`,
      ),
      entry: db.prepare(`SELECT version, hlc, client_id, value FROM ${fv} WHERE entity = ? AND entity_id = ? AND field = ?`),
      rowEntries: db.prepare(`SELECT field, version, hlc, client_id, value FROM ${fv} WHERE entity = ? AND entity_id = ?`),
      pageEntries: db.prepare(
        `SELECT entity_id, field, version, hlc, client_id FROM ${fv}
         WHERE entity = ? AND entity_id IN (SELECT value FROM json_each(?)) AND field <> '*'`,
      ),
      changesAll: db.prepare(`SELECT ${columns} FROM ${fv} WHERE version > ? AND ${visible} ${order} LIMIT ?`),
      changesEntity: db.prepare(`SELECT ${columns} FROM ${fv} WHERE entity = ? AND version > ? AND ${visible} ${order} LIMIT ?`),
      changesAtAll: db.prepare(`SELECT ${columns} FROM ${fv} WHERE version = ? AND ${visible} ${order}`),
      changesAtEntity: db.prepare(`SELECT ${columns} FROM ${fv} WHERE entity = ? AND version = ? AND ${visible} ${order}`),
      setHlc: db.prepare(`UPDATE ${fv} SET hlc = ? WHERE entity = ? AND entity_id = ? AND field = ? AND version = ?`),
      lastMutation: db.prepare(`SELECT last_mutation_id FROM ${FIELD_CLIENTS_TABLE} WHERE client_id = ?`).pluck(),
      saveMutation: db.prepare(
        `INSERT INTO ${FIELD_CLIENTS_TABLE} (client_id, last_mutation_id, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (client_id) DO UPDATE SET last_mutation_id = excluded.last_mutation_id, updated_at = excluded.updated_at`,
      ),
      setContext: db.prepare(`INSERT OR REPLACE INTO ${CONTEXT_TABLE} (id, client_id, hlc) VALUES (1, ?, ?)`),
      clearContext: db.prepare(`DELETE FROM ${CONTEXT_TABLE}`),
    };
  }

  private prepareEntity(target: FieldTarget): void {
    const { schema } = target;
    const table = quoteIdent(schema.table);
    const key = quoteIdent(schema.primaryKey);
    const snapshotSql = (where: string) =>
      `SELECT CAST(t.${key} AS TEXT) AS _rhtmx_key, t.* FROM ${table} t ${where} ORDER BY t.${key} LIMIT ?`;
    this.entities.set(schema.entity, {
      target,
      name: schema.entity,
      columns: new Map(target.fields.map((column) => [column.name, column])),
      keyIsInteger: schema.columns.find((column) => column.primaryKey)?.type === 'integer',
      selectRow: this.db.prepare(`SELECT * FROM ${table} WHERE ${key} = ?`),
      deleteRow: this.db.prepare(`DELETE FROM ${table} WHERE ${key} = ?`),
      snapshotFirst: this.db.prepare(snapshotSql('')),
      snapshotAfter: this.db.prepare(snapshotSql(`WHERE t.${key} > ?`)),
      updates: new Map(),
      inserts: new Map(),
    });
  }

  private entity(name: string): PreparedFieldEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised for field sync`);
    return entity;
  }

  /** Bind a string id with the key column's type so integer keys compare and sort as numbers. */
  private keyValue(entity: PreparedFieldEntity, id: string): string | number {
    if (entity.keyIsInteger && /^-?\d{1,15}$/.test(id)) return Number(id);
    return id;
  }

  async currentVersion(): Promise<number> {
    return this.s.maxVersion.get() as number;
  }

  async push(batch: FieldPushBatch): Promise<FieldOutcome[]> {
    const entity = this.entity(batch.entity);
    const s = this.s;
    const run = this.db.transaction((): FieldOutcome[] => {
      const lastApplied = batch.clientId === null ? null : ((s.lastMutation.get(batch.clientId) as number | undefined) ?? -1);
      const isDuplicate = (change: FieldWrite) => lastApplied !== null && change.mutationId !== null && change.mutationId <= lastApplied;
      const outcomes: Array<FieldOutcome | undefined> = new Array(batch.changes.length);
      try {
        batch.changes.forEach((change, index) => {
          if (outcomes[index]) return; // settled together with an earlier change that inserted its row
          outcomes[index] = isDuplicate(change) ? this.duplicate(entity, change) : undefined;
          if (!outcomes[index]) this.applyOne(entity, batch, index, outcomes, isDuplicate);
        });
        const highest = Math.max(-1, ...batch.changes.map((change) => change.mutationId ?? -1));
        if (batch.clientId !== null && highest > (lastApplied ?? -1)) s.saveMutation.run(batch.clientId, highest, Date.now());
      } finally {
        s.clearContext.run();
      }
      return outcomes as FieldOutcome[];
    });
    return run.immediate();
  }

  private readState(entity: PreparedFieldEntity, change: FieldWrite): FieldServerState {
    const s = this.s;
    const raw = entity.selectRow.get(this.keyValue(entity, change.entityId)) as Record<string, unknown> | undefined;
    const last = s.lastLog.get(entity.name, change.entityId) as LogStampRow | undefined;
    const row = last ? stampOf(last) : NEVER_WRITTEN;
    let tombstone: WriteStamp | null = null;
    if (!raw) {
      const marker = s.entry.get(entity.name, change.entityId, ROW_FIELD) as EntryRow | undefined;
      if (marker && marker.value === null) tombstone = stampOf(marker);
      else if (last?.action === 'delete') tombstone = row;
    }
    const current = raw ? this.rowJson(entity, raw) : null;
    if (change.field === ROW_FIELD) return { exists: raw !== undefined, current, value: null, same: false, field: row, row, tombstone };
    if (!raw) return { exists: false, current, value: null, same: false, field: tombstone ?? NEVER_WRITTEN, row, tombstone };
    const column = entity.columns.get(change.field) as ColumnSchema;
    const entry = s.entry.get(entity.name, change.entityId, change.field) as EntryRow | undefined;
    return {
      exists: true,
      current,
      value: columnJsonValue(column, raw[change.field]),
      same: change.invalid === null && sameStored(raw[change.field], bindValue(change.value)),
      // No entry yet: the row predates field tracking; its latest log entry bounds the field's last write.
      field: entry ? stampOf(entry) : row,
      row,
      tombstone: null,
    };
  }

  /** A raw row as its JSON shows it (what rules and schemas see). */
  private rowJson(entity: PreparedFieldEntity, raw: Record<string, unknown>): Row {
    const row: Row = {};
    for (const column of entity.target.schema.columns) row[column.name] = columnJsonValue(column, raw[column.name]);
    return row;
  }

  private decide(batch: FieldPushBatch, change: FieldWrite, state: FieldServerState): FieldDecision {
    try {
      return batch.decide(change, state);
    } catch (error) {
      if (error instanceof SyncError) throw error; // forbidden: the whole push rolls back
      return { kind: 'reject', reason: `merge failed: ${(error as Error).message}` };
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

  private duplicate(entity: PreparedFieldEntity, change: FieldWrite): FieldOutcome {
    // The original outcome is not stored; the field's current state is, and it is what the client converges to.
    const state = this.readState(entity, change);
    const current = change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.field;
    return { change, status: 'applied', duplicate: true, version: current.version, hlc: current.hlc, value: state.value };
  }

  /** Run one write in a savepoint, its log rows stamped with the client and HLC: a failure rejects this change only. */
  private write(clientId: string | null, hlc: number, statement: () => void): void {
    this.db.transaction(() => {
      this.s.setContext.run(clientId, hlc);
      statement();
    })();
  }

  private applied(entity: PreparedFieldEntity, change: FieldWrite, hlc: number): FieldOutcome {
    const entry = this.s.entry.get(entity.name, change.entityId, change.field) as EntryRow | undefined;
    if (change.field === ROW_FIELD) return { change, status: 'applied', version: entry?.version, hlc: entry?.hlc ?? hlc, value: null };
    return { change, status: 'applied', version: entry?.version, hlc: entry?.hlc ?? hlc, value: entry ? parseValue(entry.value) : null };
  }

  private applyOne(
    entity: PreparedFieldEntity,
    batch: FieldPushBatch,
    index: number,
    outcomes: Array<FieldOutcome | undefined>,
    isDuplicate: (change: FieldWrite) => boolean,
  ): void {
    const change = batch.changes[index] as FieldWrite;
    const state = this.readState(entity, change);
    const decision = this.decide(batch, change, state);
    if (decision.kind !== 'write') {
      outcomes[index] = this.settled(change, decision, state);
      return;
    }
    const key = this.keyValue(entity, change.entityId);
    const origin = batch.origin !== undefined ? batch.origin : batch.clientId;
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
        return;
      }
      const value = checked.values[change.field] ?? change.value;
      try {
        if (remove) this.write(origin, decision.hlc, () => entity.deleteRow.run(key));
        else this.write(origin, decision.hlc, () => this.updateStatement(entity, change.field).run(bindValue(value), key));
        outcomes[index] = this.applied(entity, change, decision.hlc);
      } catch (error) {
        outcomes[index] = { change, status: 'rejected', reason: describeWriteError(error) };
      }
      return;
    }
    // A new row (or one re-created after its delete): the later changes to it in this push go into the
    // same INSERT, so a row whose columns are NOT NULL can be created field by field in one push.
    const group: Array<{ index: number; change: FieldWrite; hlc: number }> = [{ index, change, hlc: decision.hlc }];
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
    const reject = (reason: string, issues?: SchemaIssue[]) => {
      for (const member of group) outcomes[member.index] = { change: member.change, status: 'rejected', reason, issues };
    };
    if (!checked.ok) {
      reject(checked.reason, checked.issues);
      return;
    }
    const fields = Object.keys(values);
    const hlc = Math.max(...group.map((member) => member.hlc));
    try {
      this.write(origin, hlc, () =>
        this.insertStatement(entity, fields).run(key, ...fields.map((field) => bindValue(checked.values[field] ?? values[field] ?? null))),
      );
    } catch (error) {
      reject(describeWriteError(error));
      return;
    }
    // The row's log entry carries the newest stamp; each field keeps its own.
    const version = (this.s.entry.get(entity.name, change.entityId, ROW_FIELD) as EntryRow | undefined)?.version ?? 0;
    for (const member of group) this.s.setHlc.run(member.hlc, entity.name, change.entityId, member.change.field, version);
    for (const member of group) outcomes[member.index] = this.applied(entity, member.change, member.hlc);
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

  private updateStatement(entity: PreparedFieldEntity, field: string): Statement {
    let statement = entity.updates.get(field);
    if (!statement) {
      const { schema } = entity.target;
      // `field` was checked against the table's real columns before it got here.
      statement = this.db.prepare(
        `UPDATE ${quoteIdent(schema.table)} SET ${quoteIdent(field)} = ? WHERE ${quoteIdent(schema.primaryKey)} = ?`,
      );
      entity.updates.set(field, statement);
    }
    return statement;
  }

  private insertStatement(entity: PreparedFieldEntity, fields: string[]): Statement {
    const cacheKey = fields.join('\u0000');
    let statement = entity.inserts.get(cacheKey);
    if (!statement) {
      const { schema } = entity.target;
      const columns = [schema.primaryKey, ...fields];
      statement = this.db.prepare(
        `INSERT INTO ${quoteIdent(schema.table)} (${columns.map(quoteIdent).join(', ')}) VALUES (${columns.map(() => '?').join(', ')})`,
      );
      if (entity.inserts.size < MAX_CACHED_INSERTS) entity.inserts.set(cacheKey, statement);
    }
    return statement;
  }

  async readChanges(since: number, limit: number, entityName?: string): Promise<FieldChangePage> {
    const s = this.s;
    return this.db.transaction((): FieldChangePage => {
      const rows = (
        entityName === undefined ? s.changesAll.all(since, limit + 1) : s.changesEntity.all(entityName, since, limit + 1)
      ) as ChangeRow[];
      if (rows.length <= limit) return { changes: rows.map(toFieldChange), version: s.maxVersion.get() as number, hasMore: false };
      // A cursor is a version: never end a page in the middle of one write's fields.
      const cut = (rows[limit] as ChangeRow).version;
      let page = rows.slice(0, limit).filter((row) => row.version < cut);
      if (page.length === 0) {
        // One write touched more fields than a page holds: serve that whole write.
        page = (entityName === undefined ? s.changesAtAll.all(cut) : s.changesAtEntity.all(entityName, cut)) as ChangeRow[];
      }
      return { changes: page.map(toFieldChange), version: (page[page.length - 1] as ChangeRow).version, hasMore: true };
    })();
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<FieldSnapshotPage> {
    const entity = this.entity(entityName);
    const s = this.s;
    return this.db.transaction((): FieldSnapshotPage => {
      const version = atVersion ?? (s.maxVersion.get() as number);
      const rows = (
        after === undefined ? entity.snapshotFirst.all(limit + 1) : entity.snapshotAfter.all(this.keyValue(entity, after), limit + 1)
      ) as Array<Record<string, unknown> & { _rhtmx_key: string }>;
      const hasMore = rows.length > limit;
      if (hasMore) rows.length = limit;
      const ids = rows.map((row) => row._rhtmx_key);
      const entries = new Map<string, Map<string, WriteStamp>>();
      for (const entry of s.pageEntries.all(entityName, JSON.stringify(ids)) as Array<EntryRow & { entity_id: string; field: string }>) {
        let fields = entries.get(entry.entity_id);
        if (!fields) {
          fields = new Map();
          entries.set(entry.entity_id, fields);
        }
        fields.set(entry.field, stampOf(entry));
      }
      const changes: FieldChange[] = [];
      for (const row of rows) {
        const id = row._rhtmx_key;
        const recorded = entries.get(id);
        let fallback: WriteStamp | null = null;
        for (const column of entity.target.fields) {
          let stamp = recorded?.get(column.name);
          if (!stamp) {
            fallback ??= this.rowStamp(entityName, id);
            stamp = fallback;
          }
          changes.push({
            entity: entityName,
            entity_id: id,
            field: column.name,
            value: columnJsonValue(column, row[column.name]),
            version: stamp.version,
            hlc: stamp.hlc,
            client_id: stamp.clientId,
            action: 'update',
          });
        }
      }
      return { changes, version, after: hasMore ? ids[ids.length - 1] : undefined };
    })();
  }

  private rowStamp(entity: string, id: string): WriteStamp {
    const last = this.s.lastLog.get(entity, id) as LogStampRow | undefined;
    return last ? stampOf(last) : NEVER_WRITTEN;
  }

  async latest(entityName: string, entityId: string): Promise<RowFieldStates | null> {
    const entity = this.entity(entityName);
    return this.db.transaction((): RowFieldStates | null => {
      const raw = entity.selectRow.get(this.keyValue(entity, entityId)) as Record<string, unknown> | undefined;
      const entries = new Map(
        (this.s.rowEntries.all(entityName, entityId) as Array<EntryRow & { field: string }>).map((entry) => [entry.field, entry]),
      );
      const marker = entries.get(ROW_FIELD);
      if (!raw) {
        let tombstone: WriteStamp | null = marker && marker.value === null ? stampOf(marker) : null;
        if (!tombstone) {
          const last = this.s.lastLog.get(entityName, entityId) as LogStampRow | undefined;
          if (last?.action === 'delete') tombstone = stampOf(last);
        }
        return tombstone ? { deleted: true, version: tombstone.version, hlc: tombstone.hlc, fields: {} } : null;
      }
      const result: RowFieldStates = { deleted: false, version: 0, hlc: 0, fields: {} };
      let fallback: WriteStamp | null = null;
      for (const column of entity.target.fields) {
        const entry = entries.get(column.name);
        if (!entry) fallback ??= this.rowStamp(entityName, entityId);
        const stamp = entry ? stampOf(entry) : (fallback as WriteStamp);
        result.fields[column.name] = {
          value: columnJsonValue(column, raw[column.name]),
          version: stamp.version,
          hlc: stamp.hlc,
          client_id: stamp.clientId,
        };
        result.version = Math.max(result.version, stamp.version);
        result.hlc = Math.max(result.hlc, stamp.hlc);
      }
      return result;
    })();
  }

  async close(): Promise<void> {
    // The database handle is the app's; prepared statements are released with it.
  }
}
