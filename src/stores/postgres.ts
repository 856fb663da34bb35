/**
 * PostgreSQL store on a `pg` Pool.
 *
 * Change capture is done by one plpgsql trigger function installed on every
 * synced table, so writes from the engine, app code, psql and other nodes are
 * logged alike. Several engine processes can share one database: each runs
 * this store, each LISTENs for a payload-free wake-up and re-reads the log.
 *
 * The hard part is the cursor. Log versions come from a sequence, and
 * sequence values are taken before commit, so commits land out of order: a
 * reader that sees version 6 committed may not yet see version 5, and a
 * client that moved its cursor to 6 would never get 5. Reading only rows
 * whose writer's xid is below the snapshot's xmin is *not* enough: an old
 * transaction (low xid) may take a high version after a young one (high xid,
 * still running) took a low one. So a reader proves a version horizon
 * instead (see `VersionHorizon`):
 *
 * 1. It reads the sequence's last value L. Every version up to L was taken
 *    inside the capture trigger, by a writer that already had its xid and
 *    already held a RowExclusiveLock on the log table (both are taken before
 *    `nextval`, and the lock is held until the writer's transaction ends).
 * 2. Then it lists the xids of the transactions holding that lock (one
 *    pg_locks scan): every writer of a version up to L is either finished by
 *    now or in this list.
 * 3. In any later snapshot in which none of those xids is still running,
 *    every version up to L is visible or never will be: L is safe from then on.
 *
 * Reads serve only versions up to the highest safe L and never return a
 * cursor past it. A write is delivered once every transaction that was
 * writing the log when it was read has ended: a session that wrote a synced
 * table and then sits "idle in transaction" stalls delivery of newer writes
 * until it ends (by design: it might still commit a lower version).
 * Transactions that never wrote a synced table never hold anything back.
 */
import { randomUUID } from 'node:crypto';
import type { Client, Pool, PoolClient } from 'pg';
import { quoteIdent } from '../core/config.js';
import { SyncError } from '../core/errors.js';
import { type Change, type ChangeAction, type ColumnSchema, ErrorCode, type Row } from '../core/protocol.js';
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

/** The change log table (same name as on SQLite). */
export const LOG_TABLE = '_rhtmx_sync_log';
const CLIENTS_TABLE = '_rhtmx_sync_clients';
const META_TABLE = '_rhtmx_sync_meta';
const VERSION_SEQUENCE = '_rhtmx_sync_version';
const CAPTURE_FUNCTION = '_rhtmx_sync_capture';
const TRIGGER_NAME = '_rhtmx_sync';
/** The NOTIFY channel every capture trigger signals; the payload is always empty. */
export const NOTIFY_CHANNEL = 'rhtmx_sync';
/** `application_name` of the LISTEN connection, so operators (and tests) can find it in pg_stat_activity. */
export const LISTEN_APPLICATION_NAME = 'rhtmx-sync-listen';
/** Transaction-local settings a push uses to stamp its log rows. */
export const CLIENT_SETTING = 'rhtmx.client_id';
export const HLC_SETTING = 'rhtmx.hlc';
/** Row-level AFTER INSERT OR UPDATE OR DELETE, as pg_trigger.tgtype encodes it. */
const TRIGGER_TYPE = 1 | 4 | 8 | 16;
/** The read's snapshot: xids at or above xmax, or listed in xip, were still running when it was taken. */
const SNAPSHOT_SQL = `
  SELECT pg_snapshot_xmax(s)::text AS xmax, ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x) AS xip
    FROM pg_current_snapshot() s`;

/**
 * Xids (widened to 64 bits next to the current xmax: live xids are within
 * 2^31 of it) of every transaction holding a RowExclusiveLock on the log
 * table ($1). One materialised pg_locks scan, so both lock rows of a
 * transaction come from the same instant.
 */
const LOG_WRITERS_SQL = `
  WITH locks AS MATERIALIZED (SELECT * FROM pg_locks),
       ref AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS x)
  SELECT COALESCE(array_agg(DISTINCT
           (ref.x + ((t.transactionid::text::numeric - ref.x % 4294967296 + 6442450944) % 4294967296 - 2147483648))::text), '{}') AS xids
    FROM locks r
    JOIN locks t ON t.virtualtransaction = r.virtualtransaction
                AND t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
    CROSS JOIN ref
   WHERE r.locktype = 'relation' AND r.relation = $1::regclass
     AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND r.mode = 'RowExclusiveLock' AND r.granted`;

/** jsonb_build_object takes at most 100 arguments. */
const JSON_PAIRS_PER_CALL = 50;

export interface PostgresStoreOptions {
  /**
   * Safety poll interval, ms: how often the store checks the log even without
   * a NOTIFY (a missed notification must never strand a change). Default 1000.
   */
  pollMs?: number;
  /** Called with errors of the background LISTEN connection and poll (they are retried). */
  onError?: (error: unknown) => void;
}

interface PgColumn {
  schema: ColumnSchema;
  /** pg_type.typcategory: 'A' for arrays. */
  category: string;
}

interface PreparedEntity {
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
}

interface LogRow {
  version: string;
  entity: string;
  entity_id: string;
  action: ChangeAction;
  data: Row | null;
  hlc: string;
  client_id: string | null;
}

/** Maps a PostgreSQL type (pg_type.typname and typcategory) to the wire type clients coerce to. */
export function postgresColumnType(typname: string, category: string): ColumnSchema['type'] {
  if (category === 'A') return 'json';
  switch (typname) {
    case 'int2':
    case 'int4':
    case 'int8':
      return 'integer';
    case 'float4':
    case 'float8':
    case 'numeric':
      return 'number';
    case 'bool':
      return 'boolean';
    case 'json':
    case 'jsonb':
      return 'json';
    case 'bytea':
      return 'blob';
    default:
      return 'text';
  }
}

const literal = (value: string): string => `'${value.replaceAll("'", "''")}'`;

