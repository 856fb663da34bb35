/**
 * Field-level bookkeeping on SQLite, the FieldStore SqliteStore opens when
 * field sync is on: the bookkeeping trigger, field reads, and the field
 * push's per-change apply (`FieldPush`) that runs in push.ts's skeleton.
 *
 * `_rhtmx_field_versions` holds, per (entity, row, field), the change-log
 * version, HLC and writer of the last write that changed the field, plus its
 * value as the row's JSON shows it. It is filled by one trigger per entity
 * on the change log itself: whenever the entity triggers log a row write (a
 * field push, an entity push, app code, raw SQL, another process), the log
 * trigger compares the logged row with the recorded field values and bumps
 * only the fields that changed. So every writer keeps field versions right,
 * field versions share the log's version sequence, and a field push is
 * simply an UPDATE of one real column.
 *
 * The pseudo-field `*` marks the row: value NULL is a tombstone carrying the
 * delete's version and HLC, so deletes are ordered against later updates.
 */
import { quoteIdent } from '../../core/config.js';
import { fieldColumns } from '../../core/field/validation.js';
import { type FieldChange, ROW_FIELD, type Row } from '../../core/protocol.js';
import type { SchemaIssue } from '../../core/standard-schema.js';
import {
  type FieldChangePage,
  type FieldDecision,
  type FieldOutcome,
  type FieldPushBatch,
  type FieldServerState,
  type FieldSnapshotPage,
  type FieldStore,
  type FieldTarget,
  type FieldValue,
  type FieldWrite,
  guarded,
  NEVER_WRITTEN,
  type RowFieldStates,
  type RowWrite,
  type RowWriteCheck,
  replayedField,
  type StoredOutcome,
  storedFieldOutcome,
  storedFor,
  type TableSchema,
  type WriteStamp,
} from '../../core/store.js';
import { type PushPlan, type PushScope, runPush } from './push.js';
import type { LogReader } from './reads.js';
import { type Catalog, FIELD_VERSIONS_TABLE, type LastEntry, LOG_TABLE, literal, type SyncedTable } from './schema.js';

const FV = FIELD_VERSIONS_TABLE;
const TRIGGER_PREFIX = '_rhtmx_field_';

/** A field's bookkeeping row: its last write, and its value as JSON text. */
interface Entry extends WriteStamp {
  field: string;
  value: string | null;
}

/** A field change as the SQL shows it, the value still JSON text. */
type ChangeRow = Omit<FieldChange, 'value'> & { value: string | null };

const parseValue = (value: string | null): unknown => (value === null ? null : JSON.parse(value));

/** Two values as the row's JSON shows them (JSON columns parse to objects). */
const sameJson = (a: unknown, b: unknown): boolean =>
  a === b || (typeof a === 'object' && typeof b === 'object' && a !== null && b !== null && JSON.stringify(a) === JSON.stringify(b));

const toFieldChange = (row: ChangeRow): FieldChange => ({ ...row, value: parseValue(row.value) });

/**
 * The log trigger for one entity. Order matters: (1) a row first seen on an
 * update (it predates field sync) is seeded from its previous log entry, so
 * unchanged fields keep their old version; (2) fields whose value differs
 * from the recorded one (all of them on create) take the new version;
 * (3) the row marker follows creates and deletes; (4) a deleted row keeps
 * only its tombstone.
 */
