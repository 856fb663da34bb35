/**
 * What the store installs and what it found: the log, client and meta tables,
 * the one capture function every synced table's trigger runs, and each synced
 * table as introspected (`PreparedEntity`). The `Catalog` holds all of it once
 * `install` ran; every other part of the store reads its names from there.
 */
import type { Pool, PoolClient } from 'pg';
import { quoteIdent } from '../../core/config.js';
import type { ColumnSchema } from '../../core/protocol.js';
import { type EntityTarget, fieldClientKey, shapeFingerprint, type TableSchema } from '../../core/store.js';
import { transaction } from './transaction.js';

/** The change log table (same name as on SQLite). */
export const LOG_TABLE = '_rhtmx_sync_log';
/** Per-field versions, filled by the field capture trigger (fields.ts). */
export const FIELD_VERSIONS_TABLE = '_rhtmx_field_versions';
/** Where field pushes kept their exactly-once records before they moved into the one clients table. */
const LEGACY_FIELD_CLIENTS_TABLE = '_rhtmx_field_clients';
/** Our objects (the clients table holds the records of both push families, field pushes under `fieldClientKey`). */
const OBJECTS = {
  log: LOG_TABLE,
  clients: '_rhtmx_sync_clients',
  outcomes: '_rhtmx_sync_outcomes',
  meta: '_rhtmx_sync_meta',
  sequence: '_rhtmx_sync_version',
  capture: '_rhtmx_sync_capture',
  captureTruncate: '_rhtmx_sync_capture_truncate',
  fieldVersions: FIELD_VERSIONS_TABLE,
  fieldCapture: '_rhtmx_field_capture',
  ddlNotify: '_rhtmx_sync_ddl',
} as const;
/** Quoted names of our objects, qualified with the schema they live in. */
export type ObjectNames = Record<keyof typeof OBJECTS, string>;
const TRIGGER_NAME = '_rhtmx_sync';
/** The statement trigger that logs a TRUNCATE as one delete per row. */
const TRUNCATE_TRIGGER_NAME = '_rhtmx_sync_truncate';
/** The NOTIFY channel every capture trigger signals; the payload is empty (a write) or SCHEMA_NOTICE. */
export const NOTIFY_CHANNEL = 'rhtmx_sync';
/** The payload the DDL event trigger sends after an ALTER TABLE of a synced table: every node re-introspects. */
export const SCHEMA_NOTICE = 'schema';
/** The database-wide event trigger that sends SCHEMA_NOTICE (creating it needs a superuser). */
const DDL_TRIGGER_NAME = '_rhtmx_sync_ddl';
/** Transaction-local setting a push stamps its log rows' client id with. */
export const CLIENT_SETTING = 'rhtmx.client_id';
/** Transaction-local setting a push stamps its log rows' HLC with. */
export const HLC_SETTING = 'rhtmx.hlc';
/** Row-level AFTER INSERT OR UPDATE OR DELETE, as pg_trigger.tgtype encodes it. */
const TRIGGER_TYPE = 1 | 4 | 8 | 16;
/** jsonb_build_object takes at most 100 arguments. */
const JSON_PAIRS_PER_CALL = 50;

/** A column as the store binds it. */
export interface PgColumn {
  schema: ColumnSchema;
  /** pg_type.typcategory: 'A' for arrays. */
  category: string;
}

/** A synced table as introspected, with the SQL fragments every read and write of it uses. */
export interface PreparedEntity {
  schema: TableSchema;
  /** Schema-qualified, quoted table name. */
  table: string;
  /** Quoted primary key column. */
  key: string;
  keyIsInteger: boolean;
  /** The database fills the key when a create omits it (serial, identity, default). */
  keyHasDefault: boolean;
  columns: Map<string, PgColumn>;
  /** SQL expression of the row's JSON from `<alias>` (same JSON the trigger logs). */
  rowJson: (alias: string) => string;
  /** SQL expression of the row's id as logged (`to_jsonb(pk) #>> '{}'`). */
  idText: (alias: string) => string;
  /** The table's shape (`shapeFingerprint`): columns, types, key. */
  fingerprint: number;
}

/** What following the schema found: tables whose shape changed, and those that could not be read. */
export interface SchemaRefresh {
  changed: TableSchema[];
  failed: unknown[];
}