/** A snapshot as the horizon needs it. */
interface SnapshotXids {
  xmax: bigint;
  running: ReadonlySet<bigint>;
}

/**
 * The highest log version a reader may serve, proved from candidates. A
 * candidate `{ version: L, writers }` records that when it was made, every
 * writer of a version up to L had ended or was one of `writers`. It is safe
 * in any later snapshot in which none of `writers` is running, and stays safe
 * in every snapshot after that.
 */
class VersionHorizon {
  /** Safe for every snapshot taken from now on. */
  private baseline = 0;
  /** Not yet proved (or proved only for snapshots newer than some read still in flight). */
  private candidates: Array<{ version: number; writers: bigint[] }> = [];
  private readsInFlight = 0;

  begin(): void {
    this.readsInFlight++;
  }

  end(): void {
    this.readsInFlight--;
  }

  get idle(): boolean {
    return this.readsInFlight === 0;
  }

  /** Start from a horizon proved by an earlier process (persisted in the meta table). */
  raiseBaseline(version: number): void {
    if (version > this.baseline) this.baseline = version;
    this.candidates = this.candidates.filter((candidate) => candidate.version > this.baseline);
  }

  /** Whether proving `claimed` needs a new candidate (none made so far covers it). */
  wants(claimed: number): boolean {
    return claimed > this.baseline && !this.candidates.some((candidate) => candidate.version >= claimed);
  }

  add(version: number, writers: bigint[]): void {
    this.candidates.push({ version, writers });
  }

  /** The safe horizon in `snapshot`. */
  resolve(snapshot: SnapshotXids): number {
    const ended = (xid: bigint) => xid < snapshot.xmax && !snapshot.running.has(xid);
    let horizon = this.baseline;
    for (const candidate of this.candidates) {
      if (candidate.version > horizon && candidate.writers.every(ended)) horizon = candidate.version;
    }
    if (this.readsInFlight <= 1) {
      // No read with an older snapshot is running: what is final for this
      // snapshot is final for every later one.
      this.raiseBaseline(horizon);
    } else if (this.candidates.length > 64) {
      // Keep memory bounded under constant concurrent reads; older reads then fall back to the baseline.
      this.candidates = this.candidates.filter((c) => c.version >= horizon);
    }
    return horizon;
  }
}

/** PostgreSQL implementation of the Store contract. */
export class PostgresStore implements Store {
  /** Field-level bookkeeping on the same database (loaded only when field sync is on). */
  async openFieldStore(): Promise<FieldStore> {
    const { PostgresFieldStore } = await import('./postgres-fields.js');
    return new PostgresFieldStore(this.pool, this);
  }

  private readonly entities = new Map<string, PreparedEntity>();
  private readonly pollMs: number;
  private readonly onError: (error: unknown) => void;
  private readonly horizon = new VersionHorizon();
  /** Quoted names of our objects, qualified with the schema they live in. */
  private names!: { log: string; clients: string; meta: string; sequence: string; capture: string };
  private watchers = new Set<() => void>();
  private listener: Client | null = null;
  private listenTimer: NodeJS.Timeout | null = null;
  private listenBackoffMs = 100;
  private pollTimer: NodeJS.Timeout | null = null;
  private recheckTimer: NodeJS.Timeout | null = null;
  private recheckDelayMs = 5;
  /** Claimed versions not yet proved safe exist: someone must read again soon. */
  private pending = false;
  private lastPolledClaim = -1;
  private closed = false;
  /** Resolves close() once the last read in flight is done. */
  private drained: (() => void) | null = null;

  constructor(
    /** The app's pool. The store borrows clients from it and never ends it. */
    readonly pool: Pool,
    options: PostgresStoreOptions = {},
  ) {
    this.pollMs = options.pollMs ?? 1000;
    this.onError = options.onError ?? (() => {});
  }

  // ---------------------------------------------------------------- init

