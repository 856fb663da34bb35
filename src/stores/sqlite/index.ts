/**
 * SQLite store on better-sqlite3, composed of one part per subject:
 *
 * - schema.ts: tables, capture triggers, introspection and prepared statements (the Catalog)
 * - reads.ts: log pages, snapshots, the retained horizon, counts
 * - push.ts: the one push skeleton and the entity apply; fields.ts: the field bookkeeping, reads and apply
 * - cleanup.ts: pruning; watch.ts: noticing writes (and DDL) by anyone (WAL file watch, poll); errors.ts: what a refused write says
 *
 * better-sqlite3 is synchronous: every method runs one transaction to
 * completion, which also gives consistent reads (data and cursor from the
 * same WAL snapshot) for free.
 */
import type {
  AppliedChange,
  EntityTarget,
  FieldStore,
  LogPage,
  PrunedHorizon,
  PushBatch,
  SnapshotJson,
  SnapshotPage,
  Store,
  TableSchema,
} from '../../core/store.js';
import { cleanup, hashOldWriters } from './cleanup.js';
import type { SqliteFieldStore } from './fields.js';
import { EntityPush, runPush } from './push.js';
import { LogReader } from './reads.js';
import { Catalog, type Database } from './schema.js';
import { LogWatcher } from './watch.js';

export { CONTEXT_TABLE, LOG_TABLE, sqliteColumnType } from './schema.js';

/** Options of SqliteStore. */
export interface SqliteStoreOptions {
  /** How often to look for writes made outside the engine (other connections, other processes), ms. */
  pollMs?: number;
  /** Switch the database to WAL so readers never block the writer. Default true for file databases. */
  wal?: boolean;
}

/** SQLite implementation of the Store contract. */
export class SqliteStore implements Store {
  private parts: { catalog: Catalog; reads: LogReader } | null = null;
  private readonly watcher: LogWatcher;
  private fieldStore: SqliteFieldStore | null = null;
  private readonly schemaListeners = new Set<{ changed: (schemas: TableSchema[]) => void; failed: (error: unknown) => void }>();

  constructor(
    /** The app's database handle; the store never closes it. */
    readonly db: Database,
    options: SqliteStoreOptions = {},
  ) {
    const wal = options.wal ?? (!db.memory && db.name !== '');
    if (wal) db.pragma('journal_mode = WAL');
    // Another process may hold the write lock briefly; wait rather than fail.
    db.pragma('busy_timeout = 5000');
    this.watcher = new LogWatcher(
      () => this.ready.catalog.currentVersion(),
      options.pollMs ?? 25,
      () => this.followSchema(),
      wal ? `${db.name}-wal` : null,
    );
  }

  /** Field-level bookkeeping on the same database (loaded only when field sync is on). */
  async openFieldStore(): Promise<FieldStore> {
    const { SqliteFieldStore } = await import('./fields.js');
    this.fieldStore = new SqliteFieldStore(this.ready.catalog, this.ready.reads);
    return this.fieldStore;
  }

  async init(targets: EntityTarget[]): Promise<TableSchema[]> {
    const catalog = this.parts?.catalog ?? new Catalog(this.db);
    this.parts = { catalog, reads: new LogReader(catalog) };
    const schemas = catalog.install(targets);
    hashOldWriters(catalog);
    return schemas;
  }

  private get ready(): { catalog: Catalog; reads: LogReader } {
    if (!this.parts) throw new Error('rhtmx-sync: SqliteStore.init() has not run');
    return this.parts;
  }

  async currentVersion(): Promise<number> {
    return this.ready.catalog.currentVersion();
  }

  async readEntityLog(entity: string, since: number, limit: number): Promise<LogPage> {
    return this.ready.reads.readLog(since, limit, entity);
  }

  async readLog(since: number, limit: number, entities?: readonly string[]): Promise<LogPage> {
    const page = this.ready.reads.readLog(since, limit);
    if (entities) {
      const wanted = new Set(entities);
      page.changes = page.changes.filter((change) => wanted.has(change.entity));
    }
    return page;
  }

  async snapshot(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage> {
    return this.ready.reads.snapshot(entity, limit, after, atVersion);
  }

  async snapshotJson(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotJson> {
    return this.ready.reads.snapshotJson(entity, limit, after, atVersion);
  }

  async raiseHorizon(entities: readonly string[]): Promise<number> {
    return this.ready.catalog.raiseHorizon(entities);
  }

  async prunedAbove(since: number): Promise<PrunedHorizon[]> {
    return this.ready.reads.prunedAbove(since);
  }

  async retainedSince(entity: string): Promise<number> {
    return this.ready.reads.retainedSince(entity);
  }

  async push(batch: PushBatch): Promise<AppliedChange[]> {
    const { catalog } = this.ready;
    return runPush(catalog, new EntityPush(catalog, batch));
  }

  async countRows(entity: string): Promise<number> {
    return this.ready.reads.count(entity);
  }

  async logSize(): Promise<number> {
    return this.ready.reads.count();
  }

  async cleanup(olderThanMs: number, clientsOlderThanMs: number): Promise<number> {
    return cleanup(this.ready.catalog, olderThanMs, clientsOlderThanMs);
  }

  watch(onChange: () => void): () => void {
    return this.watcher.watch(onChange);
  }

  onSchemaChange(listener: (schemas: TableSchema[]) => void, onError: (error: unknown) => void = () => {}): () => void {
    const entry = { changed: listener, failed: onError };
    this.schemaListeners.add(entry);
    return () => this.schemaListeners.delete(entry);
  }

  /** On every watch tick: when DDL happened, follow the synced tables' new shapes (Catalog.refresh). */
  private followSchema(): void {
    if (!this.parts) return;
    const fields = this.fieldStore;
    const { changed, failed } = this.parts.catalog.refresh((schema) => fields?.reinstallTrigger(schema));
    for (const schema of changed) fields?.adopt(schema);
    for (const { changed: listener, failed: report } of this.schemaListeners) {
      for (const error of failed) report(error);
      try {
        if (changed.length > 0) listener(changed);
      } catch (error) {
        report(error);
      }
    }
  }

  async close(): Promise<void> {
    this.watcher.close();
  }
}