/** A SQL string literal. */
export const literal = (value: string): string => `'${value.replaceAll("'", "''")}'`;

/** Whether `id` can name a row of this table (integer keys must look like integers; ids are client-supplied). */
export function keyFits(entity: PreparedEntity, id: string): boolean {
  return !entity.keyIsInteger || /^-?\d{1,19}$/.test(id);
}

/** The PostgreSQL types (pg_type.typname) of each wire type but text. */
const WIRE_TYPES: Record<string, string> = {
  integer: 'int2 int4 int8',
  number: 'float4 float8 numeric',
  boolean: 'bool',
  json: 'json jsonb',
  blob: 'bytea',
};

/** Maps a PostgreSQL type (pg_type.typname and typcategory) to the wire type clients coerce to. */
export function postgresColumnType(typname: string, category: string): ColumnSchema['type'] {
  if (category === 'A') return 'json';
  const wire = Object.keys(WIRE_TYPES).find((type) => WIRE_TYPES[type]?.split(' ').includes(typname));
  return (wire ?? 'text') as ColumnSchema['type'];
}

/**
 * SQL building a row's JSON from `<alias>`: to_jsonb, with blob columns as
 * upper-case hex (the same shape SQLite's triggers produce).
 */
export function rowJsonBuilder(schema: TableSchema): (alias: string) => string {
  const blobs = schema.columns.filter((column) => column.type === 'blob').map((column) => column.name);
  return (alias) => {
    if (blobs.length === 0) return `to_jsonb(${alias}.*)`;
    const parts = [`to_jsonb(${alias}.*)`];
    for (let start = 0; start < blobs.length; start += JSON_PAIRS_PER_CALL) {
      const pairs = blobs
        .slice(start, start + JSON_PAIRS_PER_CALL)
        .map((name) => `${literal(name)}, upper(encode(${alias}.${quoteIdent(name)}, 'hex'))`);
      parts.push(`jsonb_build_object(${pairs.join(', ')})`);
    }
    return `(${parts.join(' || ')})`;
  };
}

/** Our objects and the synced tables, known once `install` ran. */
export class Catalog {
  names!: ObjectNames;
  private readonly entities = new Map<string, PreparedEntity>();
  private targets: EntityTarget[] = [];
  /**
   * The DDL event trigger is installed: an ALTER TABLE of a synced table
   * wakes every node at once. Without it (no superuser to create it) the
   * store looks for schema changes on its safety poll.
   */
  followsDdl = false;

  constructor(
    /** The app's pool. The store borrows clients from it and never ends it. */
    readonly pool: Pool,
  ) {}