  async init(targets: EntityTarget[]): Promise<TableSchema[]> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    const schemas: TableSchema[] = [];
    try {
      await client.query('BEGIN');
      // Several nodes may start at once: CREATE ... IF NOT EXISTS is not safe
      // against itself, and trigger replacement must not interleave.
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:init'))`);
      const { rows } = await client.query<{ schema: string }>('SELECT current_schema() AS schema');
      const schemaName = rows[0]?.schema;
      if (!schemaName) throw new Error('rhtmx-sync: no current schema (check search_path)');
      const q = (name: string) => `${quoteIdent(schemaName)}.${quoteIdent(name)}`;
      this.names = {
        log: q(LOG_TABLE),
        clients: q(CLIENTS_TABLE),
        meta: q(META_TABLE),
        sequence: q(VERSION_SEQUENCE),
        capture: q(CAPTURE_FUNCTION),
      };
      const missing = await client.query<{ missing: boolean }>(
        'SELECT to_regclass($1) IS NULL OR to_regclass($2) IS NULL OR to_regclass($3) IS NULL AS missing',
        [this.names.log, this.names.clients, this.names.meta],
      );
      // Only when something is missing: CREATE INDEX locks the log table even when the index exists,
      // and a node starting must not queue up behind (and then block) the app's writers.
      if (missing.rows[0]?.missing) {
        await client.query(this.tablesDdl());
        // Versions start above 0: 0 means "no snapshot yet" to clients, so a table synced before its
        // first write must still hand out a cursor they can continue from.
        await client.query(`SELECT setval('${this.names.sequence.replaceAll("'", "''")}', 1)`);
        await client.query(`INSERT INTO ${this.names.meta} (key, value) VALUES ('log_start', 1) ON CONFLICT (key) DO NOTHING`);
      }
      await client.query(this.captureFunctionDdl());
      for (const target of targets) {
        const prepared = await this.introspect(client, target);
        await this.installTrigger(client, prepared);
        this.entities.set(prepared.schema.entity, prepared);
        schemas.push(prepared.schema);
      }
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch((rollbackError: Error) => {
        broken = rollbackError;
      });
      throw error;
    } finally {
      client.release(broken);
    }
    await this.establishHorizon();
    return schemas;
  }

  private tablesDdl(): string {
    const { log, clients, meta, sequence } = this.names;
    const index = (suffix: string) => quoteIdent(`${LOG_TABLE}_${suffix}`);
    return `
      CREATE SEQUENCE IF NOT EXISTS ${sequence} AS bigint CACHE 1;
      CREATE TABLE IF NOT EXISTS ${log} (
        version bigint PRIMARY KEY DEFAULT nextval('${sequence.replaceAll("'", "''")}'),
        entity text NOT NULL,
        entity_id text NOT NULL,
        action text NOT NULL,
        data jsonb,
        hlc bigint NOT NULL,
        client_id text,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        created_at timestamptz NOT NULL DEFAULT now()
      );
      ALTER SEQUENCE ${sequence} OWNED BY ${log}.version;
      CREATE INDEX IF NOT EXISTS ${index('entity')} ON ${log} (entity, version);
      CREATE INDEX IF NOT EXISTS ${index('row')} ON ${log} (entity, entity_id, version);
      CREATE INDEX IF NOT EXISTS ${index('age')} ON ${log} (created_at);
      CREATE TABLE IF NOT EXISTS ${clients} (
        client_id text PRIMARY KEY,
        last_mutation_id bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE TABLE IF NOT EXISTS ${meta} (key text PRIMARY KEY, value bigint NOT NULL);
    `;
  }

  /** Replaced on every start (no table lock), so an upgraded engine's triggers run the new body. */
  private captureFunctionDdl(): string {
    const { log, sequence, capture } = this.names;
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
        v_data jsonb;
        v_old_id text;
        v_new_id text;
        v_hex text;
      BEGIN
        IF TG_OP <> 'INSERT' THEN
          v_old_id := to_jsonb(OLD) ->> v_key;
        END IF;
        IF TG_OP <> 'DELETE' THEN
          v_data := to_jsonb(NEW);
          FOR i IN 2 .. TG_NARGS - 1 LOOP
            EXECUTE format('SELECT upper(encode(($1).%I, ''hex''))', TG_ARGV[i]) INTO v_hex USING NEW;
            v_data := jsonb_set(v_data, ARRAY[TG_ARGV[i]], COALESCE(to_jsonb(v_hex), 'null'::jsonb));
          END LOOP;
          v_new_id := v_data ->> v_key;
        END IF;
        -- A delete, or a primary key change (the old id disappears).
        IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND v_old_id IS DISTINCT FROM v_new_id) THEN
          INSERT INTO ${log} (version, entity, entity_id, action, data, hlc, client_id, txid)
          VALUES (nextval('${sequence.replaceAll("'", "''")}'), v_entity, v_old_id, 'delete', NULL, v_hlc, v_client, v_txid);
        END IF;
        IF TG_OP <> 'DELETE' THEN
          INSERT INTO ${log} (version, entity, entity_id, action, data, hlc, client_id, txid)
          VALUES (nextval('${sequence.replaceAll("'", "''")}'), v_entity, v_new_id,
                  CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END, v_data, v_hlc, v_client, v_txid);
        END IF;
        -- A wake-up only: listeners re-read the log (payloads are capped and lost while disconnected).
        PERFORM pg_notify('${NOTIFY_CHANNEL}', '');
        RETURN NULL;
      END
      $rhtmx$;
    `;
  }

  private async introspect(client: PoolClient, target: EntityTarget): Promise<PreparedEntity> {
    const found = await client.query<{ oid: string; schema: string; name: string; kind: string }>(
      `SELECT c.oid::text AS oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = COALESCE(to_regclass($1), CASE WHEN strpos($2, '.') > 0 THEN to_regclass($2) END)`,
      [quoteIdent(target.table), target.table],
    );
    const relation = found.rows[0];
    if (!relation) throw new Error(`rhtmx-sync: table ${target.table} does not exist`);
    if (relation.kind !== 'r' && relation.kind !== 'p') {
      throw new Error(`rhtmx-sync: ${target.table} is not a table (triggers need a table)`);
    }
    const info = await client.query<{ name: string; type: string; category: string; not_null: boolean; has_default: boolean }>(
      `SELECT a.attname AS name, COALESCE(base.typname, t.typname) AS type, COALESCE(base.typcategory, t.typcategory) AS category,
              a.attnotnull AS not_null, (a.atthasdef OR a.attidentity <> '') AS has_default
         FROM pg_attribute a
         JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_type base ON t.typtype = 'd' AND base.oid = t.typbasetype
        WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum`,
      [relation.oid],
    );
    const keys = await client.query<{ name: string }>(
      `SELECT a.attname AS name FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = $1::oid AND i.indisprimary`,
      [relation.oid],
    );
    const primaryKey = target.primaryKey ?? (keys.rows.length === 1 ? keys.rows[0]?.name : undefined);
    if (!primaryKey) {
      throw new Error(`rhtmx-sync: table ${target.table} needs a single-column primary key (or set primaryKey)`);
    }
    const keyInfo = info.rows.find((column) => column.name === primaryKey);
    if (!keyInfo) throw new Error(`rhtmx-sync: primary key ${primaryKey} is not a column of ${target.table}`);
    const columns = new Map<string, PgColumn>();
    for (const column of info.rows) {
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
    const rowJson = rowJsonBuilder(schema);
    return {
      schema,
      table: `${quoteIdent(relation.schema)}.${quoteIdent(relation.name)}`,
      key: quoteIdent(primaryKey),
      keyIsInteger: columns.get(primaryKey)?.schema.type === 'integer',
      keyHasDefault: keyInfo.has_default,
      columns,
      rowJson,
      idText: (alias) => `(to_jsonb(${alias}.${quoteIdent(primaryKey)}) #>> '{}')`,
    };
  }

  /** (Re)install the capture trigger unless an identical one is there (replacing it locks the table). */
  private async installTrigger(client: PoolClient, entity: PreparedEntity): Promise<void> {
    const args = [
      entity.schema.entity,
      entity.schema.primaryKey,
      ...entity.schema.columns.filter((c) => c.type === 'blob').map((c) => c.name),
    ];
    const existing = await client.query<{ args: Buffer; type: number; ours: boolean }>(
      `SELECT tgargs AS args, tgtype::int AS type, tgfoid = $3::regproc AS ours
         FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2`,
      [entity.table, TRIGGER_NAME, `${this.names.capture}`],
    );
    const current = existing.rows[0];
    const wanted = Buffer.from(args.map((arg) => `${arg}\0`).join(''), 'utf8');
    if (current?.ours && current.type === TRIGGER_TYPE && Buffer.compare(current.args, wanted) === 0) return;
    const trigger = quoteIdent(TRIGGER_NAME);
    await client.query(`DROP TRIGGER IF EXISTS ${trigger} ON ${entity.table}`);
    await client.query(
      `CREATE TRIGGER ${trigger} AFTER INSERT OR UPDATE OR DELETE ON ${entity.table}
         FOR EACH ROW EXECUTE FUNCTION ${this.names.capture}(${args.map(literal).join(', ')})`,
    );
  }

  /**
   * Prove a starting horizon, so a node started while writers are busy does
   * not begin at 0. Waits briefly for in-flight transactions to end; falls
   * back to the horizon an earlier process persisted.
   */
  private async establishHorizon(): Promise<void> {
    const persisted = await this.pool.query<{ value: string }>(`SELECT value FROM ${this.names.meta} WHERE key = 'safe_version'`);
    this.horizon.raiseBaseline(Number(persisted.rows[0]?.value ?? 0));
    const deadline = Date.now() + 2000;
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      const { horizon, claimed } = await this.withHorizon(async () => undefined);
      if (horizon >= claimed) {
        await this.pool.query(
          `INSERT INTO ${this.names.meta} (key, value) VALUES ('safe_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(${this.names.meta}.value, EXCLUDED.value)`,
          [horizon],
        );
        return;
      }
      if (Date.now() > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  // ---------------------------------------------------------------- reads

  private entity(name: string): PreparedEntity {
    const entity = this.entities.get(name);
    if (!entity) throw new Error(`rhtmx-sync: entity ${name} is not initialised`);
    return entity;
  }

  /** The sequence's last value: non-transactional, so it counts versions of uncommitted writers too. */
  private async claimedVersion(client: PoolClient): Promise<number> {
    const { rows } = await client.query<{ claimed: string }>(
      `SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS claimed FROM ${this.names.sequence}`,
    );
    return Number(rows[0]?.claimed ?? 0);
  }

  /**
   * Run `read` in one REPEATABLE READ read-only transaction (one snapshot
   * for data and cursor) and hand it the cursor for that snapshot: the
   * highest logged version at or below the safe horizon. Versions of rolled
   * back writers are skipped by the sequence but never name a cursor, so a
   * batch that rolled back leaves the cursor where it was (as on SQLite).
   * Pruned tombstones still count: the cursor never moves back below a
   * pruned horizon (which would send fresh clients into reset after reset).
   */
  private async withHorizon<T>(
    read: (client: PoolClient, cursor: number) => Promise<T>,
  ): Promise<{ result: T; cursor: number; horizon: number; claimed: number }> {
    if (this.closed) throw new Error('rhtmx-sync: the PostgreSQL store is closed');
    this.horizon.begin();
    const client = await this.pool.connect().catch((error: unknown) => {
      this.horizon.end();
      throw error;
    });
    let broken: Error | undefined;
    try {
      // Order matters: the sequence, then the log's writers, then the snapshot.
      const claimed = await this.claimedVersion(client);
      if (this.horizon.wants(claimed)) {
        const { rows } = await client.query<{ xids: string[] }>(LOG_WRITERS_SQL, [this.names.log]);
        this.horizon.add(claimed, (rows[0]?.xids ?? []).map(BigInt));
      }
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const snapshot = await client.query<{ xmax: string; xip: string[] }>(SNAPSHOT_SQL);
      const row = snapshot.rows[0];
      if (!row) throw new Error('rhtmx-sync: no snapshot');
      const horizon = this.horizon.resolve({ xmax: BigInt(row.xmax), running: new Set(row.xip.map(BigInt)) });
      this.notePending(claimed > horizon);
      const named = await client.query<{ cursor: string }>(
        `SELECT GREATEST(
           (SELECT max(version) FROM ${this.names.log} WHERE version <= $1),
           (SELECT max(value) FROM ${this.names.meta} WHERE key LIKE 'pruned\\_through:%' AND value <= $1),
           (SELECT value FROM ${this.names.meta} WHERE key = 'log_start' AND value <= $1),
           0)::text AS cursor`,
        [horizon],
      );
      const cursor = Number(named.rows[0]?.cursor ?? 0);
      const result = await read(client, cursor);
      await client.query('COMMIT');
      return { result, cursor, horizon, claimed };
    } catch (error) {
      await client.query('ROLLBACK').catch((rollbackError: Error) => {
        broken = rollbackError;
      });
      throw error;
    } finally {
      client.release(broken);
      this.horizon.end();
      if (this.closed && this.horizon.idle) this.drained?.();
    }
  }

  async currentVersion(): Promise<number> {
    return (await this.withHorizon(async () => undefined)).cursor;
  }

  async readEntityLog(entity: string, since: number, limit: number): Promise<LogPage> {
    const { result } = await this.withHorizon(async (client, cursor) => {
      // A cursor from a node that is ahead of us: nothing we may serve yet.
      if (cursor <= since) return { changes: [], version: since, hasMore: false };
      const { rows } = await client.query<LogRow>(
        `SELECT version, entity, entity_id, action, data, hlc, client_id FROM ${this.names.log}
          WHERE entity = $1 AND version > $2 AND version <= $3 ORDER BY version LIMIT $4`,
        [entity, since, cursor, limit + 1],
      );
      return toPage(rows, limit, cursor);
    });
    return result;
  }

  async readLog(since: number, limit: number, entities?: readonly string[]): Promise<LogPage> {
    // The hub may finish a wake-up loop after the engine closed: nothing more to fan out.
    if (this.closed) return { changes: [], version: since, hasMore: false };
    const { result } = await this.withHorizon(async (client, cursor) => {
      // A cursor from a node that is ahead of us: nothing we may serve yet.
      if (cursor <= since) return { changes: [], version: since, hasMore: false };
      const { rows } = await client.query<LogRow>(
        `SELECT version, entity, entity_id, action, data, hlc, client_id FROM ${this.names.log}
          WHERE version > $1 AND version <= $2 ORDER BY version LIMIT $3`,
        [since, cursor, limit + 1],
      );
      const page = toPage(rows, limit, cursor);
      if (entities) {
        const wanted = new Set(entities);
        page.changes = page.changes.filter((change) => wanted.has(change.entity));
      }
      return page;
    });
    return result;
  }

  /** Bind an `after` key; integer keys must look like integers (the token is client-supplied). */
  private keyParam(entity: PreparedEntity, id: string): string {
    if (entity.keyIsInteger && !/^-?\d{1,19}$/.test(id)) throw new SyncError(ErrorCode.BadCursor, 'invalid snapshot token', 400);
    return id;
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage> {
    const entity = this.entity(entityName);
    const { table, key } = entity;
    const params: unknown[] = [entityName, limit + 1];
    if (after !== undefined) params.push(this.keyParam(entity, after));
    const sql = `SELECT ${entity.idText('t')} AS id, ${entity.rowJson('t')} AS data,
        COALESCE((SELECT l.version FROM ${this.names.log} l WHERE l.entity = $1 AND l.entity_id = ${entity.idText('t')}
                  ORDER BY l.version DESC LIMIT 1), 0) AS version
      FROM ${table} t ${after === undefined ? '' : `WHERE t.${key} > $3`} ORDER BY t.${key} LIMIT $2`;
    type SnapshotRow = { id: string; data: Row; version: string };
    let rows: SnapshotRow[];
    let version: number;
    if (atVersion !== undefined) {
      // Later pages: the cursor is pinned to the first page's; one statement is one snapshot.
      rows = (await this.pool.query<SnapshotRow>(sql, params)).rows;
      version = atVersion;
    } else {
      const read = await this.withHorizon(async (client) => (await client.query<SnapshotRow>(sql, params)).rows);
      rows = read.result;
      version = read.cursor;
    }
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    const changes: Change[] = rows.map((row) => ({
      entity: entityName,
      id: row.id,
      entity_id: row.id,
      action: 'create',
      data: row.data,
      version: Number(row.version),
    }));
    return { changes, version, after: hasMore ? changes[changes.length - 1]?.id : undefined };
  }

  async retainedSince(entity: string): Promise<number> {
    const { rows } = await this.pool.query<{ value: string }>(`SELECT value FROM ${this.names.meta} WHERE key = $1`, [
      `pruned_through:${entity}`,
    ]);
    return Number(rows[0]?.value ?? 0);
  }

  // ---------------------------------------------------------------- push

  async push(batch: PushBatch): Promise<AppliedChange[]> {
    const entity = this.entity(batch.schema.entity);
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const results = await this.pushIn(client, entity, batch);
        await client.query('COMMIT');
        return results;
      } catch (error) {
        await client.query('ROLLBACK').catch((rollbackError: Error) => {
          broken = rollbackError;
        });
        // Two pushes locking the same rows in opposite orders: PostgreSQL kills one; run it again.
        if (isRetryable(error) && attempt < 5) continue;
        throw error;
      } finally {
        client.release(broken);
      }
    }
  }

  private async pushIn(client: PoolClient, entity: PreparedEntity, batch: PushBatch): Promise<AppliedChange[]> {
    const lastApplied = batch.clientId === null ? null : await lockClient(client, this.names.clients, batch.clientId);
    // Logged rows carry the client id as the client knows it (the bookkeeping key may be per user).
    await client.query(`SELECT set_config('${CLIENT_SETTING}', $1, true)`, [batch.origin ?? batch.clientId ?? '']);
    // Lock every existing row of the batch now, in key order. Locked one by one in batch order, two
    // pushes (or a push and the app's own UPDATE) writing overlapping rows in different orders deadlock,
    // and PostgreSQL only breaks that after deadlock_timeout (1 s) by killing one of them.
    const ids = [...new Set(batch.changes.flatMap((change) => (change.id === null ? [] : [change.id])))];
    if (ids.length > 1) {
      await client.query('SAVEPOINT rhtmx_lock');
      try {
        await client.query(`SELECT 1 FROM ${entity.table} t WHERE t.${entity.key} = ANY($1) ORDER BY t.${entity.key} FOR UPDATE`, [ids]);
        await client.query('RELEASE SAVEPOINT rhtmx_lock');
      } catch (error) {
        // An id the key type refuses (e.g. text for an integer key): that change is rejected on its own below.
        if (!isChangeError(error)) throw error;
        await client.query('ROLLBACK TO SAVEPOINT rhtmx_lock');
      }
    }
    let highestMutation = lastApplied ?? -1;
    const results: AppliedChange[] = [];
    for (const [index, change] of batch.changes.entries()) {
      if (lastApplied !== null && change.mutationId !== null && change.mutationId <= lastApplied) {
        results.push(await this.duplicateResult(client, entity, change));
        continue;
      }
      results.push(await this.applyOne(client, entity, batch, change, index));
      if (change.mutationId !== null) highestMutation = Math.max(highestMutation, change.mutationId);
    }
    if (batch.clientId !== null && highestMutation > (lastApplied ?? -1)) {
      await client.query(`UPDATE ${this.names.clients} SET last_mutation_id = $2, updated_at = now() WHERE client_id = $1`, [
        batch.clientId,
        highestMutation,
      ]);
    }
    return results;
  }

  private async rowState(
    client: PoolClient,
    entity: PreparedEntity,
    id: string,
    baseVersion: number | null,
    lock: boolean,
  ): Promise<ServerRowState> {
    const row = await client.query<{ data: Row }>(
      `SELECT ${entity.rowJson('t')} AS data FROM ${entity.table} t WHERE t.${entity.key} = $1${lock ? ' FOR UPDATE' : ''}`,
      [id],
    );
    // A separate statement after the lock: under READ COMMITTED it sees the log of whoever held the row before us.
    const log = await client.query<{ version: string | null; hlc: string | null; base: Row | null }>(
      `SELECT last.version, last.hlc,
              (SELECT data FROM ${this.names.log} b WHERE b.entity = $1 AND b.entity_id = $2 AND b.version = $3) AS base
         FROM (SELECT 1) one LEFT JOIN LATERAL (
           SELECT version, hlc FROM ${this.names.log} WHERE entity = $1 AND entity_id = $2 ORDER BY version DESC LIMIT 1
         ) last ON true`,
      [entity.schema.entity, id, baseVersion],
    );
    const state = log.rows[0];
    return {
      row: row.rows[0]?.data ?? null,
      version: Number(state?.version ?? 0),
      hlc: Number(state?.hlc ?? 0),
      base: state?.base ?? null,
    };
  }

  private async duplicateResult(client: PoolClient, entity: PreparedEntity, change: ValidatedChange): Promise<AppliedChange> {
    // The original outcome is not stored; the server row is, and it is what the client must converge to.
    let state: ServerRowState | null = null;
    if (change.id !== null) {
      await client.query('SAVEPOINT rhtmx_change');
      try {
        state = await this.rowState(client, entity, change.id, null, false);
        await client.query('RELEASE SAVEPOINT rhtmx_change');
      } catch (error) {
        if (!isChangeError(error)) throw error;
        await client.query('ROLLBACK TO SAVEPOINT rhtmx_change');
      }
    }
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

  private async applyOne(
    client: PoolClient,
    entity: PreparedEntity,
    batch: PushBatch,
    change: ValidatedChange,
    index: number,
  ): Promise<AppliedChange> {
    const base = { mutationId: change.mutationId, id: change.id };
    // A savepoint per change: a constraint failure rejects this change only.
    for (let attempt = 1; ; attempt++) {
      await client.query('SAVEPOINT rhtmx_change');
      let server: ServerRowState = { row: null, version: 0, hlc: 0, base: null };
      try {
        if (change.id !== null) server = await this.rowState(client, entity, change.id, change.baseVersion, true);
        let decision: WriteDecision;
        try {
          decision = batch.decide(change, server, index);
        } catch (error) {
          if (error instanceof SyncError) throw error; // forbidden: the whole batch rolls back
          await client.query('RELEASE SAVEPOINT rhtmx_change');
          return { ...base, status: 'rejected', reason: `resolver failed: ${(error as Error).message}` };
        }
        if (decision.kind === 'reject') {
          await client.query('RELEASE SAVEPOINT rhtmx_change');
          return { ...base, status: 'rejected', reason: decision.reason, issues: decision.issues };
        }
        if (decision.kind === 'conflict') {
          await client.query('RELEASE SAVEPOINT rhtmx_change');
          return { ...base, status: 'conflict', reason: decision.reason, row: server.row, serverVersion: server.version };
        }
        await client.query(`SELECT set_config('${HLC_SETTING}', $1, true)`, [String(decision.hlc)]);
        const id = await this.write(client, entity, change.id, decision, server.row !== null);
        let version = server.version;
        let row: Row | null | undefined;
        if (id !== null) {
          const after = await client.query<{ version: string | null }>(
            `SELECT max(version) AS version FROM ${this.names.log} WHERE entity = $1 AND entity_id = $2`,
            [entity.schema.entity, id],
          );
          version = Number(after.rows[0]?.version ?? server.version);
          if (decision.merged) row = (await this.rowState(client, entity, id, null, false)).row;
        }
        await client.query('RELEASE SAVEPOINT rhtmx_change');
        return { ...base, id, status: 'applied', version, merged: decision.merged || undefined, row };
      } catch (error) {
        if (error instanceof SyncError || !isChangeError(error)) throw error;
        await client.query('ROLLBACK TO SAVEPOINT rhtmx_change');
        // Two creates of one id raced: the other committed first. Decide again against its row.
        if (attempt === 1 && (error as { code?: string }).code === '23505' && server.row === null && change.id !== null) continue;
        return { ...base, status: 'rejected', reason: describeWriteError(error, entity.schema.table) };
      }
    }
  }

  /** Runs the SQL for one decided write; returns the row id (database-assigned for keyless creates). */
  private async write(
    client: PoolClient,
    entity: PreparedEntity,
    id: string | null,
    decision: Extract<WriteDecision, { kind: 'write' }>,
    exists: boolean,
  ): Promise<string | null> {
    const { schema, table, key } = entity;
    if (decision.action === 'delete') {
      if (id !== null && exists) await client.query(`DELETE FROM ${table} WHERE ${key} = $1`, [id]);
      return id;
    }
    const names: string[] = [];
    const values: unknown[] = [];
    for (const [name, value] of Object.entries(decision.data)) {
      const column = entity.columns.get(name);
      if (!column || name === schema.primaryKey) continue;
      names.push(name);
      values.push(coerceValue(column, value));
    }
    if (decision.action === 'update' && exists) {
      if (names.length === 0 || id === null) return id;
      await client.query(
        `UPDATE ${table} SET ${names.map((name, index) => `${quoteIdent(name)} = $${index + 1}`).join(', ')} WHERE ${key} = $${names.length + 1}`,
        [...values, id],
      );
      return id;
    }
    let rowId = id;
    if (rowId === null && !entity.keyIsInteger && !entity.keyHasDefault) rowId = randomUUID();
    if (rowId !== null) {
      names.unshift(schema.primaryKey);
      values.unshift(rowId);
    }
    const returning = `RETURNING ${entity.idText(table)} AS id`;
    const sql =
      names.length === 0
        ? `INSERT INTO ${table} DEFAULT VALUES ${returning}`
        : `INSERT INTO ${table} (${names.map(quoteIdent).join(', ')}) VALUES (${names.map((_, index) => `$${index + 1}`).join(', ')}) ${returning}`;
    const { rows } = await client.query<{ id: string }>(sql, values);
    return rows[0]?.id ?? rowId;
  }

  async countRows(entity: string): Promise<number> {
    return this.count(this.entity(entity).table);
  }

  async logSize(): Promise<number> {
    return this.count(this.names.log);
  }

  /** Exact while small; past 100k rows the planner's estimate, so progress and metrics never scan a big table. */
  private async count(table: string): Promise<number> {
    const { rows } = await this.pool.query<{ size: string }>(
      `SELECT (CASE WHEN c.reltuples >= 100000 THEN c.reltuples::bigint ELSE (SELECT count(*) FROM ${table}) END)::text AS size
         FROM pg_class c WHERE c.oid = $1::regclass`,
      [table],
    );
    return Number(rows[0]?.size ?? 0);
  }

  // ---------------------------------------------------------------- cleanup

  async cleanup(olderThanMs: number): Promise<number> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:cleanup'))`);
      const { log, meta, clients } = this.names;
      // One statement: the horizon is exactly the newest tombstone it removed per entity.
      // Deleted rows' tombstones are the only entries whose loss a lagging client would notice;
      // older cursors get a reset instead.
      const { rows } = await client.query<{ removed: string }>(
        `WITH gone AS (
           DELETE FROM ${log} l WHERE l.created_at < to_timestamp($1::float8 / 1000) AND (l.action = 'delete' OR EXISTS (
             SELECT 1 FROM ${log} newer WHERE newer.entity = l.entity AND newer.entity_id = l.entity_id AND newer.version > l.version))
           RETURNING l.entity, l.version, l.action
         ), horizon AS (
           INSERT INTO ${meta} (key, value)
           SELECT 'pruned_through:' || entity, max(version) FROM gone WHERE action = 'delete' GROUP BY entity
           ON CONFLICT (key) DO UPDATE SET value = GREATEST(${meta}.value, EXCLUDED.value)
         )
         SELECT count(*)::text AS removed FROM gone`,
        [olderThanMs],
      );
      await client.query(`DELETE FROM ${clients} WHERE updated_at < to_timestamp($1::float8 / 1000)`, [olderThanMs]);
      await client.query('COMMIT');
      return Number(rows[0]?.removed ?? 0);
    } catch (error) {
      await client.query('ROLLBACK').catch((rollbackError: Error) => {
        broken = rollbackError;
      });
      throw error;
    } finally {
      client.release(broken);
    }
  }

  // ---------------------------------------------------------------- watch

  watch(onChange: () => void): () => void {
    this.watchers.add(onChange);
    if (this.watchers.size === 1 && !this.closed) this.startWatching();
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0) this.stopWatching();
    };
  }

  private fire(): void {
    for (const watcher of this.watchers) {
      try {
        watcher();
      } catch (error) {
        this.onError(error);
      }
    }
  }

  private startWatching(): void {
    void this.connectListener();
    this.pollTimer = setInterval(() => void this.poll(), this.pollMs);
    this.pollTimer.unref();
  }

  private stopWatching(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    if (this.recheckTimer) clearTimeout(this.recheckTimer);
    this.recheckTimer = null;
    if (this.listenTimer) clearTimeout(this.listenTimer);
    this.listenTimer = null;
    const listener = this.listener;
    this.listener = null;
    if (listener) void listener.end().catch(() => {});
  }

  /** A dedicated connection (not a pooled one: LISTEN holds it for good). */
  private async connectListener(): Promise<void> {
    this.listenTimer = null;
    if (this.closed || this.watchers.size === 0) return;
    const ClientClass = (this.pool as unknown as { Client: new (config: object) => Client }).Client;
    const client = new ClientClass({ ...this.pool.options, application_name: LISTEN_APPLICATION_NAME, keepAlive: true });
    this.listener = client;
    const lost = (error?: unknown) => {
      if (error) this.onError(error);
      if (this.listener !== client) return;
      this.listener = null;
      void client.end().catch(() => {});
      this.scheduleListenerReconnect();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    client.on('notification', () => this.fire());
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      if (this.listener !== client) {
        await client.end().catch(() => {});
        return;
      }
      this.listenBackoffMs = 100;
      // Whatever was committed while we were not listening sent its NOTIFY to nobody: catch up from the log.
      this.fire();
    } catch (error) {
      lost(error);
    }
  }

  private scheduleListenerReconnect(): void {
    if (this.closed || this.watchers.size === 0 || this.listenTimer) return;
    // Full jitter: many nodes losing the database at once must not reconnect in lockstep.
    const delay = this.listenBackoffMs / 2 + Math.random() * (this.listenBackoffMs / 2);
    this.listenBackoffMs = Math.min(this.listenBackoffMs * 2, 5000);
    this.listenTimer = setTimeout(() => void this.connectListener(), delay);
    this.listenTimer.unref();
  }

  /** Safety net: a missed NOTIFY (or one never sent) must not strand a change. */
  private async poll(): Promise<void> {
    if (this.closed) return;
    try {
      const { rows } = await this.pool.query<{ claimed: string }>(
        `SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS claimed FROM ${this.names.sequence}`,
      );
      const claimed = Number(rows[0]?.claimed ?? 0);
      if (claimed !== this.lastPolledClaim || this.pending) {
        this.lastPolledClaim = claimed;
        this.fire();
      }
    } catch (error) {
      this.onError(error);
    }
  }

  /**
   * After a read that could not prove every claimed version safe (a writer
   * was still in flight), read again soon: its commit may send no further
   * NOTIFY that concerns us (e.g. it was an unrelated transaction holding
   * xmin back). Backs off while the horizon stays behind.
   */
  private notePending(pending: boolean): void {
    this.pending = pending;
    if (!pending) {
      this.recheckDelayMs = 5;
      return;
    }
    if (this.recheckTimer || this.watchers.size === 0 || this.closed) return;
    const delay = this.recheckDelayMs;
    this.recheckDelayMs = Math.min(this.recheckDelayMs * 2, this.pollMs);
    this.recheckTimer = setTimeout(() => {
      this.recheckTimer = null;
      this.fire();
    }, delay);
    this.recheckTimer.unref();
  }

  /**
   * Stop watching and release the LISTEN connection; waits (briefly) for reads
   * in flight so the app can end its pool right after. The pool stays open: it is the app's.
   */
  async close(): Promise<void> {
    this.closed = true;
    const listener = this.listener;
    this.stopWatching();
    this.watchers.clear();
    if (listener) await listener.end().catch(() => {});
    if (!this.horizon.idle) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 5000);
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

