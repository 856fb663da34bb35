/**
 * The SQLite store's tables and the Catalog of synced tables: introspection,
 * the log tables' DDL, the capture triggers, and each table's prepared
 * statements (shared by reads, entity pushes and field pushes).
 *
 * Change capture is done by triggers, so writes from app code, raw SQL and
 * other processes are logged alike. A push stamps its writes through the
 * one-row context table, which the triggers read.
 */
import type BetterSqlite3 from 'better-sqlite3';
import { quoteIdent } from '../../core/config.js';
import type { ChangeAction, ColumnSchema, Row } from '../../core/protocol.js';
import { type EntityTarget, fieldClientKey, shapeFingerprint, type TableSchema, type WriteStamp } from '../../core/store.js';

export type Database = BetterSqlite3.Database;
export type Statement = BetterSqlite3.Statement;

/** The change log: one global, strictly increasing version sequence (AUTOINCREMENT). */
export const LOG_TABLE = '_rhtmx_sync_log';
/** The exactly-once record of both push families (field pushes under `fieldClientKey`). */
export const CLIENTS_TABLE = '_rhtmx_sync_clients';
/** Each recent mutation's outcome per client key, replayed to a retry (written in the push transaction). */
export const OUTCOMES_TABLE = '_rhtmx_sync_outcomes';
/** Per-field bookkeeping, created by the field store (fields.ts) when field sync is on. */
export const FIELD_VERSIONS_TABLE = '_rhtmx_field_versions';
/** One-row table a push fills so triggers can stamp its writes with the client id and HLC. */
export const CONTEXT_TABLE = '_rhtmx_sync_context';
/**
 * Small counters: `pruned_through:<entity>`, the entity's must-refetch horizon (the newest delete
 * cleanup pruned, or the version a schema change reserved; older cursors get a reset), and
 * `shape:<entity>`, the fingerprint of the table's columns the triggers were last installed for.
 */
export const META_TABLE = '_rhtmx_sync_meta';
/** Where the previous version kept field pushes' records; migrated into CLIENTS_TABLE at init. */
const OLD_FIELD_CLIENTS_TABLE = '_rhtmx_field_clients';
/** Epoch ms in SQL. julianday, not unixepoch('subsec'): the sqlite3 CLI of older systems (< 3.42) must run our triggers too. */
const NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

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

/** A column as the row's JSON shows it: booleans as JSON booleans, blobs as upper-case hex, JSON columns parsed. */
function jsonValueExpression(column: ColumnSchema, ref: string): string {
  switch (column.type) {
    case 'boolean':
      return `CASE WHEN ${ref} IS NULL THEN NULL WHEN ${ref} THEN json('true') ELSE json('false') END`;
    case 'blob':
      return `CASE WHEN ${ref} IS NULL THEN NULL ELSE hex(${ref}) END`;
    case 'json':
      return `CASE WHEN json_valid(${ref}) THEN json(${ref}) ELSE ${ref} END`;
    default:
      return ref;
  }
}

/** A SQL string literal. */
export const literal = (text: string): string => `'${text.replaceAll("'", "''")}'`;

/** A synced table as introspected: its schema and the fingerprint of its shape. */
interface Shape {
  schema: TableSchema;
  fingerprint: number;
}

/** What following the schema found: tables whose shape changed, and those that could not be read. */
export interface SchemaRefresh {
  changed: TableSchema[];
  failed: unknown[];
}

/** A row's latest log entry: who wrote it and when, and what it did. */
export interface LastEntry extends WriteStamp {
  action: ChangeAction;
}

/** One synced table: its prepared statements, and the row reads and writes entity and field pushes share. */
export type SyncedTable = ReturnType<typeof prepareTable>;

