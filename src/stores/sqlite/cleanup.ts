/**
 * Pruning what a caught-up client no longer needs, in one transaction:
 * superseded log entries and deletes older than the cutoff, the field
 * tombstones those deletes left, and idle exactly-once records with their
 * stored outcomes.
 */
import { createHash } from 'node:crypto';
import { type Catalog, CLIENTS_TABLE, FIELD_VERSIONS_TABLE, LOG_TABLE, META_TABLE, OUTCOMES_TABLE } from './schema.js';

/** Store.cleanup on SQLite; returns how many log entries were removed. */
export function cleanup(catalog: Catalog, olderThanMs: number, clientsOlderThanMs: number): number {
  const { db, s } = catalog;
  return db.transaction((): number => {
    // The log is in commit order: what is older than the cutoff is every entry before the first
    // younger one (one written under a clock set back waits for a later cleanup). Found by a scan
    // that stops there, so no write pays for an index on created_at.
    const cut =
      (db.prepare(`SELECT version FROM ${LOG_TABLE} WHERE created_at >= ? ORDER BY version LIMIT 1`).pluck().get(olderThanMs) as
        | number
        | undefined) ?? Number.MAX_SAFE_INTEGER;
    // Deleted rows' tombstones are the only entries whose loss a lagging client would notice:
    // remember the newest pruned one per entity, and send older cursors a reset instead.
    const horizons = db
      .prepare(`SELECT entity, MAX(version) AS v FROM ${LOG_TABLE} WHERE version < ? AND action = 'delete' GROUP BY entity`)
      .all(cut) as Array<{ entity: string; v: number }>;
    const now = Date.now();
    for (const { entity, v } of horizons) {
      s.setMeta.run(`pruned_through:${entity}`, v);
      // When: a hub that had read past the horizon by then missed nothing (core/hub.ts checkPruned).
      s.setMeta.run(`pruned_at:${entity}`, now);
    }
    const removed = db
      .prepare(
        `DELETE FROM ${LOG_TABLE} WHERE version < ? AND (action = 'delete' OR EXISTS (
           SELECT 1 FROM ${LOG_TABLE} newer WHERE newer.entity = ${LOG_TABLE}.entity
             AND newer.entity_id = ${LOG_TABLE}.entity_id AND newer.version > ${LOG_TABLE}.version))`,
      )
      .run(cut).changes;
    const fieldBookkeeping = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(FIELD_VERSIONS_TABLE);
    if (fieldBookkeeping) {
      // A field cursor at or below the horizon gets a reset snapshot, so the tombstones there are no longer read.
      db.exec(
        `DELETE FROM ${FIELD_VERSIONS_TABLE} WHERE field = '*' AND value IS NULL
           AND version <= (SELECT value FROM ${META_TABLE} WHERE key = 'pruned_through:' || ${FIELD_VERSIONS_TABLE}.entity)`,
      );
    }
    // Both families' records: field pushes keep theirs here too, under fieldClientKey. Their stored
    // outcomes go with them (a push bounds them per client to the last OUTCOME_WINDOW mutation ids).
    db.prepare(`DELETE FROM ${OUTCOMES_TABLE} WHERE client_id IN (SELECT client_id FROM ${CLIENTS_TABLE} WHERE updated_at < ?)`).run(
      clientsOlderThanMs,
    );
    // A retry that left before this cutoff may belong to a record pruned here (core/store.ts ClientRecord).
    if (db.prepare(`DELETE FROM ${CLIENTS_TABLE} WHERE updated_at < ?`).run(clientsOlderThanMs).changes > 0) {
      s.setMeta.run('clients_pruned_before', Math.floor(clientsOlderThanMs));
    }
    return removed;
  })();
}

/**
 * Logs written before writers were digests hold raw client ids: rewrite them
 * once, with the digest `writerOf` (core/access.ts) stamps on new writes.
 */
export function hashOldWriters(catalog: Catalog): void {
  const { db, s } = catalog;
  if (s.getMeta.get('writers_hashed')) return;
  db.function(
    'rhtmx_writer',
    { deterministic: true },
    (id: unknown) => `#${createHash('sha256').update(String(id)).digest('hex').slice(0, 32)}`,
  );
  const fieldBookkeeping = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(FIELD_VERSIONS_TABLE);
  db.transaction(() => {
    for (const table of fieldBookkeeping ? [LOG_TABLE, FIELD_VERSIONS_TABLE] : [LOG_TABLE]) {
      db.exec(`UPDATE ${table} SET client_id = rhtmx_writer(client_id) WHERE client_id IS NOT NULL AND substr(client_id, 1, 1) <> '#'`);
    }
    s.setMeta.run('writers_hashed', 1);
  })();
}