/** Must run inside the read's transaction: the cursor comes from the same snapshot as the rows. */
function toPage(rows: LogRow[], limit: number, cursor: number): LogPage {
  const hasMore = rows.length > limit;
  if (hasMore) rows.length = limit;
  const changes = rows.map(toChange);
  const version = hasMore ? (changes[changes.length - 1] as Change).version : cursor;
  return { changes, version, hasMore };
}

function toChange(row: LogRow): Change {
  return {
    entity: row.entity,
    id: row.entity_id,
    entity_id: row.entity_id,
    action: row.action,
    data: row.data,
    version: Number(row.version),
    hlc: Number(row.hlc),
    client_id: row.client_id,
  };
}

/** Convert a validated wire value to what the column accepts (booleans as 0/1 for numbers, and so on). */
function coerceValue(column: PgColumn, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  if (column.category === 'A' && typeof value === 'string') {
    // Arrays arrive as JSON text; pg serialises a JS array to an array literal.
    try {
      const parsed: unknown = JSON.parse(value);
      if (Array.isArray(parsed)) return parsed;
    } catch {}
    return value;
  }
  switch (column.schema.type) {
    case 'boolean':
      return typeof value === 'number' ? value !== 0 : value;
    case 'integer':
    case 'number':
      return typeof value === 'boolean' ? Number(value) : value;
    case 'json':
      if (typeof value === 'string') {
        try {
          JSON.parse(value);
          return value;
        } catch {
          return JSON.stringify(value);
        }
      }
      return JSON.stringify(value);
    case 'blob':
      return typeof value === 'string' && /^(?:[0-9a-fA-F]{2})*$/.test(value) ? Buffer.from(value, 'hex') : value;
    default:
      return typeof value === 'boolean' ? String(value) : value;
  }
}