  /** A synced table by entity name. */
  entity(name: string): PreparedEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised`);
    return entity;
  }

  /**
   * Create what is missing, migrate old bookkeeping, replace the capture
   * function and (re)install the triggers. Several nodes may start at once:
   * CREATE … IF NOT EXISTS is not safe against itself, and trigger
   * replacement and the migration must not interleave, so it all runs under
   * one advisory lock.
   */
  async install(targets: EntityTarget[]): Promise<TableSchema[]> {
    return transaction(this.pool, async (client) => {
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:init'))`);
      const { rows } = await client.query<{ schema: string }>('SELECT current_schema() AS schema');
      const schemaName = rows[0]?.schema;
      if (!schemaName) throw new Error('rhtmx-sync: no current schema (check search_path)');
      const q = (name: string) => `${quoteIdent(schemaName)}.${quoteIdent(name)}`;
      const names = Object.fromEntries(Object.entries(OBJECTS).map(([role, name]) => [role, q(name)])) as ObjectNames;
      this.names = names;
      const legacyClients = q(LEGACY_FIELD_CLIENTS_TABLE);
      const found = await client.query<{ missing: boolean; legacy: boolean; outcomes: boolean }>(
        `SELECT to_regclass($1) IS NULL OR to_regclass($2) IS NULL OR to_regclass($3) IS NULL AS missing,
                to_regclass($4) IS NOT NULL AS legacy, to_regclass($5) IS NOT NULL AS outcomes`,
        [names.log, names.clients, names.meta, legacyClients, names.outcomes],
      );
      // Only when something is missing: CREATE INDEX locks the log table even when the index exists,
      // and a node starting must not queue up behind (and then block) the app's writers.
      if (found.rows[0]?.missing) {
        await client.query(tablesDdl(names));
        // Versions start above 0: 0 means "no snapshot yet" to clients, so a table synced before its
        // first write must still hand out a cursor they can continue from.
        await client.query(`SELECT setval(${literal(names.sequence)}, 1)`);
        await client.query(`INSERT INTO ${names.meta} (key, value) VALUES ('log_start', 1) ON CONFLICT (key) DO NOTHING`);
      }
      // Added after the other tables: a database from before it gets just this one.
      if (!found.rows[0]?.outcomes) await client.query(outcomesDdl(names));
      if (found.rows[0]?.legacy) await migrateFieldClients(client, names.clients, legacyClients);
      await client.query(captureFunctionDdl(names));
      await client.query(truncateFunctionDdl(names));
      this.followsDdl = await installDdlTrigger(client, names);
      const prepared: PreparedEntity[] = [];
      for (const target of targets) {
        const entity = await introspect(client, target);
        await installTrigger(client, entity, names.capture);
        await installTruncateTrigger(client, entity, names.captureTruncate);
        prepared.push(entity);
      }
      // A table whose shape differs from the one recorded (migrated while no node ran) gets a new horizon.
      await recordShapes(client, names, prepared);
      this.targets = targets;
      for (const entity of prepared) this.entities.set(entity.schema.entity, entity);
      return prepared.map((entity) => entity.schema);
    });
  }

  /**
   * Follow DDL made by anyone (a migration, psql, another node): introspect
   * the synced tables again. Those whose shape differs from what this catalog
   * serves get, under the install lock and in one transaction, their triggers
   * made to match (capture, TRUNCATE, and `reinstall`'s: the field trigger),
   * and a new must-refetch horizon and their new fingerprint unless another
   * node recorded that shape already; from then on they are served with their new columns.
   * Returns the tables whose shape changed since this catalog last saw them.
   */
  async refresh(reinstall: (client: PoolClient, schema: TableSchema) => Promise<void>): Promise<SchemaRefresh> {
    const result: SchemaRefresh = { changed: [], failed: [] };
    // A look without locks first: most wake-ups (a reconnect, a poll) change nothing.
    const moved: EntityTarget[] = [];
    const client = await this.pool.connect();
    try {
      for (const target of this.targets) {
        try {
          const prepared = await introspect(client, target);
          if (prepared.fingerprint !== this.entities.get(target.entity)?.fingerprint) moved.push(target);
        } catch (error) {
          result.failed.push(error);
        }
      }
    } finally {
      client.release();
    }
    if (moved.length === 0) return result;
    const found = await transaction(this.pool, async (client) => {
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:init'))`);
      const found: PreparedEntity[] = [];
      for (const target of moved) found.push(await introspect(client, target));
      // Each step leaves a trigger that already matches alone, so a node that comes second changes nothing
      // (and one that started with the old shape mends what it installed).
      for (const prepared of found) {
        await installTrigger(client, prepared, this.names.capture);
        await installTruncateTrigger(client, prepared, this.names.captureTruncate);
        await reinstall(client, prepared.schema);
      }
      const recorded = await recordedShapes(client, this.names, found);
      await recordShapes(
        client,
        this.names,
        found.filter((prepared) => recorded.get(prepared.schema.entity) !== prepared.fingerprint),
      );
      return found;
    });
    for (const prepared of found) {
      this.entities.set(prepared.schema.entity, prepared);
      result.changed.push(prepared.schema);
    }
    return result;
  }
}

/** Meta key of an entity's recorded shape. */
const shapeKey = (entity: string): string => `shape:${entity}`;

/** The recorded fingerprint of each table's shape (absent: never recorded). */
async function recordedShapes(client: PoolClient, names: ObjectNames, found: PreparedEntity[]): Promise<Map<string, number>> {
  const { rows } = await client.query<{ key: string; value: string }>(`SELECT key, value::text FROM ${names.meta} WHERE key = ANY ($1)`, [
    found.map((prepared) => shapeKey(prepared.schema.entity)),
  ]);
  return new Map(rows.map((row) => [row.key.slice('shape:'.length), Number(row.value)]));
}

