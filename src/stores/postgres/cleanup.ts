/**
 * Pruning what a caught-up client no longer needs, in one transaction (one
 * node at a time): superseded log entries and deletes older than the cutoff,
 * the field tombstones those deletes left, and idle exactly-once records
 * with their stored outcomes.
 */
import type { Catalog } from './schema.js';
import { transaction } from './transaction.js';

/** Store.cleanup on PostgreSQL; returns how many log entries were removed. */
export function cleanup(catalog: Catalog, olderThanMs: number, clientsOlderThanMs: number): Promise<number> {
  const { log, meta, clients, outcomes, fieldVersions } = catalog.names;
  return transaction(catalog.pool, async (client) => {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:cleanup'))`);
    // One statement: the horizon is exactly the newest tombstone it removed per entity.
    // Deleted rows' tombstones are the only entries whose loss a lagging client would notice;
    // older cursors get a reset instead.
    const { rows } = await client.query<{ removed: string; field_versions: boolean }>(
      `WITH gone AS (
         DELETE FROM ${log} l WHERE l.created_at < to_timestamp($1::float8 / 1000) AND (l.action = 'delete' OR EXISTS (
           SELECT 1 FROM ${log} newer WHERE newer.entity = l.entity AND newer.entity_id = l.entity_id AND newer.version > l.version))
         RETURNING l.entity, l.version, l.action
       ), horizon AS (
         INSERT INTO ${meta} (key, value)
         SELECT k || entity, CASE k WHEN 'pruned_at:' THEN floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint ELSE max(version) END
           FROM gone, unnest(ARRAY['pruned_through:', 'pruned_at:']) AS k WHERE action = 'delete' GROUP BY entity, k
         ON CONFLICT (key) DO UPDATE SET value = GREATEST(${meta}.value, EXCLUDED.value)
       )
       SELECT count(*)::text AS removed, to_regclass($2) IS NOT NULL AS field_versions FROM gone`,
      [olderThanMs, fieldVersions],
    );
    if (rows[0]?.field_versions) {
      // A field cursor at or below the horizon gets a reset snapshot, so the tombstones there are no longer read.
      await client.query(
        `DELETE FROM ${fieldVersions} f USING ${meta} m
          WHERE m.key = 'pruned_through:' || f.entity AND f.field = '*' AND f.value IS NULL AND f.version <= m.value`,
      );
    }
    // Both families' records: field pushes keep theirs here too, under fieldClientKey. Their stored
    // outcomes go with them (a push bounds them per client to the last OUTCOME_WINDOW mutation ids).
    await client.query(
      `WITH gone AS (DELETE FROM ${clients} WHERE updated_at < to_timestamp($1::float8 / 1000) RETURNING client_id),
       outcomes AS (DELETE FROM ${outcomes} o USING gone WHERE o.client_id = gone.client_id)
       -- A retry that left before this cutoff may belong to a record pruned here (core/store.ts ClientRecord).
       INSERT INTO ${meta} (key, value) SELECT 'clients_pruned_before', floor($1::float8)::bigint WHERE EXISTS (SELECT 1 FROM gone)
         ON CONFLICT (key) DO UPDATE SET value = GREATEST(${meta}.value, EXCLUDED.value)`,
      [clientsOlderThanMs],
    );
    return Number(rows[0]?.removed ?? 0);
  });
}

/**
 * Logs written before writers were digests hold raw client ids: rewrite them
 * once (one node does it), with the digest `writerOf` (core/access.ts) stamps on new writes.
 */
export function hashOldWriters(catalog: Catalog): Promise<void> {
  const { log, meta, fieldVersions } = catalog.names;
  return transaction(catalog.pool, async (client) => {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('rhtmx_sync:cleanup'))`);
    const done = await client.query(`SELECT 1 FROM ${meta} WHERE key = 'writers_hashed'`);
    if (done.rowCount) return;
    const digest = `'#' || left(encode(sha256(convert_to(client_id, 'UTF8')), 'hex'), 32)`;
    const { rows } = await client.query<{ field: boolean }>('SELECT to_regclass($1) IS NOT NULL AS field', [fieldVersions]);
    for (const table of rows[0]?.field ? [log, fieldVersions] : [log]) {
      await client.query(`UPDATE ${table} SET client_id = ${digest} WHERE client_id IS NOT NULL AND left(client_id, 1) <> '#'`);
    }
    await client.query(`INSERT INTO ${meta} (key, value) VALUES ('writers_hashed', 1) ON CONFLICT (key) DO NOTHING`);
  });
}