function triggerSql(target: FieldTarget): string {
  const same = `entity = NEW.entity AND entity_id = NEW.entity_id`;
  const fields = target.fields.map((column) => `(${literal(column.name)}, ${literal(`$."${column.name}"`)})`).join(', ');
  const upsert = (where: string) =>
    `ON CONFLICT (entity, entity_id, field) DO UPDATE SET
       version = excluded.version, hlc = excluded.hlc, client_id = excluded.client_id, value = excluded.value WHERE ${where};`;
  const fieldStatements =
    target.fields.length === 0
      ? ''
      : `INSERT OR IGNORE INTO ${FV} (entity, entity_id, field, version, hlc, client_id, value)
          SELECT NEW.entity, NEW.entity_id, c.column1, COALESCE(p.version, 0), COALESCE(p.hlc, 0), p.client_id, p.data -> c.column2
          FROM (VALUES ${fields}) AS c
          LEFT JOIN (SELECT version, hlc, client_id, data FROM ${LOG_TABLE}
                     WHERE ${same} AND version < NEW.version ORDER BY version DESC LIMIT 1) AS p ON 1
          WHERE NEW.action = 'update' AND NOT EXISTS (SELECT 1 FROM ${FV} WHERE ${same} AND field = '*');
        INSERT INTO ${FV} (entity, entity_id, field, version, hlc, client_id, value)
          SELECT NEW.entity, NEW.entity_id, c.column1, NEW.version, NEW.hlc, NEW.client_id, NEW.data -> c.column2
          FROM (VALUES ${fields}) AS c WHERE NEW.action <> 'delete'
          ${upsert(`NEW.action = 'create' OR ${FV}.value IS NOT excluded.value`)}`;
  return `
    CREATE TRIGGER ${triggerName(target.schema.entity)} AFTER INSERT ON ${LOG_TABLE}
    WHEN NEW.entity = ${literal(target.schema.entity)} BEGIN
      ${fieldStatements}
      INSERT INTO ${FV} (entity, entity_id, field, version, hlc, client_id, value)
        VALUES (NEW.entity, NEW.entity_id, '*', NEW.version, NEW.hlc, NEW.client_id, CASE WHEN NEW.action = 'delete' THEN NULL ELSE 'true' END)
        ${upsert(`NEW.action <> 'update' OR ${FV}.value IS NULL`)}
      DELETE FROM ${FV} WHERE NEW.action = 'delete' AND ${same} AND field <> '*';
    END;`;
}

const triggerName = (entity: string): string => quoteIdent(`${TRIGGER_PREFIX}${entity}`);

/** The FieldStore of SqliteStore (same database handle, same Catalog). */
export class SqliteFieldStore implements FieldStore {
  private readonly targets = new Map<string, FieldTarget>();
  private s!: ReturnType<SqliteFieldStore['prepare']>;

  constructor(
    private readonly catalog: Catalog,
    private readonly reads: LogReader,
  ) {}