/**
 * Persist each table's fingerprint; those that differ from the recorded one
 * (clients may hold rows of the old shape) get one new version as their
 * must-refetch horizon (`pruned_through:<entity>`, which `retainedSince`
 * reads and cursors count). The version is claimed like a writer claims one,
 * holding an xid and the log's RowExclusiveLock first (horizon.ts), so no
 * cursor passes it before this transaction commits: every cursor handed out
 * before is below it. A table seen for the first time only records its shape.
 */
/**
 * Give these entities one new version as their must-refetch horizon, claimed
 * like a writer claims one (an xid and the log's RowExclusiveLock first,
 * horizon.ts), so no cursor passes it before the transaction commits: every
 * cursor handed out before is below it.
 */
export async function raiseHorizon(client: PoolClient, names: ObjectNames, entities: readonly string[]): Promise<number> {
  await client.query('SELECT pg_current_xact_id()');
  await client.query(`LOCK TABLE ${names.log} IN ROW EXCLUSIVE MODE`);
  const { rows } = await client.query<{ horizon: string }>(`SELECT nextval(${literal(names.sequence)})::text AS horizon`);
  await client.query(
    `INSERT INTO ${names.meta} AS m (key, value)
       SELECT prefix || entity, $2::bigint FROM unnest($1::text[]) AS entity, unnest(ARRAY['pruned_through:', 'raised:']) AS prefix
       ON CONFLICT (key) DO UPDATE SET value = GREATEST(m.value, EXCLUDED.value)`,
    [entities, rows[0]?.horizon],
  );
  return Number(rows[0]?.horizon);
}

async function recordShapes(client: PoolClient, names: ObjectNames, found: PreparedEntity[]): Promise<void> {
  if (found.length === 0) return;
  const recorded = await recordedShapes(client, names, found);
  const changed = found.filter((prepared) => {
    const before = recorded.get(prepared.schema.entity);
    return before !== undefined && before !== prepared.fingerprint;
  });
  if (changed.length > 0)
    await raiseHorizon(
      client,
      names,
      changed.map((prepared) => prepared.schema.entity),
    );
  await client.query(
    `INSERT INTO ${names.meta} (key, value) SELECT k, v FROM unnest($1::text[], $2::bigint[]) AS s(k, v)
       ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`,
    [found.map((prepared) => shapeKey(prepared.schema.entity)), found.map((prepared) => String(prepared.fingerprint))],
  );
}

/**
 * The event trigger that wakes every node after an ALTER TABLE of a synced
 * table (one carrying our capture trigger): NOTIFY on our channel with
 * SCHEMA_NOTICE, sent when the migration commits. It never fails the app's
 * DDL. Creating an event trigger needs a superuser: without one, this returns
 * false and the store looks for changes on its poll instead.
 */
async function installDdlTrigger(client: PoolClient, names: ObjectNames): Promise<boolean> {
  const existing = await client.query('SELECT 1 FROM pg_event_trigger WHERE evtname = $1', [DDL_TRIGGER_NAME]);
  await client.query('SAVEPOINT rhtmx_ddl');
  try {
    await client.query(`
      CREATE OR REPLACE FUNCTION ${names.ddlNotify}() RETURNS event_trigger LANGUAGE plpgsql AS $rhtmx$
      BEGIN
        IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c JOIN pg_trigger t ON t.tgrelid = c.objid
                    WHERE c.classid = 'pg_class'::regclass AND t.tgname = ${literal(TRIGGER_NAME)}) THEN
          PERFORM pg_notify(${literal(NOTIFY_CHANNEL)}, ${literal(SCHEMA_NOTICE)});
        END IF;
      EXCEPTION WHEN OTHERS THEN
        -- Never fail a migration: one wake-up too many costs an introspection.
        PERFORM pg_notify(${literal(NOTIFY_CHANNEL)}, ${literal(SCHEMA_NOTICE)});
      END $rhtmx$`);
    if (existing.rowCount === 0) {
      await client.query(
        `CREATE EVENT TRIGGER ${quoteIdent(DDL_TRIGGER_NAME)} ON ddl_command_end WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION ${names.ddlNotify}()`,
      );
    }
    await client.query('RELEASE SAVEPOINT rhtmx_ddl');
    return true;
  } catch {
    await client.query('ROLLBACK TO SAVEPOINT rhtmx_ddl; RELEASE SAVEPOINT rhtmx_ddl');
    return existing.rowCount !== null && existing.rowCount > 0;
  }
}