/** SQLSTATE classes that mean "this change is bad", as opposed to "the connection or transaction is gone". */
/**
 * SQL building a row's JSON from `<alias>`: to_jsonb, with blob columns as
 * upper-case hex (the same shape SQLite's triggers produce).
 */
export function rowJsonBuilder(schema: TableSchema): (alias: string) => string {
  const blobs = schema.columns.filter((column) => column.type === 'blob').map((column) => column.name);
  return (alias) => {
    if (blobs.length === 0) return `to_jsonb(${alias})`;
    const parts = [`to_jsonb(${alias})`];
    for (let start = 0; start < blobs.length; start += JSON_PAIRS_PER_CALL) {
      const pairs = blobs
        .slice(start, start + JSON_PAIRS_PER_CALL)
        .map((name) => `${literal(name)}, upper(encode(${alias}.${quoteIdent(name)}, 'hex'))`);
      parts.push(`jsonb_build_object(${pairs.join(', ')})`);
    }
    return `(${parts.join(' || ')})`;
  };
}

/**
 * Lock a client's exactly-once row (created when missing) and return its last
 * applied mutation id (-1 when none). The upsert's row lock makes concurrent
 * pushes of one client apply one after the other, and a retried push sees the
 * mutation id the first one recorded.
 */
export async function lockClient(client: PoolClient, table: string, clientId: string): Promise<number> {
  const { rows } = await client.query<{ last: string }>(
    `INSERT INTO ${table} (client_id, last_mutation_id) VALUES ($1, -1)
       ON CONFLICT (client_id) DO UPDATE SET client_id = EXCLUDED.client_id
       RETURNING last_mutation_id AS last`,
    [clientId],
  );
  return Number(rows[0]?.last ?? -1);
}

