/**
 * The soak's database, seen from outside the servers: a SQLite file in a temp
 * folder or a throw-away PostgreSQL database, plus read-only views of the
 * final `todos` table and the change log for the checks.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { SyncEngine } from '../src/engine.js';

/** A todo as compared between server and clients: `done` a boolean, a missing `updated_at` is null. */
export interface TodoRow {
  id: string;
  title: string;
  done: boolean;
  updated_at: string | null;
}

/** One entry of `_rhtmx_sync_log` for `todos`. */
export interface LogEntry {
  version: number;
  id: string;
  action: 'create' | 'update' | 'delete';
  /** The row's title after the write (the writer's tag); null for deletes. */
  title: string | null;
  clientId: string | null;
}

export interface SoakDatabase {
  store: 'sqlite' | 'postgres';
  /** DATABASE_URL for the demo server. */
  url: string;
  /** Current rows of `todos`, in id order. */
  rows(): Promise<TodoRow[]>;
  /**
   * The whole change log of `todos`, oldest first: a copy kept by a trigger
   * (`keepLog`), since `cleanup` prunes the real one during the run.
   */
  log(): Promise<LogEntry[]>;
  /** Start copying every log entry into `_soak_log` (once the first node made the log). */
  keepLog(): Promise<void>;
  /** `engine.cleanup(0, { clientDays })` from an engine of the soak's own: everything superseded, and idle client records, go. */
  cleanup(clientDays: number): Promise<number>;
  /** A migration by another process while the servers run: `ALTER TABLE todos ADD COLUMN <name> TEXT`. */
  addColumn(name: string): Promise<void>;
  dispose(): Promise<void>;
}

const LOG_COLUMNS = 'version, entity, entity_id, action, data, client_id';

/** Normalise a row from any source (server table, device replica, browser) for comparison. */
export function normaliseRow(row: Record<string, unknown>): TodoRow {
  const done = row.done;
  return {
    id: String(row.id),
    title: String(row.title ?? ''),
    done: done === true || done === 1 || done === '1' || done === 'true' || done === 't',
    updated_at: row.updated_at === undefined || row.updated_at === null ? null : String(row.updated_at),
  };
}

/** Byte order, as SQLite sorts text and as `COLLATE "C"` does. */
export const byId = (a: { id: string }, b: { id: string }): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

type RawLog = { version: number | string; entity_id: string; action: LogEntry['action']; data: unknown; client_id: string | null };

function toEntry(row: RawLog): LogEntry {
  const data =
    typeof row.data === 'string' ? (JSON.parse(row.data) as Record<string, unknown>) : (row.data as Record<string, unknown> | null);
  return {
    version: Number(row.version),
    id: row.entity_id,
    action: row.action,
    title: data && typeof data.title === 'string' ? data.title : null,
    clientId: row.client_id,
  };
}