/**
 * Field pushes once kept their exactly-once records in a table of their own;
 * they now share the clients table under `fieldClientKey(client_id)`. A row
 * already there (a node on the new version wrote it) keeps the greater
 * mutation id, so a retry of either is still a duplicate.
 */
async function migrateFieldClients(client: PoolClient, clients: string, legacy: string): Promise<void> {
  const [prefix, suffix] = fieldClientKey('\u0000').split('\u0000');
  await client.query(
    `INSERT INTO ${clients} AS c (client_id, last_mutation_id, updated_at)
       SELECT $1 || client_id || $2, last_mutation_id, updated_at FROM ${legacy}
       ON CONFLICT (client_id) DO UPDATE SET last_mutation_id = GREATEST(c.last_mutation_id, EXCLUDED.last_mutation_id),
                                            updated_at = GREATEST(c.updated_at, EXCLUDED.updated_at)`,
    [prefix ?? '', suffix ?? ''],
  );
  await client.query(`DROP TABLE ${legacy}`);
}

function tablesDdl({ log, clients, meta, sequence }: ObjectNames): string {
  const index = (suffix: string) => quoteIdent(`${LOG_TABLE}_${suffix}`);
  return `
    CREATE SEQUENCE IF NOT EXISTS ${sequence} AS bigint CACHE 1;
    CREATE TABLE IF NOT EXISTS ${log} (
      version bigint PRIMARY KEY DEFAULT nextval(${literal(sequence)}),
      entity text NOT NULL, entity_id text NOT NULL, action text NOT NULL, data jsonb, hlc bigint NOT NULL, client_id text,
      txid xid8 NOT NULL DEFAULT pg_current_xact_id(), created_at timestamptz NOT NULL DEFAULT now()
    );
    ALTER SEQUENCE ${sequence} OWNED BY ${log}.version;
    CREATE INDEX IF NOT EXISTS ${index('entity')} ON ${log} (entity, version);
    CREATE INDEX IF NOT EXISTS ${index('row')} ON ${log} (entity, entity_id, version);
    CREATE INDEX IF NOT EXISTS ${index('age')} ON ${log} (created_at);
    CREATE TABLE IF NOT EXISTS ${clients} (
      client_id text PRIMARY KEY, last_mutation_id bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS ${meta} (key text PRIMARY KEY, value bigint NOT NULL);
  `;
}

/** Each recent mutation's outcome per client key, replayed to a retry (written in the push transaction). */
function outcomesDdl({ outcomes }: ObjectNames): string {
  return `CREATE TABLE IF NOT EXISTS ${outcomes} (
      client_id text NOT NULL, mutation_id bigint NOT NULL, outcome_json jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (client_id, mutation_id)
    )`;
}

