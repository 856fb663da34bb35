/**
 * Reads of the change log: log pages, snapshots, the retained horizon and
 * counts. Each read runs in one transaction, so data and cursor come from
 * the same WAL snapshot (never two separate, non-atomic steps).
 */
import type Database from 'better-sqlite3';
import type { Change, ChangeAction, Row } from '../../core/protocol.js';
import { type LogPage, type PrunedHorizon, type SnapshotJson, type SnapshotPage, snapshotPage } from '../../core/store.js';
import { type Catalog, LOG_TABLE, META_TABLE } from './schema.js';

interface LogRow {
  version: number;
  entity: string;
  entity_id: string;
  action: ChangeAction;
  data: string | null;
  hlc: number;
  client_id: string | null;
}

/** The log and snapshot reads of SqliteStore. */
export class LogReader {
  private readonly entityLog;
  private readonly allLog;
  private readonly countLog;
  private pruned: Database.Statement | undefined;

  constructor(private readonly catalog: Catalog) {
    const columns = 'version, entity, entity_id, action, data, hlc, client_id';
    const db = catalog.db;
    this.entityLog = db.prepare(`SELECT ${columns} FROM ${LOG_TABLE} WHERE entity = ? AND version > ? ORDER BY version LIMIT ?`);
    this.allLog = db.prepare(`SELECT ${columns} FROM ${LOG_TABLE} WHERE version > ? ORDER BY version LIMIT ?`);
    this.countLog = db.prepare(`SELECT COUNT(*) FROM ${LOG_TABLE}`).pluck();
  }

  /** Changes with `version > since` (of one entity, or all), and the cursor after them. */
  readLog(since: number, limit: number, entity?: string): LogPage {
    return this.catalog.db.transaction((): LogPage => {
      const rows = (entity === undefined ? this.allLog.all(since, limit + 1) : this.entityLog.all(entity, since, limit + 1)) as LogRow[];
      const hasMore = rows.length > limit;
      if (hasMore) rows.length = limit;
      const version = hasMore ? (rows[rows.length - 1] as LogRow).version : this.catalog.currentVersion();
      return { changes: rows.map(toChange), version, hasMore };
    })();
  }

  /** A page of current rows ordered by key; the first page fixes the version the snapshot is consistent with. */
  snapshot(entityName: string, limit: number, after?: string, atVersion?: number): SnapshotPage {
    const entity = this.catalog.entity(entityName);
    return this.catalog.db.transaction((): SnapshotPage => {
      const version = atVersion ?? this.catalog.currentVersion();
      return snapshotPage(entity.page(limit + 1, after), limit, version);
    })();
  }

  /** `snapshot` as the JSON text of its changes, built by the database. */
  snapshotJson(entityName: string, limit: number, after?: string, atVersion?: number): SnapshotJson {
    const entity = this.catalog.entity(entityName);
    return this.catalog.db.transaction(
      (): SnapshotJson => ({ version: atVersion ?? this.catalog.currentVersion(), ...entity.pageJson(limit, after) }),
    )();
  }

  /** Lowest cursor still served incrementally: the newest delete cleanup pruned for this entity. */
  retainedSince(entity: string): number {
    return (this.catalog.s.getMeta.get(`pruned_through:${entity}`) as number | undefined) ?? 0;
  }

  /** Entities whose horizon is above `since`: entries past that cursor were pruned (or a schema change asks for a refetch). */
  prunedAbove(since: number): PrunedHorizon[] {
    // Prepared once: the hub asks every 250 ms and on every catch-up.
    this.pruned ??= this.catalog.db.prepare(
      `SELECT substr(p.key, 16) AS entity, p.value AS horizon, COALESCE(r.value = p.value, 0) AS raised, COALESCE(t.value, 0) AS prunedAt
         FROM ${META_TABLE} p LEFT JOIN ${META_TABLE} r ON r.key = 'raised:' || substr(p.key, 16)
         LEFT JOIN ${META_TABLE} t ON t.key = 'pruned_at:' || substr(p.key, 16)
        WHERE p.key LIKE 'pruned\\_through:%' ESCAPE '\\' AND p.value > ?`,
    );
    const rows = this.pruned.all(since) as Array<{ entity: string; horizon: number; raised: number; prunedAt: number }>;
    return rows.map((row) => ({ ...row, raised: row.raised === 1 }));
  }

  /** Rows in an entity's table, or in the log when no entity is given. */
  count(entity?: string): number {
    if (entity === undefined) return this.countLog.get() as number;
    const { table } = this.catalog.entity(entity);
    return this.catalog.db.prepare(`SELECT COUNT(*) FROM ${table}`).pluck().get() as number;
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