function prepareTable(db: Database, schema: TableSchema) {
  const table = quoteIdent(schema.table);
  const key = quoteIdent(schema.primaryKey);
  const rowJson = rowJsonBuilder(schema);
  const keyIsInteger = schema.columns.find((column) => column.primaryKey)?.type === 'integer';
  const idText = `CAST(t.${key} AS TEXT) AS id`;
  const version = `COALESCE((SELECT version FROM ${LOG_TABLE} l WHERE l.entity = ${literal(schema.entity)}
     AND l.entity_id = CAST(t.${key} AS TEXT) ORDER BY version DESC LIMIT 1), 0)`;
  const [first, next] = ['', `WHERE t.${key} > ?`].map((where) =>
    db.prepare(`SELECT ${idText}, ${rowJson('t')} AS data, ${version} AS version FROM ${table} t ${where} ORDER BY t.${key} LIMIT ?`),
  ) as [Statement, Statement];
  // The same page as one string of change objects (core/store.ts snapshotJson's shape): no row objects, no JSON parse in JS.
  // group_concat takes them in the subquery's key order (a LIMIT subquery is not flattened); an ORDER BY
  // inside it would sort the page's strings again, 40 % of the query, for an order no client relies on.
  const change = `'{"entity":' || ${literal(JSON.stringify(schema.entity))} || ',"id":' || json_quote(CAST(t.${key} AS TEXT))
    || ',"entity_id":' || json_quote(CAST(t.${key} AS TEXT)) || ',"action":"create","data":' || ${rowJson('t')}
    || ',"version":' || ${version} || '}'`;
  const [firstJson, nextJson] = ['', `WHERE t.${key} > ?`].map((where) =>
    db.prepare(
      `SELECT '[' || COALESCE(group_concat(c, ','), '') || ']' AS json, count(*) AS count, CAST(max(k) AS TEXT) AS last
         FROM (SELECT t.${key} AS k, ${change} AS c FROM ${table} t ${where} ORDER BY t.${key} LIMIT ?)`,
    ),
  ) as [Statement, Statement];
  const rowAfter = db.prepare(`SELECT 1 FROM ${table} WHERE ${key} > ? LIMIT 1`).pluck();
  const selectRow = db.prepare(`SELECT ${rowJson('t')} FROM ${table} t WHERE t.${key} = ?`).pluck();
  const selectRows = db.prepare(
    `SELECT ${idText}, ${rowJson('t')} AS data FROM ${table} t WHERE t.${key} IN (SELECT value FROM json_each(?))`,
  );
  const deleteRow = db.prepare(`DELETE FROM ${table} WHERE ${key} = ?`);
  // UPDATE and INSERT statements by column set. Bounded: column subsets of one table, checked against the real columns.
  const writes = new Map<string, Statement>();
  const cached = (sql: string): Statement => {
    const statement = writes.get(sql) ?? db.prepare(sql);
    if (writes.size < 256) writes.set(sql, statement);
    return statement;
  };
  /** Bind a string id with the key column's type so integer keys compare and sort as numbers. */
  const keyValue = (id: string): string | number => (keyIsInteger && /^-?\d{1,15}$/.test(id) ? Number(id) : id);
  return {
    schema,
    table,
    columns: new Map(schema.columns.map((column) => [column.name, column])) as ReadonlyMap<string, ColumnSchema>,
    keyIsInteger,
    keyValue,
    /** Current rows after key `after` (from the first when undefined), ordered by key, with the version of each row's latest log entry (0: never logged). */
    page(limit: number, after: string | undefined): Array<{ id: string; data: string; version: number }> {
      return (after === undefined ? first.all(limit) : next.all(keyValue(after), limit)) as Array<{
        id: string;
        data: string;
        version: number;
      }>;
    },
    /** `page` as the JSON text of its changes (`snapshotJson`), with whether rows follow it. */
    pageJson(limit: number, after: string | undefined): { json: string; after?: string } {
      const page = (after === undefined ? firstJson.get(limit) : nextJson.get(keyValue(after), limit)) as {
        json: string;
        count: number;
        last: string | null;
      };
      const more = page.count === limit && page.last !== null && rowAfter.get(keyValue(page.last)) !== undefined;
      return more ? { json: page.json, after: page.last as string } : { json: page.json };
    },
    /** The row as its JSON shows it (the one shape the log, snapshots and field reads show), or null. */
    row(id: string): Row | null {
      const json = selectRow.get(keyValue(id)) as string | undefined;
      return json === undefined ? null : (JSON.parse(json) as Row);
    },
    /** Current rows by id, as their JSON shows them; missing ids are absent. */
    rows(ids: readonly string[]): Map<string, Row> {
      const found = selectRows.all(JSON.stringify(ids.map(keyValue))) as Array<{ id: string; data: string }>;
      return new Map(found.map((row) => [row.id, JSON.parse(row.data) as Row]));
    },
    delete(id: string): void {
      deleteRow.run(keyValue(id));
    },
    /**
     * UPDATE the given columns of row `id`, or INSERT a row with them (keyed
     * `id`, or by the database when null). Names must be real columns (the
     * caller checks); values are bound, never interpolated. Returns the row's id.
     */
    write(kind: 'update' | 'insert', id: string | null, values: Record<string, unknown>): string | null {
      const names = Object.keys(values);
      const bound = names.map((name) => bindable(values[name]));
      if (kind === 'update') {
        if (names.length === 0 || id === null) return id;
        cached(`UPDATE ${table} SET ${names.map((name) => `${quoteIdent(name)} = ?`).join(', ')} WHERE ${key} = ?`).run(
          ...bound,
          keyValue(id),
        );
        return id;
      }
      if (id !== null) {
        names.unshift(schema.primaryKey);
        bound.unshift(keyValue(id));
      }
      const into =
        names.length === 0 ? 'DEFAULT VALUES' : `(${names.map(quoteIdent).join(', ')}) VALUES (${names.map(() => '?').join(', ')})`;
      const info = cached(`INSERT INTO ${table} ${into}`).run(...bound);
      return id ?? String(info.lastInsertRowid);
    },
  };
}