/** Replaced on every start (no table lock), so an upgraded engine's triggers run the new body. */
function captureFunctionDdl({ log, sequence, capture }: ObjectNames): string {
  return `
    CREATE OR REPLACE FUNCTION ${capture}() RETURNS trigger LANGUAGE plpgsql AS $rhtmx$
    DECLARE
      -- TG_ARGV: entity name, primary key column, then the bytea columns (logged as hex).
      v_entity text := TG_ARGV[0];
      v_key text := TG_ARGV[1];
      v_client text := NULLIF(current_setting('${CLIENT_SETTING}', true), '');
      v_hlc bigint := COALESCE(NULLIF(current_setting('${HLC_SETTING}', true), '')::bigint,
                               floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint * 4096);
      -- Taken before nextval: readers rely on a writer's xid existing before its version.
      v_txid xid8 := pg_current_xact_id();
      v_data jsonb; v_old jsonb;
      v_old_id text; v_new_id text; v_hex text;
    BEGIN
      IF TG_OP <> 'INSERT' THEN
        v_old := to_jsonb(OLD);
      END IF;
      IF TG_OP <> 'DELETE' THEN
        v_data := to_jsonb(NEW);
      END IF;
      -- The key column was renamed and the engine has not re-installed this trigger yet (it follows
      -- ALTER TABLE within moments): the table's primary key now, so no write fails meanwhile.
      IF NOT COALESCE(v_data, v_old) ? v_key THEN
        SELECT a.attname INTO v_key FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = TG_RELID AND i.indisprimary AND i.indnatts = 1;
      END IF;
      v_old_id := v_old ->> v_key;
      IF TG_OP <> 'DELETE' THEN
        FOR i IN 2 .. TG_NARGS - 1 LOOP
          -- A bytea column dropped or renamed since the trigger was installed: nothing to encode.
          CONTINUE WHEN NOT v_data ? TG_ARGV[i];
          EXECUTE format('SELECT upper(encode(($1).%I, ''hex''))', TG_ARGV[i]) INTO v_hex USING NEW;
          v_data := jsonb_set(v_data, ARRAY[TG_ARGV[i]], COALESCE(to_jsonb(v_hex), 'null'::jsonb));
        END LOOP;
        v_new_id := v_data ->> v_key;
      END IF;
      -- A delete, or a primary key change (the old id disappears).
      IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND v_old_id IS DISTINCT FROM v_new_id) THEN
        INSERT INTO ${log} (version, entity, entity_id, action, data, hlc, client_id, txid)
        VALUES (nextval(${literal(sequence)}), v_entity, v_old_id, 'delete', NULL, v_hlc, v_client, v_txid);
      END IF;
      IF TG_OP <> 'DELETE' THEN
        INSERT INTO ${log} (version, entity, entity_id, action, data, hlc, client_id, txid)
        VALUES (nextval(${literal(sequence)}), v_entity, v_new_id,
                CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END, v_data, v_hlc, v_client, v_txid);
      END IF;
      -- A wake-up only: listeners re-read the log (payloads are capped and lost while disconnected).
      PERFORM pg_notify('${NOTIFY_CHANNEL}', '');
      RETURN NULL;
    END
    $rhtmx$;
  `;
}

async function introspect(client: PoolClient, target: EntityTarget): Promise<PreparedEntity> {
  const { rows: info } = await client.query<{
    schema: string;
    relation: string;
    kind: string;
    name: string;
    type: string;
    category: string;
    not_null: boolean;
    has_default: boolean;
    in_key: boolean;
  }>(
    `SELECT n.nspname AS schema, c.relname AS relation, c.relkind AS kind, a.attname AS name, COALESCE(base.typname, t.typname) AS type,
            COALESCE(base.typcategory, t.typcategory) AS category, a.attnotnull AS not_null, (a.atthasdef OR a.attidentity <> '') AS has_default,
            EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY (i.indkey)) AS in_key
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type base ON t.typtype = 'd' AND base.oid = t.typbasetype
      WHERE c.oid = COALESCE(to_regclass($1), CASE WHEN strpos($2, '.') > 0 THEN to_regclass($2) END)
      ORDER BY a.attnum`,
    [quoteIdent(target.table), target.table],
  );
  const relation = info[0];
  if (!relation) throw new Error(`rhtmx-sync: table ${target.table} does not exist`);
  if (relation.kind !== 'r' && relation.kind !== 'p') throw new Error(`rhtmx-sync: ${target.table} is not a table (triggers need a table)`);
  const keys = info.filter((column) => column.in_key);
  const primaryKey = target.primaryKey ?? (keys.length === 1 ? keys[0]?.name : undefined);
  if (!primaryKey) throw new Error(`rhtmx-sync: table ${target.table} needs a single-column primary key (or set primaryKey)`);
  const keyInfo = info.find((column) => column.name === primaryKey);
  if (!keyInfo) throw new Error(`rhtmx-sync: primary key ${primaryKey} is not a column of ${target.table}`);
  const columns = new Map<string, PgColumn>();
  for (const column of info) {
    columns.set(column.name, {
      category: column.category,
      schema: {
        name: column.name,
        type: postgresColumnType(column.type, column.category),
        nullable: !column.not_null && column.name !== primaryKey,
        primaryKey: column.name === primaryKey,
      },
    });
  }
  const schema: TableSchema = {
    entity: target.entity,
    table: target.table,
    primaryKey,
    columns: [...columns.values()].map((column) => column.schema),
  };
  return {
    schema,
    fingerprint: shapeFingerprint(
      schema,
      info.map((column) => column.type),
    ),
    table: `${quoteIdent(relation.schema)}.${quoteIdent(relation.relation)}`,
    key: quoteIdent(primaryKey),
    keyIsInteger: columns.get(primaryKey)?.schema.type === 'integer',
    keyHasDefault: keyInfo.has_default,
    columns,
    rowJson: rowJsonBuilder(schema),
    idText: (alias) => `(to_jsonb(${alias}.${quoteIdent(primaryKey)}) #>> '{}')`,
  };
}