export function isChangeError(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || code.length !== 5) return false;
  if (isRetryable(error)) return false;
  // 22 data exception, 23 integrity constraint, 42 syntax/access (e.g. writing a generated column), P0 raised in a trigger.
  return ['22', '23', '42', 'P0', '2F', '39'].includes(code.slice(0, 2));
}

export function isRetryable(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === '40P01' || code === '40001';
}

/** Constraint messages name the column or constraint, which helps; anything else is not shown to clients. */
export function describeWriteError(error: unknown, table: string): string {
  const { code = '', column, constraint } = error as { code?: string; column?: string; constraint?: string };
  switch (code) {
    case '23502':
      return `NOT NULL constraint failed: ${table}.${column ?? '?'}`;
    case '23505':
      return `UNIQUE constraint failed: ${constraint ?? table}`;
    case '23503':
      return `FOREIGN KEY constraint failed: ${constraint ?? table}`;
    case '23514':
      return `CHECK constraint failed: ${constraint ?? table}`;
    case '22P02':
    case '22007':
    case '22008':
    case '22023':
      return 'datatype mismatch';
    case '22001':
      return 'value too long';
    case '22003':
      return 'value out of range';
    case '428C9':
      return 'cannot write a generated column';
    default:
      return code.startsWith('23') ? 'constraint failed' : 'write failed';
  }
}