/** A value ready to bind: SQLite has no booleans (1/0); bytes bind as they are. */
const bindable = (value: unknown): unknown => (typeof value === 'boolean' ? Number(value) : value);

/** The synced tables of one database and the statements every part of the store shares. */
export class Catalog {
  private readonly entities = new Map<string, SyncedTable>();
  /** The configured tables, and the shape each was last seen with. */
  private targets: EntityTarget[] = [];
  private readonly shapes = new Map<string, number>();
  /** `PRAGMA schema_version` when the shapes were last checked; it moves with every DDL, by anyone. */
  private schemaVersion = -1;
  readonly s: ReturnType<Catalog['prepareShared']>;
  /** Run `work` under a savepoint (inside a transaction; a nested better-sqlite3 transaction, made once): a throw rolls back its writes only. */
  readonly savepoint: <T>(work: () => T) => T;

  constructor(readonly db: Database) {
    db.exec(`
      CREATE TABLE IF NOT EXISTS ${LOG_TABLE} (
        version INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, entity_id TEXT NOT NULL, action TEXT NOT NULL,
        data TEXT, hlc INTEGER NOT NULL, client_id TEXT, created_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS ${LOG_TABLE}_entity ON ${LOG_TABLE} (entity, version);
      CREATE INDEX IF NOT EXISTS ${LOG_TABLE}_row ON ${LOG_TABLE} (entity, entity_id, version);
      -- Cleanup finds its cut by version (cleanup.ts); an index on created_at cost every write a page.
      DROP INDEX IF EXISTS ${LOG_TABLE}_age;
      CREATE TABLE IF NOT EXISTS ${CLIENTS_TABLE} (client_id TEXT PRIMARY KEY, last_mutation_id INTEGER NOT NULL, updated_at INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS ${OUTCOMES_TABLE} (
        client_id TEXT NOT NULL, mutation_id INTEGER NOT NULL, outcome_json TEXT NOT NULL, created_at INTEGER NOT NULL,
        PRIMARY KEY (client_id, mutation_id)
      ) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS ${META_TABLE} (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
      -- Versions start above 0: 0 means "no snapshot yet" to clients, so a table synced before its
      -- first write must still hand out a cursor they can continue from.
      INSERT INTO sqlite_sequence (name, seq) SELECT '${LOG_TABLE}', 1
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '${LOG_TABLE}');
      CREATE TABLE IF NOT EXISTS ${CONTEXT_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), client_id TEXT, hlc INTEGER);
    `);
    this.s = this.prepareShared();
    const nested = db.transaction((work: () => unknown) => work());
    this.savepoint = <T>(work: () => T): T => nested(work) as T;
  }

