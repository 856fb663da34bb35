/**
 * SQLite store on better-sqlite3.
 *
 * Change capture is done by triggers, so writes from app code, raw SQL and
 * other processes are logged alike. better-sqlite3 is synchronous: every
 * method runs one transaction to completion, which also gives us consistent
 * reads (data and cursor from the same WAL snapshot) for free.
 */
import { randomUUID } from 'node:crypto';
import type BetterSqlite3 from 'better-sqlite3';
import { quoteIdent } from '../core/config.js';
import { SyncError } from '../core/errors.js';
import type { Change, ChangeAction, ColumnSchema, Row } from '../core/protocol.js';
import type {
  AppliedChange,
  EntityTarget,
  FieldStore,
  LogPage,
  PushBatch,
  ServerRowState,
  SnapshotPage,
  Store,
  TableSchema,
  ValidatedChange,
  WriteDecision,
} from '../core/store.js';

type Database = BetterSqlite3.Database;
type Statement = BetterSqlite3.Statement;

export const LOG_TABLE = '_rhtmx_sync_log';
const CLIENTS_TABLE = '_rhtmx_sync_clients';
const META_TABLE = '_rhtmx_sync_meta';
/** One-row table a push fills so triggers can stamp its writes with the client id and HLC. */
export const CONTEXT_TABLE = '_rhtmx_sync_context';
/** Epoch ms in SQL. julianday, not unixepoch('subsec'): the sqlite3 CLI of older systems (< 3.42) must run our triggers too. */
const NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

export interface SqliteStoreOptions {
  /** How often to look for writes made outside the engine (other connections, other processes), ms. */
  pollMs?: number;
  /** Switch the database to WAL so readers never block the writer. Default true for file databases. */
  wal?: boolean;
}

interface LogRow {
  version: number;
  entity: string;
  entity_id: string;
  action: ChangeAction;
  data: string | null;
  hlc: number;
  client_id: string | null;
}

interface PreparedEntity {
  schema: TableSchema;
  /** SQL expression building the row's JSON from `<alias>.col`. */
  rowJson: (alias: string) => string;
  keyIsInteger: boolean;
  booleanColumns: Set<string>;
  selectRow: Statement;
  deleteRow: Statement;
  snapshotFirst: Statement;
  snapshotAfter: Statement;
  writes: Map<string, Statement>;
}

/** Maps a declared SQLite column type to the wire type clients coerce to (SQLite affinity rules). */
export function sqliteColumnType(declared: string): ColumnSchema['type'] {
  const type = declared.toUpperCase();
  if (type.includes('BOOL')) return 'boolean';
  if (type.includes('INT')) return 'integer';
  if (type.includes('JSON')) return 'json';
  if (type.includes('CHAR') || type.includes('CLOB') || type.includes('TEXT')) return 'text';
  if (type.includes('BLOB') || type === '') return type === '' ? 'text' : 'blob';
  if (type.includes('REAL') || type.includes('FLOA') || type.includes('DOUB') || type.includes('NUM') || type.includes('DEC')) {
    return 'number';
  }
  return 'text';
}

function jsonValueExpression(column: ColumnSchema, ref: string): string {
  switch (column.type) {
    case 'boolean':
      return `CASE WHEN ${ref} IS NULL THEN NULL WHEN ${ref} THEN json('true') ELSE json('false') END`;
    case 'blob':
      return `hex(${ref})`;
    case 'json':
      return `CASE WHEN json_valid(${ref}) THEN json(${ref}) ELSE ${ref} END`;
    default:
      return ref;
  }
}

export class SqliteStore implements Store {
  /** Field-level bookkeeping on the same database (loaded only when field sync is on). */
  async openFieldStore(): Promise<FieldStore> {
    const { SqliteFieldStore } = await import('./sqlite-fields.js');
    return new SqliteFieldStore(this.db);
  }

  private readonly entities = new Map<string, PreparedEntity>();
  private readonly pollMs: number;
  private statements!: {
    maxVersion: Statement;
    entityLog: Statement;
    allLog: Statement;
    rowState: Statement;
    baseRow: Statement;
    lastMutation: Statement;
    saveMutation: Statement;
    setContext: Statement;
    clearContext: Statement;
    getMeta: Statement;
    setMeta: Statement;
  };
  private watchers = new Set<() => void>();
  private pollTimer: NodeJS.Timeout | null = null;
  private lastSeenVersion = -1;

