/**
 * What clients read: log pages and snapshots, each with its cursor taken in
 * the same snapshot as its rows (horizon.ts proves the cursor), the retained
 * horizon, and counts for progress and metrics.
 */
import { SyncError } from '../../core/errors.js';
import { type Change, type ChangeAction, ErrorCode, type Row } from '../../core/protocol.js';
import { changesJson, type LogPage, type PrunedHorizon, type SnapshotJson, type SnapshotPage, snapshotPage } from '../../core/store.js';
import type { HorizonReader } from './horizon.js';
import { type Catalog, keyFits } from './schema.js';

interface LogRow {
  version: string;
  entity: string;
  entity_id: string;
  action: ChangeAction;
  data: Row | null;
  hlc: string;
  client_id: string | null;
}

const LOG_COLUMNS = 'version, entity, entity_id, action, data, hlc, client_id';

/** The read side of PostgresStore. */
export class LogReader {
  constructor(
    private readonly catalog: Catalog,
    private readonly reader: HorizonReader,
  ) {}

  /** Highest version a reader may safely use as a cursor now. */
  async currentVersion(): Promise<number> {
    return (await this.reader.read(async () => undefined)).cursor;
  }

  /** Changes with `version > since` (of one entity, or of all), in one snapshot with their cursor. */
  async readLog(since: number, limit: number, entity?: string): Promise<LogPage> {
    const { result } = await this.reader.read(async (client, cursor) => {
      // A cursor from a node that is ahead of us: nothing we may serve yet.
      if (cursor <= since) return { changes: [], version: since, hasMore: false };
      const params: unknown[] = [since, cursor, limit + 1];
      if (entity !== undefined) params.push(entity);
      const { rows } = await client.query<LogRow>(
        `SELECT ${LOG_COLUMNS} FROM ${this.catalog.names.log}
          WHERE version > $1 AND version <= $2 ${entity === undefined ? '' : 'AND entity = $4'} ORDER BY version LIMIT $3`,
        params,
      );
      return toPage(rows, limit, cursor);
    });
    return result;
  }

  /** Current rows of an entity by primary key after `after`; the first page (no `atVersion`) takes the cursor. */
  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage> {
    const entity = this.catalog.entity(entityName);
    const { table, key } = entity;
    const params: unknown[] = [entityName, limit + 1];
    if (after !== undefined) {
      // The token is client-supplied.
      if (!keyFits(entity, after)) throw new SyncError(ErrorCode.BadCursor, 'invalid snapshot token', 400);
      params.push(after);
    }
    const sql = `SELECT ${entity.idText('t')} AS id, ${entity.rowJson('t')}::text AS data,
        COALESCE((SELECT l.version FROM ${this.catalog.names.log} l WHERE l.entity = $1 AND l.entity_id = ${entity.idText('t')}
                  ORDER BY l.version DESC LIMIT 1), 0) AS version
      FROM ${table} t ${after === undefined ? '' : `WHERE t.${key} > $3`} ORDER BY t.${key} LIMIT $2`;
    type Read = { id: string; data: string; version: string };
    let rows: Read[];
    let version: number;
    if (atVersion !== undefined) {
      // Later pages: the cursor is pinned to the first page's; one statement is one snapshot.
      rows = (await this.catalog.pool.query<Read>(sql, params)).rows;
      version = atVersion;
    } else {
      const read = await this.reader.read(async (client) => (await client.query<Read>(sql, params)).rows);
      rows = read.result;
      version = read.cursor;
    }
    return snapshotPage(
      rows.map((row) => ({ ...row, version: Number(row.version) })),
      limit,
      version,
    );
  }

  /** `snapshot` as the JSON text of its changes. */
  async snapshotJson(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotJson> {
    const page = await this.snapshot(entity, limit, after, atVersion);
    return { json: changesJson(entity, page), version: page.version, after: page.after };
  }

  /** Lowest cursor still served incrementally: the newest delete cleanup pruned for this entity. */
  async retainedSince(entity: string): Promise<number> {
    const { rows } = await this.catalog.pool.query<{ value: string }>(`SELECT value FROM ${this.catalog.names.meta} WHERE key = $1`, [
      `pruned_through:${entity}`,
    ]);
    return Number(rows[0]?.value ?? 0);
  }

  /** Entities whose horizon is above `since`: entries past that cursor were pruned (or a schema change asks for a refetch). */
  async prunedAbove(since: number): Promise<PrunedHorizon[]> {
    const { meta } = this.catalog.names;
    const { rows } = await this.catalog.pool.query<{ entity: string; horizon: string; raised: boolean; pruned_at: string }>(
      `SELECT substr(p.key, 16) AS entity, p.value AS horizon, COALESCE(r.value = p.value, false) AS raised, COALESCE(t.value, 0) AS pruned_at
         FROM ${meta} p LEFT JOIN ${meta} r ON r.key = 'raised:' || substr(p.key, 16)
         LEFT JOIN ${meta} t ON t.key = 'pruned_at:' || substr(p.key, 16)
        WHERE p.key LIKE 'pruned\\_through:%' AND p.value > $1`,
      [since],
    );
    return rows.map((row) => ({ entity: row.entity, horizon: Number(row.horizon), raised: row.raised, prunedAt: Number(row.pruned_at) }));
  }

  /** Rows of a table (the log's when `entity` is omitted). Exact while small; past 100k rows the planner's estimate, so progress and metrics never scan a big table. */
  async count(entity?: string): Promise<number> {
    const table = entity === undefined ? this.catalog.names.log : this.catalog.entity(entity).table;
    const { rows } = await this.catalog.pool.query<{ size: string }>(
      `SELECT (CASE WHEN c.reltuples >= 100000 THEN c.reltuples::bigint ELSE (SELECT count(*) FROM ${table}) END)::text AS size
         FROM pg_class c WHERE c.oid = $1::regclass`,
      [table],
    );
    return Number(rows[0]?.size ?? 0);
  }
}

/** Must run inside the read's transaction: the cursor comes from the same snapshot as the rows. */
function toPage(rows: LogRow[], limit: number, cursor: number): LogPage {
  const hasMore = rows.length > limit;
  if (hasMore) rows.length = limit;
  const changes = rows.map(
    (row): Change => ({
      entity: row.entity,
      id: row.entity_id,
      entity_id: row.entity_id,
      action: row.action,
      data: row.data,
      version: Number(row.version),
      hlc: Number(row.hlc),
      client_id: row.client_id,
    }),
  );
  const version = hasMore ? (changes[changes.length - 1] as Change).version : cursor;
  return { changes, version, hasMore };
}
