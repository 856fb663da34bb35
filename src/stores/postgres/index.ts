/**
 * PostgreSQL store on a `pg` Pool, composed of one part per subject:
 *
 * - schema.ts: tables, the capture function and triggers, introspection (the Catalog)
 * - horizon.ts: the cursor proof every read runs under (commits land out of order)
 * - reads.ts: log pages, snapshots, the retained horizon, counts
 * - push.ts: the one push skeleton and the entity apply; fields.ts: the field apply and reads
 * - cleanup.ts: pruning; listen.ts: LISTEN/NOTIFY with a safety poll (and the DDL notice)
 * - transaction.ts: the one BEGIN/COMMIT/ROLLBACK; errors.ts: what a PostgreSQL error means
 *
 * Change capture is done by one plpgsql trigger function installed on every
 * synced table, so writes from the engine, app code, psql and other nodes are
 * logged alike. Several engine processes can share one database: each runs
 * this store, each LISTENs for a payload-free wake-up and re-reads the log.
 */
import type { Pool } from 'pg';
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
import type { PostgresFieldStore } from './fields.js';
import { HorizonReader } from './horizon.js';
import { LogWatcher, type SchemaCheck } from './listen.js';
import { EntityPush, runPush } from './push.js';
import { LogReader } from './reads.js';
import { Catalog, raiseHorizon } from './schema.js';
import { transaction } from './transaction.js';

export { LISTEN_APPLICATION_NAME } from './listen.js';
export { CLIENT_SETTING, HLC_SETTING, LOG_TABLE, NOTIFY_CHANNEL, postgresColumnType } from './schema.js';

/** Options of PostgresStore. */
export interface PostgresStoreOptions {
  /**
   * Safety poll interval, ms: how often the store checks the log even without
   * a NOTIFY (a missed notification must never strand a change). Default 1000.
   */
  pollMs?: number;
  /** Called with errors of the background LISTEN connection and poll (they are retried). */
  onError?: (error: unknown) => void;
}

/** PostgreSQL implementation of the Store contract. */
export class PostgresStore implements Store {
  private readonly catalog: Catalog;
  private readonly horizon: HorizonReader;
  private readonly reads: LogReader;
  private readonly watcher: LogWatcher;
  private fieldStore: PostgresFieldStore | null = null;
  private readonly schemaListeners = new Set<{ changed: (schemas: TableSchema[]) => void; failed: (error: unknown) => void }>();
  /** The schema check running now, and whether another was asked for meanwhile. */
  private following: Promise<void> | null = null;
  private followAgain = false;

  constructor(
    /** The app's pool. The store borrows clients from it and never ends it. */
    readonly pool: Pool,
    options: PostgresStoreOptions = {},
  ) {
    this.catalog = new Catalog(pool);
    this.watcher = new LogWatcher(
      pool,
      () => this.catalog.names.sequence,
      options.pollMs ?? 1000,
      options.onError ?? (() => {}),
      (why) => this.followSchema(why),
    );
    this.horizon = new HorizonReader(this.catalog, (pending) => this.watcher.notePending(pending));
    this.reads = new LogReader(this.catalog, this.horizon);
  }

  /** Field-level bookkeeping on the same database (loaded only when field sync is on). */
  async openFieldStore(): Promise<FieldStore> {
    const { PostgresFieldStore } = await import('./fields.js');
    this.fieldStore = new PostgresFieldStore(this.catalog, this);
    return this.fieldStore;
  }

  async init(targets: EntityTarget[]): Promise<TableSchema[]> {
    const schemas = await this.catalog.install(targets);
    await hashOldWriters(this.catalog);
    await this.horizon.establish();
    return schemas;
  }

  currentVersion(): Promise<number> {
    return this.reads.currentVersion();
  }

  readEntityLog(entity: string, since: number, limit: number): Promise<LogPage> {
    return this.reads.readLog(since, limit, entity);
  }

  async readLog(since: number, limit: number, entities?: readonly string[]): Promise<LogPage> {
    // The hub may finish a wake-up loop after the engine closed: nothing more to fan out.
    if (this.horizon.isClosed) return { changes: [], version: since, hasMore: false };
    const page = await this.reads.readLog(since, limit);
    if (entities) {
      const wanted = new Set(entities);
      page.changes = page.changes.filter((change) => wanted.has(change.entity));
    }
    return page;
  }

  snapshot(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotPage> {
    return this.reads.snapshot(entity, limit, after, atVersion);
  }

  snapshotJson(entity: string, limit: number, after?: string, atVersion?: number): Promise<SnapshotJson> {
    return this.reads.snapshotJson(entity, limit, after, atVersion);
  }

  raiseHorizon(entities: readonly string[]): Promise<number> {
    return transaction(this.catalog.pool, (client) => raiseHorizon(client, this.catalog.names, entities));
  }

  prunedAbove(since: number): Promise<PrunedHorizon[]> {
    return this.reads.prunedAbove(since);
  }

  retainedSince(entity: string): Promise<number> {
    return this.reads.retainedSince(entity);
  }

  push(batch: PushBatch): Promise<AppliedChange[]> {
    return runPush(this.catalog, new EntityPush(this.catalog, batch));
  }

  countRows(entity: string): Promise<number> {
    return this.reads.count(entity);
  }

  logSize(): Promise<number> {
    return this.reads.count();
  }

  cleanup(olderThanMs: number, clientsOlderThanMs: number): Promise<number> {
    return cleanup(this.catalog, olderThanMs, clientsOlderThanMs);
  }

  watch(onChange: () => void): () => void {
    return this.watcher.watch(onChange);
  }

  onSchemaChange(listener: (schemas: TableSchema[]) => void, onError: (error: unknown) => void = () => {}): () => void {
    const entry = { changed: listener, failed: onError };
    this.schemaListeners.add(entry);
    return () => this.schemaListeners.delete(entry);
  }

  /**
   * Look at the synced tables' shape (Catalog.refresh), one look at a time:
   * on the DDL notice, after every LISTEN (re)connect, and on the safety poll
   * when the DDL event trigger could not be installed.
   */
  private followSchema(why: SchemaCheck): void {
    if (why === 'poll' && this.catalog.followsDdl) return;
    if (this.horizon.isClosed) return;
    if (this.following) {
      this.followAgain = true;
      return;
    }
    this.following = (async () => {
      do {
        this.followAgain = false;
        await this.refreshSchema();
      } while (this.followAgain && !this.horizon.isClosed);
    })().finally(() => {
      this.following = null;
    });
  }

  private async refreshSchema(): Promise<void> {
    const fields = this.fieldStore;
    let found: Awaited<ReturnType<Catalog['refresh']>>;
    try {
      found = await this.catalog.refresh(async (client, schema) => fields?.reinstallTrigger(client, schema));
    } catch (error) {
      found = { changed: [], failed: [error] };
    }
    for (const schema of found.changed) fields?.adopt(schema);
    for (const { changed: listener, failed: report } of this.schemaListeners) {
      for (const error of found.failed) report(error);
      try {
        if (found.changed.length > 0) listener(found.changed);
      } catch (error) {
        report(error);
      }
    }
  }

  /**
   * Stop watching and release the LISTEN connection; waits (briefly) for reads
   * in flight so the app can end its pool right after. The pool stays open: it is the app's.
   */
  async close(): Promise<void> {
    const drained = this.horizon.close(); // refuses new reads at once
    await this.watcher.close();
    await this.following;
    await drained;
  }
}