  constructor(
    readonly db: Database,
    options: SqliteStoreOptions = {},
  ) {
    this.pollMs = options.pollMs ?? 25;
    const wal = options.wal ?? (!db.memory && db.name !== '');
    if (wal) db.pragma('journal_mode = WAL');
    // Another process may hold the write lock briefly; wait rather than fail.
    db.pragma('busy_timeout = 5000');
  }

  async init(targets: EntityTarget[]): Promise<TableSchema[]> {
    const db = this.db;
    db.exec(`
      CREATE TABLE IF NOT EXISTS ${LOG_TABLE} (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        entity TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        action TEXT NOT NULL,
        data TEXT,
        hlc INTEGER NOT NULL,
        client_id TEXT,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS ${LOG_TABLE}_entity ON ${LOG_TABLE} (entity, version);
      CREATE INDEX IF NOT EXISTS ${LOG_TABLE}_row ON ${LOG_TABLE} (entity, entity_id, version);
      CREATE INDEX IF NOT EXISTS ${LOG_TABLE}_age ON ${LOG_TABLE} (created_at);
      CREATE TABLE IF NOT EXISTS ${CLIENTS_TABLE} (
        client_id TEXT PRIMARY KEY,
        last_mutation_id INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
      );
      CREATE TABLE IF NOT EXISTS ${META_TABLE} (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
      -- Versions start above 0: 0 means "no snapshot yet" to clients, so a table synced before its
      -- first write must still hand out a cursor they can continue from.
      INSERT INTO sqlite_sequence (name, seq) SELECT '${LOG_TABLE}', 1
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '${LOG_TABLE}');
      CREATE TABLE IF NOT EXISTS ${CONTEXT_TABLE} (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        client_id TEXT,
        hlc INTEGER
      );
    `);
    const schemas: TableSchema[] = [];
    db.transaction(() => {
      for (const target of targets) {
        const schema = this.introspect(target);
        this.installTriggers(schema);
        schemas.push(schema);
      }
    })();
    this.prepareShared();
    for (const schema of schemas) this.prepareEntity(schema);
    return schemas;
  }

  private introspect(target: EntityTarget): TableSchema {
    const info = this.db.prepare('SELECT name, type, "notnull" AS not_null, pk FROM pragma_table_info(?)').all(target.table) as Array<{
      name: string;
      type: string;
      not_null: number;
      pk: number;
    }>;
    if (info.length === 0) throw new Error(`rhtmx-sync: table ${target.table} does not exist`);
    const keys = info.filter((column) => column.pk > 0);
    const primaryKey = target.primaryKey ?? (keys.length === 1 ? keys[0]?.name : undefined);
    if (!primaryKey) {
      throw new Error(`rhtmx-sync: table ${target.table} needs a single-column primary key (or set primaryKey)`);
    }
    if (!info.some((column) => column.name === primaryKey)) {
      throw new Error(`rhtmx-sync: primary key ${primaryKey} is not a column of ${target.table}`);
    }
    const columns: ColumnSchema[] = info.map((column) => ({
      name: column.name,
      type: sqliteColumnType(column.type),
      nullable: column.not_null === 0 && column.name !== primaryKey,
      primaryKey: column.name === primaryKey,
    }));
    return { entity: target.entity, table: target.table, primaryKey, columns };
  }

