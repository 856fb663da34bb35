/**
 * The row every benchmark moves: one table, `items`, the same shape for our
 * engine, the raw floors and the peers (PouchDB documents carry the same
 * fields), so every comparison moves the same bytes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export const ITEMS_SQL = `CREATE TABLE items (
  id INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL,
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  done BOOLEAN NOT NULL DEFAULT 0,
  updated_at TEXT NOT NULL
)`;

export const INSERT_ITEM = 'INSERT INTO items (id, seq, title, body, done, updated_at) VALUES (?, ?, ?, ?, ?, ?)';

export interface Item {
  id: number;
  seq: number;
  title: string;
  body: string;
  done: boolean;
  updated_at: string;
}

const BODY = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod';

/** Row `i`: about 150 bytes of JSON, a typical todo-like record. */
export function makeItem(i: number, seq = i): Item {
  return {
    id: i,
    seq,
    title: `Item number ${i}`,
    body: BODY,
    done: i % 3 === 0,
    updated_at: new Date(1_700_000_000_000 + i * 1000).toISOString(),
  };
}

/** Positional parameters for INSERT_ITEM (SQLite stores booleans as 0/1). */
export function itemParams(item: Item): [number, number, string, string, number, string] {
  return [item.id, item.seq, item.title, item.body, item.done ? 1 : 0, item.updated_at];
}

export interface BenchDb {
  db: Database.Database;
  path: string;
  dispose(): void;
}

/** A fresh SQLite file (WAL) holding an empty `items` table. */
export function freshDb(): BenchDb {
  const dir = mkdtempSync(join(tmpdir(), 'rhtmx-bench-'));
  const path = join(dir, 'bench.db');
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec(ITEMS_SQL);
  return {
    db,
    path,
    dispose() {
      try {
        db.close();
      } catch {}
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
