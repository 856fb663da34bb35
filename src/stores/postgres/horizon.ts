/**
 * The cursor proof. Log versions come from a sequence, and sequence values
 * are taken before commit, so commits land out of order: a reader that sees
 * version 6 committed may not yet see version 5, and a client that moved its
 * cursor to 6 would never get 5. Reading only rows whose writer's xid is
 * below the snapshot's xmin is *not* enough: an old transaction (low xid) may
 * take a high version after a young one (high xid, still running) took a low
 * one. So a reader proves a version horizon instead (see `VersionHorizon`):
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
import type { PoolClient } from 'pg';
import type { Catalog } from './schema.js';
import { transaction } from './transaction.js';

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
export class VersionHorizon {
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

/** A read under the proof: its result and where it stands. */
export interface HorizonRead<T> {
  result: T;
  /** The highest logged version at or below the horizon: the cursor this read may hand out. */
  cursor: number;
  horizon: number;
  /** The sequence's last value when the read began (committed or not). */
  claimed: number;
}

/** Runs reads under the proof; the only code that reads the log for clients. */
export class HorizonReader {
  private readonly horizon = new VersionHorizon();
  private closed = false;
  /** Resolves close() once the last read in flight is done. */
  private drained: (() => void) | null = null;

  constructor(
    private readonly catalog: Catalog,
    /** Told after each read whether claimed versions are not yet proved (someone must read again soon). */
    private readonly onPending: (pending: boolean) => void,
  ) {}

  get isClosed(): boolean {
    return this.closed;
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
  async read<T>(read: (client: PoolClient, cursor: number) => Promise<T>): Promise<HorizonRead<T>> {
    if (this.closed) throw new Error('rhtmx-sync: the PostgreSQL store is closed');
    const { log, meta, sequence } = this.catalog.names;
    let claimed = 0;
    this.horizon.begin();
    try {
      return await transaction(
        this.catalog.pool,
        async (client) => {
          const snapshot = await client.query<{ xmax: string; xip: string[] }>(SNAPSHOT_SQL);
          const row = snapshot.rows[0];
          if (!row) throw new Error('rhtmx-sync: no snapshot');
          const horizon = this.horizon.resolve({ xmax: BigInt(row.xmax), running: new Set(row.xip.map(BigInt)) });
          this.onPending(claimed > horizon);
          const named = await client.query<{ cursor: string }>(
            `SELECT GREATEST(
               (SELECT max(version) FROM ${log} WHERE version <= $1),
               (SELECT max(value) FROM ${meta} WHERE key LIKE 'pruned\\_through:%' AND value <= $1),
               (SELECT value FROM ${meta} WHERE key = 'log_start' AND value <= $1),
               0)::text AS cursor`,
            [horizon],
          );
          const cursor = Number(named.rows[0]?.cursor ?? 0);
          return { result: await read(client, cursor), cursor, horizon, claimed };
        },
        {
          // Order matters: the sequence, then the log's writers, then (BEGIN) the snapshot.
          before: async (client) => {
            const { rows } = await client.query<{ claimed: string }>(claimedVersionSql(sequence));
            claimed = Number(rows[0]?.claimed ?? 0);
            if (this.horizon.wants(claimed)) {
              const writers = await client.query<{ xids: string[] }>(LOG_WRITERS_SQL, [log]);
              this.horizon.add(claimed, (writers.rows[0]?.xids ?? []).map(BigInt));
            }
          },
          begin: 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
        },
      );
    } finally {
      this.horizon.end();
      if (this.closed && this.horizon.idle) this.drained?.();
    }
  }

  /**
   * Prove a starting horizon, so a node started while writers are busy does
   * not begin at 0. Waits briefly for in-flight transactions to end; falls
   * back to the horizon an earlier process persisted.
   */
  async establish(): Promise<void> {
    const { pool, names } = this.catalog;
    const persisted = await pool.query<{ value: string }>(`SELECT value FROM ${names.meta} WHERE key = 'safe_version'`);
    this.horizon.raiseBaseline(Number(persisted.rows[0]?.value ?? 0));
    const deadline = Date.now() + 2000;
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      const { horizon, claimed } = await this.read(async () => undefined);
      if (horizon >= claimed) {
        await pool.query(
          `INSERT INTO ${names.meta} (key, value) VALUES ('safe_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(${names.meta}.value, EXCLUDED.value)`,
          [horizon],
        );
        return;
      }
      if (Date.now() > deadline) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  /** Refuse new reads and wait (at most 5 s) for those in flight, so the app can end its pool right after. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.horizon.idle) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5000);
      this.drained = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** The sequence's last value: non-transactional, so it counts versions of uncommitted writers too. */
export function claimedVersionSql(sequence: string): string {
  return `SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS claimed FROM ${sequence}`;
}