  private prepareShared() {
    const db = this.db;
    return {
      // The AUTOINCREMENT counter, not MAX(version): pruning the newest tombstone must not move cursors back.
      maxVersion: db.prepare(`SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '${LOG_TABLE}'), 0)`).pluck(),
      lastEntry: db.prepare(
        `SELECT version, hlc, client_id AS clientId, action FROM ${LOG_TABLE} WHERE entity = ? AND entity_id = ? ORDER BY version DESC LIMIT 1`,
      ),
      baseRow: db.prepare(`SELECT data FROM ${LOG_TABLE} WHERE entity = ? AND entity_id = ? AND version = ?`).pluck(),
      lastMutation: db.prepare(`SELECT last_mutation_id FROM ${CLIENTS_TABLE} WHERE client_id = ?`).pluck(),
      saveMutation: db.prepare(
        `INSERT INTO ${CLIENTS_TABLE} (client_id, last_mutation_id, updated_at) VALUES (?, ?, ?)
         ON CONFLICT (client_id) DO UPDATE SET last_mutation_id = MAX(last_mutation_id, excluded.last_mutation_id),
           updated_at = MAX(updated_at, excluded.updated_at)`,
      ),
      outcome: db.prepare(`SELECT outcome_json FROM ${OUTCOMES_TABLE} WHERE client_id = ? AND mutation_id = ?`).pluck(),
      // One statement for a push's outcomes: a JSON array of [mutation id, outcomes] pairs.
      saveOutcomes: db.prepare(
        `INSERT INTO ${OUTCOMES_TABLE} (client_id, mutation_id, outcome_json, created_at)
         SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'), ? FROM json_each(?) WHERE true
         ON CONFLICT (client_id, mutation_id) DO UPDATE SET outcome_json = excluded.outcome_json, created_at = excluded.created_at`,
      ),
      // The version of the log entry a write just made: the newest one, when it is this row's (else lastEntry is asked).
      justLogged: db
        .prepare(
          `SELECT version FROM ${LOG_TABLE} WHERE version = (SELECT seq FROM sqlite_sequence WHERE name = '${LOG_TABLE}')
           AND entity = ? AND entity_id = ?`,
        )
        .pluck(),
      pruneOutcomes: db.prepare(`DELETE FROM ${OUTCOMES_TABLE} WHERE client_id = ? AND mutation_id <= ?`),
      // The row is put once per push (openContext); each write updates it in place, cheaper than replacing it.
      openContext: db.prepare(`INSERT OR REPLACE INTO ${CONTEXT_TABLE} (id, client_id, hlc) VALUES (1, NULL, NULL)`),
      setContext: db.prepare(`UPDATE ${CONTEXT_TABLE} SET client_id = ?, hlc = ? WHERE id = 1`),
      clearContext: db.prepare(`DELETE FROM ${CONTEXT_TABLE}`),
      getMeta: db.prepare(`SELECT value FROM ${META_TABLE} WHERE key = ?`).pluck(),
      setMeta: db.prepare(
        `INSERT INTO ${META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)`,
      ),
      putMeta: db.prepare(`INSERT INTO ${META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`),
      schemaVersion: db.prepare('SELECT schema_version FROM pragma_schema_version').pluck(),
      // A version no change takes: the horizon a schema change reserves (AUTOINCREMENT continues above it).
      reserveVersion: db.prepare(`UPDATE sqlite_sequence SET seq = seq + 1 WHERE name = '${LOG_TABLE}'`),
    };
  }