export function sqliteDatabase(): SoakDatabase {
  const dir = mkdtempSync(join(tmpdir(), 'rhtmx-soak-'));
  const path = join(dir, 'todo.db');
  let db: Database.Database | null = null;
  let cleaner: Promise<SyncEngine> | null = null;
  // Opened lazily: the demo creates the file and the table on its first start.
  const open = () => {
    db ??= new Database(path, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    return db;
  };
  return {
    store: 'sqlite',
    url: path,
    async rows() {
      return (open().prepare('SELECT id, title, done, updated_at FROM todos ORDER BY id').all() as Record<string, unknown>[]).map(
        normaliseRow,
      );
    },
    async log() {
      return (
        open()
          .prepare(`SELECT version, entity_id, action, data, client_id FROM _soak_log WHERE entity = 'todos' ORDER BY version`)
          .all() as RawLog[]
      ).map(toEntry);
    },
    async keepLog() {
      const writer = new Database(path);
      try {
        writer.pragma('busy_timeout = 5000');
        writer.exec(`
          CREATE TABLE IF NOT EXISTS _soak_log AS SELECT ${LOG_COLUMNS} FROM _rhtmx_sync_log WHERE 0;
          CREATE UNIQUE INDEX IF NOT EXISTS _soak_log_version ON _soak_log (version);
          INSERT OR IGNORE INTO _soak_log SELECT ${LOG_COLUMNS} FROM _rhtmx_sync_log;
          CREATE TRIGGER IF NOT EXISTS _soak_log_copy AFTER INSERT ON _rhtmx_sync_log BEGIN
            INSERT OR IGNORE INTO _soak_log VALUES (NEW.version, NEW.entity, NEW.entity_id, NEW.action, NEW.data, NEW.client_id);
          END;`);
      } finally {
        writer.close();
      }
    },
    async addColumn(name) {
      const writer = new Database(path);
      try {
        writer.pragma('busy_timeout = 5000');
        writer.exec(`ALTER TABLE todos ADD COLUMN ${name} TEXT`);
      } finally {
        writer.close();
      }
    },
    async cleanup(clientDays) {
      cleaner ??= (async () => {
        const handle = new Database(path);
        handle.pragma('busy_timeout = 5000');
        const engine = new SyncEngine({ db: handle, entities: ['todos'] });
        await engine.ready;
        return engine;
      })();
      return (await cleaner).cleanup(0, { clientDays });
    },
    async dispose() {
      await (await cleaner?.catch(() => null))?.close();
      db?.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function postgresDatabase(adminUrl: string): Promise<SoakDatabase> {
  const name = `rhtmx_soak_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const parsed = new URL(adminUrl);
  parsed.pathname = `/${name}`;
  const url = parsed.toString();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on('error', () => {});
  let cleaner: Promise<{ engine: SyncEngine; handle: pg.Pool }> | null = null;
  return {
    store: 'postgres',
    url,
    async rows() {
      const { rows } = await pool.query('SELECT id, title, done, updated_at FROM todos ORDER BY id COLLATE "C"');
      return rows.map(normaliseRow);
    },
    async log() {
      const { rows } = await pool.query<RawLog>(
        `SELECT version, entity_id, action, data, client_id FROM _soak_log WHERE entity = 'todos' ORDER BY version`,
      );
      return rows.map(toEntry);
    },
    async keepLog() {
      await pool.query(`
        CREATE TABLE IF NOT EXISTS _soak_log AS SELECT ${LOG_COLUMNS} FROM _rhtmx_sync_log WITH NO DATA;
        CREATE UNIQUE INDEX IF NOT EXISTS _soak_log_version ON _soak_log (version);
        CREATE OR REPLACE FUNCTION _soak_log_copy() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO _soak_log VALUES (NEW.version, NEW.entity, NEW.entity_id, NEW.action, NEW.data, NEW.client_id) ON CONFLICT DO NOTHING;
          RETURN NULL;
        END $$;
        DROP TRIGGER IF EXISTS _soak_log_copy ON _rhtmx_sync_log;
        CREATE TRIGGER _soak_log_copy AFTER INSERT ON _rhtmx_sync_log FOR EACH ROW EXECUTE FUNCTION _soak_log_copy();
        INSERT INTO _soak_log SELECT ${LOG_COLUMNS} FROM _rhtmx_sync_log ON CONFLICT DO NOTHING;`);
    },
    async addColumn(name) {
      await pool.query(`ALTER TABLE todos ADD COLUMN ${name} text`);
    },
    async cleanup(clientDays) {
      cleaner ??= (async () => {
        const handle = new pg.Pool({ connectionString: url, max: 2 });
        handle.on('error', () => {});
        const engine = new SyncEngine({ db: handle, entities: ['todos'] });
        await engine.ready;
        return { engine, handle };
      })();
      return (await cleaner).engine.cleanup(0, { clientDays });
    },
    async dispose() {
      const own = await cleaner?.catch(() => null);
      await own?.engine.close();
      await own?.handle.end().catch(() => {});
      await pool.end().catch(() => {});
      const drop = new pg.Client({ connectionString: adminUrl });
      await drop.connect();
      try {
        await drop.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await drop.end();
      }
    },
  };
}