/**
 * TRUNCATE fires no row triggers. A statement trigger BEFORE it, while the
 * rows still exist, logs one delete per row (same sequence, xid and wake-up as
 * the row trigger), so every client drops them like any other delete and the
 * field bookkeeping records their tombstones.
 */
function truncateFunctionDdl({ log, sequence, captureTruncate }: ObjectNames): string {
  return `
    CREATE OR REPLACE FUNCTION ${captureTruncate}() RETURNS trigger LANGUAGE plpgsql AS $rhtmx$
    DECLARE
      v_client text := NULLIF(current_setting('${CLIENT_SETTING}', true), '');
      v_hlc bigint := COALESCE(NULLIF(current_setting('${HLC_SETTING}', true), '')::bigint,
                               floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint * 4096);
      v_txid xid8 := pg_current_xact_id();
    BEGIN
      EXECUTE format(
        'INSERT INTO ${log} (version, entity, entity_id, action, data, hlc, client_id, txid)
           SELECT nextval(${literal(sequence).replaceAll("'", "''")}), $1, to_jsonb(t) ->> $2, ''delete'', NULL, $3, $4, $5 FROM %s t',
        TG_RELID::regclass)
        USING TG_ARGV[0], TG_ARGV[1], v_hlc, v_client, v_txid;
      PERFORM pg_notify('${NOTIFY_CHANNEL}', '');
      RETURN NULL;
    END $rhtmx$`;
}

/** (Re)install the TRUNCATE trigger (cheap to check, so only when missing or different). */
async function installTruncateTrigger(client: PoolClient, entity: PreparedEntity, capture: string): Promise<void> {
  const args = [entity.schema.entity, entity.schema.primaryKey];
  const existing = await client.query<{ args: Buffer; ours: boolean }>(
    `SELECT tgargs AS args, tgfoid = $3::regproc AS ours FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2`,
    [entity.table, TRUNCATE_TRIGGER_NAME, capture],
  );
  const current = existing.rows[0];
  if (current?.ours && Buffer.compare(current.args, Buffer.from(args.map((arg) => `${arg}\0`).join(''), 'utf8')) === 0) return;
  const trigger = quoteIdent(TRUNCATE_TRIGGER_NAME);
  await client.query(`DROP TRIGGER IF EXISTS ${trigger} ON ${entity.table}`);
  await client.query(
    `CREATE TRIGGER ${trigger} BEFORE TRUNCATE ON ${entity.table} FOR EACH STATEMENT EXECUTE FUNCTION ${capture}(${args.map(literal).join(', ')})`,
  );
}

/** (Re)install the capture trigger unless an identical one is there (replacing it locks the table). */
async function installTrigger(client: PoolClient, entity: PreparedEntity, capture: string): Promise<void> {
  const args = [
    entity.schema.entity,
    entity.schema.primaryKey,
    ...entity.schema.columns.filter((c) => c.type === 'blob').map((c) => c.name),
  ];
  const existing = await client.query<{ args: Buffer; type: number; ours: boolean }>(
    `SELECT tgargs AS args, tgtype::int AS type, tgfoid = $3::regproc AS ours
       FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2`,
    [entity.table, TRIGGER_NAME, capture],
  );
  const current = existing.rows[0];
  const wanted = Buffer.from(args.map((arg) => `${arg}\0`).join(''), 'utf8');
  if (current?.ours && current.type === TRIGGER_TYPE && Buffer.compare(current.args, wanted) === 0) return;
  const trigger = quoteIdent(TRIGGER_NAME);
  await client.query(`DROP TRIGGER IF EXISTS ${trigger} ON ${entity.table}`);
  await client.query(
    `CREATE TRIGGER ${trigger} AFTER INSERT OR UPDATE OR DELETE ON ${entity.table}
       FOR EACH ROW EXECUTE FUNCTION ${capture}(${args.map(literal).join(', ')})`,
  );
}