  async init(targets: FieldTarget[]): Promise<void> {
    const db = this.catalog.db;
    // One index on version serves live reads (all entities) and, filtered, pulls of one entity: each
    // index on this table is written on every field change, and an (entity, version) one cost a write ~25 µs.
    db.exec(`
      CREATE TABLE IF NOT EXISTS ${FV} (
        entity TEXT NOT NULL, entity_id TEXT NOT NULL, field TEXT NOT NULL, version INTEGER NOT NULL, hlc INTEGER NOT NULL,
        client_id TEXT, value TEXT, PRIMARY KEY (entity, entity_id, field)
      ) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS ${FV}_version ON ${FV} (version);
      DROP INDEX IF EXISTS ${FV}_entity;
    `);
    db.transaction(() => {
      // Triggers of entities no longer configured would keep writing bookkeeping nobody reads.
      const stale = db
        .prepare(`SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND substr(name, 1, ?) = ?`)
        .pluck()
        .all(LOG_TABLE, TRIGGER_PREFIX.length, TRIGGER_PREFIX) as string[];
      for (const name of stale) db.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(name)}`);
      for (const target of targets) db.exec(triggerSql(target));
    })();
    this.s = this.prepare();
    for (const target of targets) this.targets.set(target.schema.entity, target);
  }

  /**
   * A field-synced table's columns changed (SqliteStore follows the schema):
   * re-create its log trigger for the new field list, inside the caller's
   * transaction. Tables this store does not sync are left alone.
   */
  reinstallTrigger(schema: TableSchema): void {
    if (!this.targets.has(schema.entity)) return;
    this.catalog.db.exec(`DROP TRIGGER IF EXISTS ${triggerName(schema.entity)}`);
    this.catalog.db.exec(triggerSql({ schema, fields: fieldColumns(schema.columns) }));
  }

  /** Serve a field-synced table with its new columns from now on. */
  adopt(schema: TableSchema): void {
    if (this.targets.has(schema.entity)) this.targets.set(schema.entity, { schema, fields: fieldColumns(schema.columns) });
  }

  private prepare() {
    const db = this.catalog.db;
    const entry = 'field, version, hlc, client_id AS clientId, value';
    // Row markers are bookkeeping; only tombstones (value NULL) travel, as row deletes. Entity null: every entity.
    const changes = (range: string, limit: string) =>
      db.prepare(`SELECT entity, entity_id, field, CASE field WHEN '*' THEN NULL ELSE value END AS value, version, hlc, client_id,
          CASE field WHEN '*' THEN 'delete' ELSE 'update' END AS action FROM ${FV} INDEXED BY ${FV}_version
        WHERE ${range} AND (@entity IS NULL OR entity = @entity) AND (field <> '*' OR value IS NULL) ORDER BY version, entity, entity_id, field ${limit}`);
    return {
      entry: db.prepare(`SELECT ${entry} FROM ${FV} WHERE entity = ? AND entity_id = ? AND field = ?`),
      rowEntries: db.prepare(`SELECT ${entry} FROM ${FV} WHERE entity = ? AND entity_id = ?`),
      pageEntries: db.prepare(
        `SELECT entity_id, ${entry} FROM ${FV} WHERE entity = ? AND entity_id IN (SELECT value FROM json_each(?)) AND field <> '*'`,
      ),
      changesAfter: changes('version > @version', 'LIMIT @limit'),
      changesAt: changes('version = @version', ''),
      setHlc: db.prepare(`UPDATE ${FV} SET hlc = ? WHERE entity = ? AND entity_id = ? AND field = ? AND version = ?`),
    };
  }

  private target(name: string): { target: FieldTarget; entity: SyncedTable } {
    const target = this.targets.get(name);
    if (!target) throw new Error(`rhtmx-sync: entity ${name} is not initialised for field sync`);
    return { target, entity: this.catalog.entity(name) };
  }

  async currentVersion(): Promise<number> {
    return this.catalog.currentVersion();
  }

  async push(batch: FieldPushBatch): Promise<FieldOutcome[]> {
    const { entity } = this.target(batch.entity);
    return runPush(this.catalog, new FieldPush(this.catalog, this.s, entity, batch));
  }

  async readChanges(since: number, limit: number, entityName?: string): Promise<FieldChangePage> {
    const entity = entityName ?? null;
    return this.catalog.db.transaction((): FieldChangePage => {
      const rows = this.s.changesAfter.all({ entity, version: since, limit: limit + 1 }) as ChangeRow[];
      if (rows.length <= limit) return { changes: rows.map(toFieldChange), version: this.catalog.currentVersion(), hasMore: false };
      // A cursor is a version: never end a page in the middle of one write's fields.
      const cut = (rows[limit] as ChangeRow).version;
      let page = rows.slice(0, limit).filter((row) => row.version < cut);
      // One write touched more fields than a page holds: serve that whole write.
      if (page.length === 0) page = this.s.changesAt.all({ entity, version: cut }) as ChangeRow[];
      return { changes: page.map(toFieldChange), version: (page[page.length - 1] as ChangeRow).version, hasMore: true };
    })();
  }

  async snapshot(entityName: string, limit: number, after?: string, atVersion?: number): Promise<FieldSnapshotPage> {
    const { target } = this.target(entityName);
    return this.catalog.db.transaction((): FieldSnapshotPage => {
      // The entity snapshot's page, in the same transaction as the entries read for it.
      const page = this.reads.snapshot(entityName, limit, after, atVersion);
      const ids = page.rows.map((row) => row.id);
      const entries = new Map<string, Entry[]>();
      for (const entry of this.s.pageEntries.all(entityName, JSON.stringify(ids)) as Array<Entry & { entity_id: string }>) {
        entries.set(entry.entity_id, [...(entries.get(entry.entity_id) ?? []), entry]);
      }
      const changes = page.rows.flatMap(({ id, data }) =>
        this.fields(target, id, JSON.parse(data) as Row, entries.get(id) ?? []).map(
          ({ field, value, stamp }): FieldChange => ({
            entity: entityName,
            entity_id: id,
            field,
            value,
            version: stamp.version,
            hlc: stamp.hlc,
            client_id: stamp.clientId,
            action: 'update',
          }),
        ),
      );
      return { changes, version: page.version, after: page.after };
    })();
  }

  async latest(entityName: string, entityId: string): Promise<RowFieldStates | null> {
    const { target, entity } = this.target(entityName);
    return this.catalog.db.transaction((): RowFieldStates | null => {
      const current = entity.row(entityId);
      const entries = this.s.rowEntries.all(entityName, entityId) as Entry[];
      if (!current) {
        const tombstone = tombstoneOf(
          entries.find((entry) => entry.field === ROW_FIELD),
          this.catalog.lastEntry(entityName, entityId),
        );
        return tombstone && { deleted: true, version: tombstone.version, hlc: tombstone.hlc, fields: {} };
      }
      const result: RowFieldStates = { deleted: false, version: 0, hlc: 0, fields: {} };
      for (const { field, value, stamp } of this.fields(target, entityId, current, entries)) {
        result.fields[field] = { value, version: stamp.version, hlc: stamp.hlc, client_id: stamp.clientId };
        result.version = Math.max(result.version, stamp.version);
        result.hlc = Math.max(result.hlc, stamp.hlc);
      }
      return result;
    })();
  }

  /**
   * Every field of a current row with its last write: its entry, or when it has none yet (the
   * row predates field tracking) the row's latest log entry, which bounds it.
   */
  private fields(target: FieldTarget, id: string, values: Row, entries: Entry[]) {
    const recorded = new Map(entries.map((entry) => [entry.field, entry]));
    let fallback: WriteStamp | undefined;
    return target.fields.map(({ name }) => {
      let stamp: WriteStamp | undefined = recorded.get(name);
      if (!stamp) {
        fallback ??= this.catalog.lastEntry(target.schema.entity, id) ?? NEVER_WRITTEN;
        stamp = fallback;
      }
      return { field: name, value: values[name], stamp };
    });
  }

  async rows(entityName: string, ids: readonly string[]): Promise<Map<string, Row>> {
    return this.catalog.entity(entityName).rows(ids);
  }

  async close(): Promise<void> {
    // The database handle is the app's; prepared statements are released with it.
  }
}

/** A field push: one column per change, decided by the core's merge rules. */
class FieldPush implements PushPlan<FieldWrite, FieldOutcome> {
  constructor(
    private readonly catalog: Catalog,
    private readonly s: SqliteFieldStore['s'],
    private readonly entity: SyncedTable,
    readonly batch: FieldPushBatch,
  ) {}

  duplicate(change: FieldWrite, stored: readonly StoredOutcome[] | null): FieldOutcome {
    // The field's state is read now: it is what the client converges to.
    const state = this.readState(change);
    const current = change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.field;
    return replayedField(change, storedFor(change, stored), { version: current.version, hlc: current.hlc, value: state.value });
  }

  stored(outcome: FieldOutcome): StoredOutcome {
    return storedFieldOutcome(outcome);
  }

  apply(index: number, scope: PushScope<FieldWrite, FieldOutcome>): FieldOutcome {
    const { changes } = this.batch;
    const change = changes[index] as FieldWrite;
    const state = this.readState(change);
    const decision = this.decide(change, state);
    if (decision.kind !== 'write') return settledOutcome(change, decision, state);
    const { entityId } = change;
    if (change.field === ROW_FIELD || state.exists) {
      const remove = change.field === ROW_FIELD;
      const checked = this.check({
        action: remove ? 'delete' : 'update',
        entityId,
        current: state.current,
        values: remove ? {} : { [change.field]: change.value },
        json: remove ? {} : { [change.field]: change.json },
        index,
      });
      if (!checked.ok) return rejected(change, checked.reason, checked.issues);
      const value = checked.values[change.field] ?? change.value;
      const written = scope.write(decision.hlc, () =>
        remove ? this.entity.delete(entityId) : this.entity.write('update', entityId, { [change.field]: value }),
      );
      return written.ok ? this.applied(change, decision.hlc) : rejected(change, written.reason);
    }
    // A new row (or one re-created after its delete): the later changes to it in this push go into the
    // same INSERT, so a row whose columns are NOT NULL can be created field by field in one push.
    const group: Array<{ index: number; change: FieldWrite; hlc: number }> = [{ index, change, hlc: decision.hlc }];
    for (let next = index + 1; next < changes.length; next++) {
      const other = changes[next] as FieldWrite;
      if (other.entityId !== entityId || scope.results[next] || scope.isDuplicate(other)) continue;
      if (other.field === ROW_FIELD) break; // a later delete of the row must see it inserted first
      const otherDecision = this.decide(other, state);
      if (otherDecision.kind === 'write') group.push({ index: next, change: other, hlc: otherDecision.hlc });
      else scope.results[next] = settledOutcome(other, otherDecision, state);
    }
    const values: Record<string, FieldValue> = {};
    const json: Row = {};
    for (const member of group) {
      values[member.change.field] = member.change.value;
      json[member.change.field] = member.change.json;
    }
    const settleGroup = (outcome: (member: (typeof group)[number]) => FieldOutcome) => {
      for (const member of group.slice(1)) scope.results[member.index] = outcome(member);
      return outcome(group[0] as (typeof group)[number]);
    };
    const checked = this.check({ action: 'create', entityId, current: null, values, json, index });
    if (!checked.ok) return settleGroup((member) => rejected(member.change, checked.reason, checked.issues));
    const hlc = Math.max(...group.map((member) => member.hlc));
    const insert: Record<string, FieldValue> = {};
    for (const field of Object.keys(values)) insert[field] = checked.values[field] ?? values[field] ?? null;
    const written = scope.write(hlc, () => this.entity.write('insert', entityId, insert));
    if (!written.ok) return settleGroup((member) => rejected(member.change, written.reason));
    // The row's log entry carries the newest stamp; each field keeps its own.
    const name = this.entity.schema.entity;
    const version = (this.s.entry.get(name, entityId, ROW_FIELD) as Entry | undefined)?.version ?? 0;
    for (const member of group) this.s.setHlc.run(member.hlc, name, entityId, member.change.field, version);
    return settleGroup((member) => this.applied(member.change, member.hlc));
  }

  private readState(change: FieldWrite): FieldServerState {
    const name = this.entity.schema.entity;
    const current = this.entity.row(change.entityId);
    const last = this.catalog.lastEntry(name, change.entityId);
    const row: WriteStamp = last ?? NEVER_WRITTEN;
    const tombstone = current ? null : tombstoneOf(this.s.entry.get(name, change.entityId, ROW_FIELD) as Entry | undefined, last);
    if (change.field === ROW_FIELD) return { exists: current !== null, current, value: null, same: false, field: row, row, tombstone };
    if (!current) return { exists: false, current, value: null, same: false, field: tombstone ?? NEVER_WRITTEN, row, tombstone };
    const entry = this.s.entry.get(name, change.entityId, change.field) as Entry | undefined;
    const value = current[change.field] ?? null;
    return {
      exists: true,
      current,
      value,
      same: change.invalid === null && sameJson(value, change.json),
      // No entry yet: the row predates field tracking; its latest log entry bounds the field's last write.
      field: entry ?? row,
      row,
      tombstone: null,
    };
  }

  private decide(change: FieldWrite, state: FieldServerState): FieldDecision {
    return guarded<FieldDecision>(
      () => this.batch.decide(change, state),
      (message) => ({ kind: 'reject', reason: `merge failed: ${message}` }),
    );
  }

  /** The app's write rule and schema for one row write; a SyncError (forbidden) aborts the whole push. */
  private check(write: RowWrite): RowWriteCheck {
    const prepare = this.batch.prepareWrite;
    if (!prepare) return { ok: true, values: write.values };
    return guarded<RowWriteCheck>(
      () => prepare(write),
      (message) => ({ ok: false, reason: `write check failed: ${message}` }),
    );
  }

  private applied(change: FieldWrite, hlc: number): FieldOutcome {
    const entry = this.s.entry.get(this.entity.schema.entity, change.entityId, change.field) as Entry | undefined;
    const value = change.field === ROW_FIELD || !entry ? null : parseValue(entry.value);
    return { change, status: 'applied', version: entry?.version, hlc: entry?.hlc ?? hlc, value };
  }
}

/** A missing row's delete: its tombstone, or (before field tracking) its latest log entry when that is a delete. */
function tombstoneOf(marker: Entry | undefined, last: LastEntry | undefined): WriteStamp | null {
  if (marker && marker.value === null) return marker;
  return last?.action === 'delete' ? last : null;
}

const rejected = (change: FieldWrite, reason: string, issues?: SchemaIssue[]): FieldOutcome => ({
  change,
  status: 'rejected',
  reason,
  issues,
});

/** The outcome of a decision that writes nothing. */
function settledOutcome(change: FieldWrite, decision: Exclude<FieldDecision, { kind: 'write' }>, state: FieldServerState): FieldOutcome {
  if (decision.kind === 'reject') return rejected(change, decision.reason);
  const current =
    change.field === ROW_FIELD ? (state.tombstone ?? state.row) : state.exists ? state.field : (state.tombstone ?? state.field);
  const outcome: FieldOutcome = {
    change,
    status: decision.kind === 'keep' ? 'applied' : 'conflict',
    version: current.version,
    hlc: current.hlc,
    value: state.value,
  };
  if (decision.kind === 'conflict') outcome.reason = decision.reason;
  return outcome;
}
