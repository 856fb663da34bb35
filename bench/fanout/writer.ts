/**
 * Writer process: app code in another process committing rows to the same
 * SQLite file as fast as it can (the engine finds them by polling its log,
 * as it does for any outside writer). The floor runs the same loop on a
 * fresh file without triggers.
 */
import Database from 'better-sqlite3';
import { now } from '../lib/clock.js';
import { serve } from '../lib/proc.js';
import { freshDb, INSERT_ITEM, itemParams, makeItem } from '../lib/rows.js';

function writeAll(db: Database.Database, rows: number, txSize: number): { start: number; end: number } {
  const insert = db.prepare(INSERT_ITEM);
  const insertMany = db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) insert.run(...itemParams(makeItem(i)));
  });
  const start = now();
  for (let from = 1; from <= rows; from += txSize) insertMany(from, Math.min(rows + 1, from + txSize));
  return { start, end: now() };
}

/** This process's connection to the engine's file (`one`). */
let own: Database.Database | null = null;

serve({
  /** Into the engine's database file (triggers installed by the engine). */
  write(args: { path: string; rows: number; txSize: number }) {
    const db = new Database(args.path);
    db.pragma('busy_timeout = 5000');
    try {
      return writeAll(db, args.rows, args.txSize);
    } finally {
      db.close();
    }
  },
  /** One row `seq` into the engine's file, as another process's app code would write it (no notify); returns its commit time. */
  one(args: { path: string; seq: number }) {
    own ??= new Database(args.path);
    own.pragma('busy_timeout = 5000');
    own.prepare(INSERT_ITEM).run(...itemParams(makeItem(args.seq)));
    return now();
  },
  close() {
    own?.close();
    own = null;
    return null;
  },
  /** The floor: a fresh WAL file, no triggers, nobody reading. */
  floor(args: { rows: number; txSize: number }) {
    const bench = freshDb();
    try {
      return writeAll(bench.db, args.rows, args.txSize);
    } finally {
      bench.dispose();
    }
  },
});