  /**
   * Introspect the tables, (re)install their triggers and prepare their
   * statements; migrate old records first. A table whose shape differs from
   * the one recorded (a migration ran while no engine did) gets a new
   * must-refetch horizon in the same transaction.
   */
  install(targets: EntityTarget[]): TableSchema[] {
    this.migrateFieldClients();
    this.targets = targets;
    const shapes = this.db
      .transaction(() => {
        const found = targets.map((target) => this.introspect(target));
        for (const shape of found) this.installTriggers(shape.schema);
        this.recordShapes(found);
        this.schemaVersion = this.s.schemaVersion.get() as number;
        return found;
      })
      .immediate();
    for (const shape of shapes) this.adopt(shape);
    return shapes.map((shape) => shape.schema);
  }

  /**
   * Follow DDL made by anyone (this connection, another one, another
   * process): when `PRAGMA schema_version` moved, introspect the synced
   * tables again. A table whose shape changed gets, in one transaction, its
   * capture triggers re-installed (and `reinstall`'s, the field trigger), and
   * a new must-refetch horizon and its new fingerprint unless another engine
   * on this database recorded that shape already; then its statements are
   * prepared again. Returns the tables whose shape changed since this catalog last saw them.
   */
  refresh(reinstall: (schema: TableSchema) => void = () => {}): SchemaRefresh {
    const result: SchemaRefresh = { changed: [], failed: [] };
    if ((this.s.schemaVersion.get() as number) === this.schemaVersion) return result;
    const shapes = this.db
      .transaction(() => {
        const moved: Shape[] = [];
        for (const target of this.targets) {
          let shape: Shape;
          try {
            shape = this.introspect(target);
          } catch (error) {
            result.failed.push(error);
            continue;
          }
          if (shape.fingerprint !== this.shapes.get(target.entity)) moved.push(shape);
        }
        // Another engine on this file may have done this already: doing it again is harmless (and mends
        // the triggers of one that started with the old shape); the horizon is raised once per shape.
        for (const shape of moved) {
          this.installTriggers(shape.schema);
          reinstall(shape.schema);
        }
        this.recordShapes(moved.filter((shape) => this.s.getMeta.get(shapeKey(shape.schema.entity)) !== shape.fingerprint));
        // Read last: our own trigger DDL moved it too.
        this.schemaVersion = this.s.schemaVersion.get() as number;
        return moved;
      })
      .immediate();
    for (const shape of shapes) {
      this.adopt(shape);
      result.changed.push(shape.schema);
    }
    return result;
  }

  /**
   * Persist each table's fingerprint; those that differ from the recorded one
   * (clients may hold rows of the old shape) get one new version as their
   * must-refetch horizon: every cursor handed out so far is below it. A table
   * seen for the first time only records its shape.
   */
  private recordShapes(shapes: Shape[]): void {
    const changed = shapes.filter((shape) => {
      const recorded = this.s.getMeta.get(shapeKey(shape.schema.entity)) as number | undefined;
      return recorded !== undefined && recorded !== shape.fingerprint;
    });
    if (changed.length > 0) this.raiseHorizon(changed.map((shape) => shape.schema.entity));
    for (const shape of shapes) this.s.putMeta.run(shapeKey(shape.schema.entity), shape.fingerprint);
  }

  /** Give these entities one new version as their must-refetch horizon: every cursor handed out so far is below it. */
  raiseHorizon(entities: readonly string[]): number {
    return this.db.transaction(() => {
      this.s.reserveVersion.run();
      const horizon = this.currentVersion();
      for (const entity of entities) {
        this.s.setMeta.run(`pruned_through:${entity}`, horizon);
        this.s.setMeta.run(`raised:${entity}`, horizon);
      }
      return horizon;
    })();
  }