  private rowJsonBuilder(schema: TableSchema): (alias: string) => string {
    return (alias) =>
      `json_object(${schema.columns
        .map((column) => `'${column.name.replaceAll("'", "''")}', ${jsonValueExpression(column, `${alias}.${quoteIdent(column.name)}`)}`)
        .join(', ')})`;
  }

  /** Drop and recreate the triggers so they match the table's current columns. */
  private installTriggers(schema: TableSchema): void {
    const table = quoteIdent(schema.table);
    const key = quoteIdent(schema.primaryKey);
    const entity = `'${schema.entity}'`;
    const rowJson = this.rowJsonBuilder(schema);
    const stamp = `COALESCE((SELECT hlc FROM ${CONTEXT_TABLE} WHERE id = 1), ${NOW_MS} * 4096)`;
    const origin = `(SELECT client_id FROM ${CONTEXT_TABLE} WHERE id = 1)`;
    // INSERT … SELECT so one trigger can log conditionally (the re-key delete below).
    const insertLog = (action: ChangeAction, idRef: string, data: string, when = '1') =>
      `INSERT INTO ${LOG_TABLE} (entity, entity_id, action, data, hlc, client_id, created_at)
       SELECT ${entity}, CAST(${idRef} AS TEXT), '${action}', ${data}, ${stamp}, ${origin}, ${NOW_MS} WHERE ${when};`;
    const name = (suffix: string) => quoteIdent(`_rhtmx_${schema.table}_${suffix}`);
    for (const suffix of ['insert', 'update', 'rekey', 'delete']) this.db.exec(`DROP TRIGGER IF EXISTS ${name(suffix)}`);
    this.db.exec(`
      CREATE TRIGGER ${name('insert')} AFTER INSERT ON ${table} BEGIN
        ${insertLog('create', `NEW.${key}`, rowJson('NEW'))}
      END;
      CREATE TRIGGER ${name('update')} AFTER UPDATE ON ${table} BEGIN
        ${insertLog('delete', `OLD.${key}`, 'NULL', `OLD.${key} IS NOT NEW.${key}`)}
        ${insertLog('update', `NEW.${key}`, rowJson('NEW'))}
      END;
      CREATE TRIGGER ${name('delete')} AFTER DELETE ON ${table} BEGIN
        ${insertLog('delete', `OLD.${key}`, 'NULL')}
      END;
    `);
  }

  private prepareShared(): void {
    const db = this.db;
    const columns = 'version, entity, entity_id, action, data, hlc, client_id';
    this.statements = {
      // The AUTOINCREMENT counter, not MAX(version): pruning the newest tombstone must not move cursors back.
      maxVersion: db.prepare(`SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '${LOG_TABLE}'), 0)`).pluck(),
      entityLog: db.prepare(`SELECT ${columns} FROM ${LOG_TABLE} WHERE entity = ? AND version > ? ORDER BY version LIMIT ?`),
      allLog: db.prepare(`SELECT ${columns} FROM ${LOG_TABLE} WHERE version > ? ORDER BY version LIMIT ?`),
      rowState: db.prepare(`SELECT version, hlc FROM ${LOG_TABLE} WHERE entity = ? AND entity_id = ? ORDER BY version DESC LIMIT 1`),
      baseRow: db.prepare(`SELECT data FROM ${LOG_TABLE} WHERE entity = ? AND entity_id = ? AND version = ?`).pluck(),
      lastMutation: db.prepare(`SELECT last_mutation_id FROM ${CLIENTS_TABLE} WHERE client_id = ?`).pluck(),
      saveMutation: db.prepare(
        `INSERT INTO ${CLIENTS_TABLE} (client_id, last_mutation_id, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (client_id) DO UPDATE SET last_mutation_id = excluded.last_mutation_id, updated_at = excluded.updated_at`,
      ),
      setContext: db.prepare(`INSERT OR REPLACE INTO ${CONTEXT_TABLE} (id, client_id, hlc) VALUES (1, ?, ?)`),
      clearContext: db.prepare(`DELETE FROM ${CONTEXT_TABLE}`),
      getMeta: db.prepare(`SELECT value FROM ${META_TABLE} WHERE key = ?`).pluck(),
      setMeta: db.prepare(
        `INSERT INTO ${META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)`,
      ),
    };
  }

  private prepareEntity(schema: TableSchema): void {
    const table = quoteIdent(schema.table);
    const key = quoteIdent(schema.primaryKey);
    const rowJson = this.rowJsonBuilder(schema);
    const keyColumn = schema.columns.find((column) => column.primaryKey);
    const snapshotSql = (where: string) =>
      `SELECT CAST(t.${key} AS TEXT) AS id, ${rowJson('t')} AS data,
         COALESCE((SELECT version FROM ${LOG_TABLE} l WHERE l.entity = ? AND l.entity_id = CAST(t.${key} AS TEXT) ORDER BY version DESC LIMIT 1), 0) AS version
       FROM ${table} t ${where} ORDER BY t.${key} LIMIT ?`;
    this.entities.set(schema.entity, {
      schema,
      rowJson,
      keyIsInteger: keyColumn?.type === 'integer',
      booleanColumns: new Set(schema.columns.filter((column) => column.type === 'boolean').map((column) => column.name)),
      selectRow: this.db.prepare(`SELECT ${rowJson('t')} AS data FROM ${table} t WHERE t.${key} = ?`).pluck(),
      deleteRow: this.db.prepare(`DELETE FROM ${table} WHERE ${key} = ?`),
      snapshotFirst: this.db.prepare(snapshotSql('')),
      snapshotAfter: this.db.prepare(snapshotSql(`WHERE t.${key} > ?`)),
      writes: new Map(),
    });
  }

  private entity(name: string): PreparedEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised`);
    return entity;
  }

  /** Bind a string id with the key column's type so integer keys compare and sort as numbers. */
  private keyValue(entity: PreparedEntity, id: string): string | number {
    if (entity.keyIsInteger && /^-?\d{1,15}$/.test(id)) return Number(id);
    return id;
  }

  async currentVersion(): Promise<number> {
    return this.statements.maxVersion.get() as number;
  }

  async readEntityLog(entity: string, since: number, limit: number): Promise<LogPage> {
    return this.db.transaction(() => {
      const rows = this.statements.entityLog.all(entity, since, limit + 1) as LogRow[];
      return this.toPage(rows, limit);
    })();
  }

  async readLog(since: number, limit: number, entities?: readonly string[]): Promise<LogPage> {
    return this.db.transaction(() => {
      const rows = this.statements.allLog.all(since, limit + 1) as LogRow[];
      const page = this.toPage(rows, limit);
      if (entities) {
        const wanted = new Set(entities);
        page.changes = page.changes.filter((change) => wanted.has(change.entity));
      }
      return page;
    })();
  }

  /** Must run inside a transaction: the cursor comes from the same snapshot as the rows. */
  private toPage(rows: LogRow[], limit: number): LogPage {
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    const version = hasMore ? (rows[rows.length - 1] as LogRow).version : (this.statements.maxVersion.get() as number);
    return { changes: rows.map(toChange), version, hasMore };
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage> {
    const entity = this.entity(entityName);
    return this.db.transaction(() => {
      const version = atVersion ?? (this.statements.maxVersion.get() as number);
      const rows = (
        after === undefined
          ? entity.snapshotFirst.all(entityName, limit + 1)
          : entity.snapshotAfter.all(entityName, this.keyValue(entity, after), limit + 1)
      ) as Array<{ id: string; data: string; version: number }>;
      const hasMore = rows.length > limit;
      if (hasMore) rows.length = limit;
      const changes: Change[] = rows.map((row) => ({
        entity: entityName,
        id: row.id,
        entity_id: row.id,
        action: 'create',
        data: JSON.parse(row.data) as Row,
        version: row.version,
      }));
      return { changes, version, after: hasMore ? changes[changes.length - 1]?.id : undefined };
    })();
  }

  async retainedSince(entity: string): Promise<number> {
    return (this.statements.getMeta.get(`pruned_through:${entity}`) as number | undefined) ?? 0;
  }

  async push(batch: PushBatch): Promise<AppliedChange[]> {
    const entity = this.entity(batch.schema.entity);
    const s = this.statements;
    const run = this.db.transaction((): AppliedChange[] => {
      const lastApplied = batch.clientId === null ? null : ((s.lastMutation.get(batch.clientId) as number | undefined) ?? -1);
      let highestMutation = lastApplied ?? -1;
      const results: AppliedChange[] = [];
      try {
        for (const [index, change] of batch.changes.entries()) {
          if (lastApplied !== null && change.mutationId !== null && change.mutationId <= lastApplied) {
            results.push(this.duplicateResult(entity, change));
            continue;
          }
          results.push(this.applyOne(entity, batch, change, index));
          if (change.mutationId !== null) highestMutation = Math.max(highestMutation, change.mutationId);
        }
        if (batch.clientId !== null && highestMutation > (lastApplied ?? -1)) {
          s.saveMutation.run(batch.clientId, highestMutation, Date.now());
        }
      } finally {
        s.clearContext.run();
      }
      return results;
    });
    return run.immediate();
  }

  private rowState(entity: PreparedEntity, id: string, baseVersion: number | null): ServerRowState {
    const json = entity.selectRow.get(this.keyValue(entity, id)) as string | undefined;
    const state = this.statements.rowState.get(entity.schema.entity, id) as { version: number; hlc: number } | undefined;
    const baseJson =
      baseVersion !== null ? (this.statements.baseRow.get(entity.schema.entity, id, baseVersion) as string | null | undefined) : null;
    return {
      row: json === undefined ? null : (JSON.parse(json) as Row),
      version: state?.version ?? 0,
      hlc: state?.hlc ?? 0,
      base: baseJson ? (JSON.parse(baseJson) as Row) : null,
    };
  }

  private duplicateResult(entity: PreparedEntity, change: ValidatedChange): AppliedChange {
    // The original outcome is not stored; the server row is, and it is what the client must converge to.
    const state = change.id === null ? null : this.rowState(entity, change.id, null);
    return {
      mutationId: change.mutationId,
      id: change.id,
      status: 'applied',
      duplicate: true,
      row: state?.row ?? null,
      serverVersion: state?.version ?? 0,
      version: state?.version ?? 0,
    };
  }

  private applyOne(entity: PreparedEntity, batch: PushBatch, change: ValidatedChange, index: number): AppliedChange {
    const base = { mutationId: change.mutationId, id: change.id };
    const server: ServerRowState =
      change.id === null ? { row: null, version: 0, hlc: 0, base: null } : this.rowState(entity, change.id, change.baseVersion);
    let decision: WriteDecision;
    try {
      decision = batch.decide(change, server, index);
    } catch (error) {
      if (error instanceof SyncError) throw error; // forbidden: roll the whole batch back
      return { ...base, status: 'rejected', reason: `resolver failed: ${(error as Error).message}` };
    }
    if (decision.kind === 'reject') return { ...base, status: 'rejected', reason: decision.reason, issues: decision.issues };
    if (decision.kind === 'conflict') {
      return { ...base, status: 'conflict', reason: decision.reason, row: server.row, serverVersion: server.version };
    }
    try {
      // A savepoint per change: a constraint failure rejects this change only.
      const id = this.db.transaction(() => {
        this.statements.setContext.run(batch.origin ?? batch.clientId, decision.hlc);
        return this.write(entity, change.id, decision, server.row !== null);
      })();
      const state = id === null ? undefined : (this.statements.rowState.get(entity.schema.entity, id) as { version: number } | undefined);
      return {
        ...base,
        id,
        status: 'applied',
        version: state?.version ?? server.version,
        merged: decision.merged || undefined,
        row: decision.merged && id !== null ? this.rowState(entity, id, null).row : undefined,
      };
    } catch (error) {
      return { ...base, status: 'rejected', reason: describeWriteError(error) };
    }
  }

  /** Runs the SQL for one decided write; returns the row id (database-assigned for keyless creates). */
  private write(
    entity: PreparedEntity,
    id: string | null,
    decision: Extract<WriteDecision, { kind: 'write' }>,
    exists: boolean,
  ): string | null {
    const { schema } = entity;
    if (decision.action === 'delete') {
      if (id !== null && exists) entity.deleteRow.run(this.keyValue(entity, id));
      return id;
    }
    const data: Row = {};
    for (const [column, value] of Object.entries(decision.data)) {
      if (column === schema.primaryKey) continue;
      if (!schema.columns.some((c) => c.name === column)) continue;
      data[column] = typeof value === 'boolean' ? Number(value) : value;
    }
    const columns = Object.keys(data);
    if (decision.action === 'update' && exists) {
      if (columns.length === 0 || id === null) return id;
      const sql = `UPDATE ${quoteIdent(schema.table)} SET ${columns.map((c) => `${quoteIdent(c)} = ?`).join(', ')} WHERE ${quoteIdent(schema.primaryKey)} = ?`;
      this.cached(entity, sql).run(...columns.map((c) => data[c]), this.keyValue(entity, id));
      return id;
    }
    let rowId = id;
    if (rowId === null && !entity.keyIsInteger) rowId = randomUUID();
    const insertColumns = rowId === null ? columns : [schema.primaryKey, ...columns];
    const values = rowId === null ? columns.map((c) => data[c]) : [this.keyValue(entity, rowId), ...columns.map((c) => data[c])];
    const sql =
      insertColumns.length === 0
        ? `INSERT INTO ${quoteIdent(schema.table)} DEFAULT VALUES`
        : `INSERT INTO ${quoteIdent(schema.table)} (${insertColumns.map(quoteIdent).join(', ')}) VALUES (${insertColumns.map(() => '?').join(', ')})`;
    const info = this.cached(entity, sql).run(...values);
    return rowId ?? String(info.lastInsertRowid);
  }

  private cached(entity: PreparedEntity, sql: string): Statement {
    let statement = entity.writes.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      // Bounded: column subsets of one table; a hostile client cannot grow it past the real columns' combinations we allow.
      if (entity.writes.size < 256) entity.writes.set(sql, statement);
    }
    return statement;
  }

  async countRows(entity: string): Promise<number> {
    const { schema } = this.entity(entity);
    return this.db
      .prepare(`SELECT COUNT(*) FROM ${quoteIdent(schema.table)}`)
      .pluck()
      .get() as number;
  }

  async logSize(): Promise<number> {
    return this.db.prepare(`SELECT COUNT(*) FROM ${LOG_TABLE}`).pluck().get() as number;
  }

  async cleanup(olderThanMs: number): Promise<number> {
    return this.db.transaction(() => {
      // Deleted rows' tombstones are the only entries whose loss a lagging client would notice:
      // remember the newest pruned one per entity, and send older cursors a reset instead.
      const horizons = this.db
        .prepare(`SELECT entity, MAX(version) AS v FROM ${LOG_TABLE} WHERE created_at < ? AND action = 'delete' GROUP BY entity`)
        .all(olderThanMs) as Array<{ entity: string; v: number }>;
      for (const { entity, v } of horizons) this.statements.setMeta.run(`pruned_through:${entity}`, v);
      const superseded = this.db
        .prepare(
          `DELETE FROM ${LOG_TABLE} WHERE created_at < ? AND (action = 'delete' OR EXISTS (
             SELECT 1 FROM ${LOG_TABLE} newer WHERE newer.entity = ${LOG_TABLE}.entity
               AND newer.entity_id = ${LOG_TABLE}.entity_id AND newer.version > ${LOG_TABLE}.version))`,
        )
        .run(olderThanMs);
      this.db.prepare(`DELETE FROM ${CLIENTS_TABLE} WHERE updated_at < ?`).run(olderThanMs);
      return superseded.changes;
    })();
  }

  watch(onChange: () => void): () => void {
    this.watchers.add(onChange);
    if (!this.pollTimer) {
      this.lastSeenVersion = this.statements.maxVersion.get() as number;
      // Polling the log's sequence (one row lookup) catches writes from this connection, other
      // connections and other processes alike; PRAGMA data_version would miss our own.
      this.pollTimer = setInterval(() => {
        let latest: number;
        try {
          latest = this.statements.maxVersion.get() as number;
        } catch {
          return; // database busy or closing: try again next tick
        }
        if (latest !== this.lastSeenVersion) {
          this.lastSeenVersion = latest;
          for (const watcher of this.watchers) watcher();
        }
      }, this.pollMs);
      this.pollTimer.unref();
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0 && this.pollTimer) {
        clearInterval(this.pollTimer);
        this.pollTimer = null;
      }
    };
  }

  async close(): Promise<void> {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.watchers.clear();
  }
}

function toChange(row: LogRow): Change {
  return {
    entity: row.entity,
    id: row.entity_id,
    entity_id: row.entity_id,
    action: row.action,
    data: row.data === null ? null : (JSON.parse(row.data) as Row),
    version: row.version,
    hlc: row.hlc,
    client_id: row.client_id,
  };
}

/** Constraint messages name the column, which helps; anything else is not shown to clients. */
function describeWriteError(error: unknown): string {
  const code = (error as { code?: string }).code ?? '';
  const message = (error as Error).message ?? '';
  if (code.startsWith('SQLITE_CONSTRAINT')) return message.replace(/^.*?(constraint failed)/i, '$1');
  if (code === 'SQLITE_MISMATCH') return 'datatype mismatch';
  if (/can only bind/.test(message)) return 'unsupported value type';
  return 'write failed';
}
