/**
 * The demo's own data access: plain SQL on the app's table, exactly as an app
 * that never heard of rhtmx-sync would write it. The sync engine sees these
 * writes through its triggers, like writes from any other connection.
 */
import { randomBytes } from 'node:crypto';
import type BetterSqlite3 from 'better-sqlite3';
import type { Pool } from 'pg';

/** One row of the `todos` table, with `done` as a real boolean on both databases. */
export interface Todo {
  id: string;
  title: string;
  done: boolean;
  updated_at: string | null;
}

/** What a PATCH may change. */
export interface TodoPatch {
  title?: string;
  done?: boolean;
}

/** The `todos` table on SQLite or PostgreSQL. */
export interface TodoDatabase {
  readonly dialect: 'sqlite' | 'postgres';
  /** The driver handle the sync engine is given (`new SyncEngine({ db: handle })`). */
  readonly handle: BetterSqlite3.Database | Pool;
  /** Where the data lives, for the startup banner (passwords removed). */
  readonly location: string;
  list(): Promise<Todo[]>;
  /** How many todos there are, and how many are not done (the list's count line). */
  counts(): Promise<{ total: number; left: number }>;
  insert(title: string): Promise<Todo>;
  /** The updated row, or null when no row has this id. */
  update(id: string, patch: TodoPatch): Promise<Todo | null>;
  /** Whether a row was deleted. */
  remove(id: string): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * A UUID version 7: 48 bits of Unix milliseconds, then random bits. Sorting by
 * id therefore sorts by creation time, so the list keeps a stable order
 * without a created_at column (ids made elsewhere, e.g. offline or by hand,
 * simply sort by their own value).
 */
export function uuidv7(now = Date.now()): string {
  const bytes = randomBytes(16);
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = 0x70 | ((bytes[6] as number) & 0x0f);
  bytes[8] = 0x80 | ((bytes[8] as number) & 0x3f);
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * The title rule of the routes (1–200 characters after trimming) is also a CHECK: changes made offline
 * reach the table through the sync push, not through the routes, and the database refuses them the same way.
 */
const SQLITE_DDL = `CREATE TABLE IF NOT EXISTS todos (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 200),
  done BOOLEAN NOT NULL DEFAULT 0,
  updated_at TEXT
)`;

const POSTGRES_DDL = `CREATE TABLE IF NOT EXISTS todos (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL CHECK (length(trim(title)) BETWEEN 1 AND 200),
  done BOOLEAN NOT NULL DEFAULT false,
  updated_at TEXT
)`;

/** Rows written by hand (`sqlite3 todo.db "insert ..."`) may hold 0/1, 'true' or NULL: read them leniently. */
export function toTodo(row: Record<string, unknown>): Todo {
  const done = row.done;
  return {
    id: String(row.id),
    title: String(row.title ?? ''),
    done: done === true || done === 1 || done === 1n || done === '1' || done === 'true' || done === 't',
    updated_at: row.updated_at == null ? null : String(row.updated_at),
  };
}

/** Open `DATABASE_URL`: a `postgres://` URL, or a SQLite file path (default `./todo.db`). */
export async function openTodoDatabase(url: string): Promise<TodoDatabase> {
  if (/^postgres(ql)?:\/\//i.test(url)) return openPostgres(url);
  return openSqlite(url.replace(/^sqlite:(\/\/)?/i, ''));
}

async function openSqlite(path: string): Promise<TodoDatabase> {
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(path);
  // WAL lets the sync engine and other processes (the sqlite3 CLI) read while the app writes.
  db.pragma('journal_mode = WAL');
  db.pragma('busy_timeout = 5000');
  db.exec(SQLITE_DDL);
  const list = db.prepare('SELECT id, title, done, updated_at FROM todos ORDER BY id');
  const get = db.prepare('SELECT id, title, done, updated_at FROM todos WHERE id = ?');
  const insert = db.prepare('INSERT INTO todos (id, title, done, updated_at) VALUES (?, ?, 0, ?)');
  const update = db.prepare(
    'UPDATE todos SET title = coalesce(?, title), done = coalesce(?, done), updated_at = ? WHERE id = ? RETURNING id, title, done, updated_at',
  );
  const remove = db.prepare('DELETE FROM todos WHERE id = ?');
  const counts = db.prepare('SELECT count(*) AS total, count(*) FILTER (WHERE NOT done) AS left FROM todos');
  return {
    dialect: 'sqlite',
    handle: db,
    location: path,
    async list() {
      return list.all().map((row) => toTodo(row as Record<string, unknown>));
    },
    async counts() {
      return counts.get() as { total: number; left: number };
    },
    async insert(title) {
      const id = uuidv7();
      insert.run(id, title, new Date().toISOString());
      return toTodo(get.get(id) as Record<string, unknown>);
    },
    async update(id, patch) {
      const done = patch.done === undefined ? null : patch.done ? 1 : 0;
      const row = update.get(patch.title ?? null, done, new Date().toISOString(), id);
      return row ? toTodo(row as Record<string, unknown>) : null;
    },
    async remove(id) {
      return remove.run(id).changes > 0;
    },
    async close() {
      db.close();
    },
  };
}

async function openPostgres(url: string): Promise<TodoDatabase> {
  const { default: pg } = await import('pg');
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  // An idle client losing its connection (server restart) must not crash the demo.
  pool.on('error', (error) => console.error('todo: postgres pool error:', error.message));
  try {
    await pool.query(POSTGRES_DDL);
  } catch (error) {
    // Two demo nodes starting at once can race on CREATE TABLE IF NOT EXISTS; the loser finds the table made.
    const code = (error as { code?: string }).code;
    if (code !== '23505' && code !== '42P07') throw error;
  }
  const columns = 'id, title, done, updated_at';
  const location = (() => {
    try {
      const parsed = new URL(url);
      parsed.password = '';
      return parsed.toString();
    } catch {
      return 'postgres';
    }
  })();
  return {
    dialect: 'postgres',
    handle: pool,
    location,
    async list() {
      // COLLATE "C" sorts ids bytewise, like SQLite, whatever the database's locale.
      const { rows } = await pool.query(`SELECT ${columns} FROM todos ORDER BY id COLLATE "C"`);
      return rows.map(toTodo);
    },
    async counts() {
      const { rows } = await pool.query('SELECT count(*)::int AS total, (count(*) FILTER (WHERE NOT done))::int AS left FROM todos');
      return rows[0] as { total: number; left: number };
    },
    async insert(title) {
      const { rows } = await pool.query(`INSERT INTO todos (id, title, done, updated_at) VALUES ($1, $2, false, $3) RETURNING ${columns}`, [
        uuidv7(),
        title,
        new Date().toISOString(),
      ]);
      return toTodo(rows[0]);
    },
    async update(id, patch) {
      const { rows } = await pool.query(
        `UPDATE todos SET title = coalesce($1, title), done = coalesce($2, done), updated_at = $3 WHERE id = $4 RETURNING ${columns}`,
        [patch.title ?? null, patch.done ?? null, new Date().toISOString(), id],
      );
      return rows[0] ? toTodo(rows[0]) : null;
    },
    async remove(id) {
      const { rowCount } = await pool.query('DELETE FROM todos WHERE id = $1', [id]);
      return (rowCount ?? 0) > 0;
    },
    async close() {
      await pool.end();
    },
  };
}