  private adopt(shape: Shape): void {
    this.entities.set(shape.schema.entity, prepareTable(this.db, shape.schema));
    this.shapes.set(shape.schema.entity, shape.fingerprint);
  }

  /**
   * Field pushes used to keep their records in a table of their own. Move
   * them under `fieldClientKey` (keeping the greater id when a record exists
   * there already) and drop the old table, under the write lock, so two
   * processes starting at once migrate once.
   */
  private migrateFieldClients(): void {
    const exists = this.db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).pluck();
    if (!exists.get(OLD_FIELD_CLIENTS_TABLE)) return;
    this.db
      .transaction(() => {
        if (!exists.get(OLD_FIELD_CLIENTS_TABLE)) return; // another process was first
        const old = this.db.prepare(`SELECT client_id, last_mutation_id, updated_at FROM ${OLD_FIELD_CLIENTS_TABLE}`).raw().all();
        for (const [id, last, at] of old as Array<[string, number, number]>) this.s.saveMutation.run(fieldClientKey(id), last, at);
        this.db.exec(`DROP TABLE ${OLD_FIELD_CLIENTS_TABLE}`);
      })
      .immediate();
  }

  private introspect(target: EntityTarget): Shape {
    type Info = { name: string; type: string; not_null: number; pk: number };
    const info = this.db.prepare('SELECT name, type, "notnull" AS not_null, pk FROM pragma_table_info(?)').all(target.table) as Info[];
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
    const schema: TableSchema = { entity: target.entity, table: target.table, primaryKey, columns };
    return {
      schema,
      fingerprint: shapeFingerprint(
        schema,
        info.map((column) => column.type),
      ),
    };
  }

  /** Drop and recreate the triggers so they match the table's current columns. */
  private installTriggers(schema: TableSchema): void {
    const key = quoteIdent(schema.primaryKey);
    const rowJson = rowJsonBuilder(schema);
    const context = (column: string) => `(SELECT ${column} FROM ${CONTEXT_TABLE} WHERE id = 1)`;
    // INSERT … SELECT so one trigger can log conditionally (the re-key delete below).
    const insertLog = (action: ChangeAction, idRef: string, data: string, when = '1') =>
      `INSERT INTO ${LOG_TABLE} (entity, entity_id, action, data, hlc, client_id, created_at)
       SELECT ${literal(schema.entity)}, CAST(${idRef} AS TEXT), '${action}', ${data},
         COALESCE(${context('hlc')}, ${NOW_MS} * 4096), ${context('client_id')}, ${NOW_MS} WHERE ${when};`;
    const name = (suffix: string) => quoteIdent(`_rhtmx_${schema.table}_${suffix}`);
    for (const suffix of ['insert', 'update', 'rekey', 'delete']) this.db.exec(`DROP TRIGGER IF EXISTS ${name(suffix)}`);
    const table = quoteIdent(schema.table);
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

  entity(name: string): SyncedTable {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised`);
    return entity;
  }

  lastEntry(entity: string, id: string): LastEntry | undefined {
    return this.s.lastEntry.get(entity, id) as LastEntry | undefined;
  }

  /** The version of row `id`'s newest log entry, read cheaply right after a write logged it. */
  loggedVersion(entity: string, id: string): number | undefined {
    return (this.s.justLogged.get(entity, id) as number | undefined) ?? this.lastEntry(entity, id)?.version;
  }

  currentVersion(): number {
    return this.s.maxVersion.get() as number;
  }
}

/** Meta key of an entity's recorded shape. */
const shapeKey = (entity: string): string => `shape:${entity}`;

function rowJsonBuilder(schema: TableSchema): (alias: string) => string {
  return (alias) =>
    `json_object(${schema.columns
      .map((column) => `${literal(column.name)}, ${jsonValueExpression(column, `${alias}.${quoteIdent(column.name)}`)}`)
      .join(', ')})`;
}
