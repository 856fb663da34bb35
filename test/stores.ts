/**
 * The stores every shared behaviour test runs against. Each entry starts a
 * real server on a fresh database of that kind.
 */
import type { SyncEngineOptions } from '../src/core/config.js';
import { startServer, type TestServer } from './helpers.js';
import { type PgTestServer, rawSql, startPgServer, toPostgresParams } from './pg-helpers.js';

export interface StoreUnderTest {
  name: 'sqlite' | 'postgres';
  /** Start an engine + node:http server on a fresh database with the todos table. */
  start(options?: Partial<SyncEngineOptions> & { setupSql?: string }): Promise<TestServer>;
  /** Run raw SQL through a separate connection, as another process would. */
  externalWrite(server: TestServer, sql: string, params?: unknown[]): Promise<void>;
}

export const sqliteStore: StoreUnderTest = {
  name: 'sqlite',
  start: (options) => startServer(options),
  async externalWrite(server, sql, params = []) {
    const { default: Database } = await import('better-sqlite3');
    const other = new Database(server.dbPath);
    try {
      other.pragma('busy_timeout = 5000');
      other.prepare(sql).run(...params);
    } finally {
      other.close();
    }
  },
};

const pgServers = new WeakMap<TestServer, PgTestServer>();

/**
 * PostgreSQL: a fresh database per server on the local PostgreSQL (see
 * test/pg-helpers.ts). The shared suites' SQL is SQLite-flavoured; DDL and `?`
 * placeholders are translated. `server.db` is not a SQLite handle here (it is
 * the engine's pg Pool); `dbPath` is the database URL.
 */
export const postgresStore: StoreUnderTest = {
  name: 'postgres',
  async start(options) {
    const pgServer = await startPgServer(options);
    const server = { ...pgServer, db: pgServer.pool as unknown as TestServer['db'], dbPath: pgServer.dbUrl };
    pgServers.set(server, pgServer);
    return server;
  },
  async externalWrite(server, sql, params = []) {
    const pgServer = pgServers.get(server);
    if (!pgServer) throw new Error('externalWrite: not a PostgreSQL test server');
    await rawSql(pgServer.dbUrl, toPostgresParams(sql), params);
  },
};

/** Stores to run the shared suites against. RHTMX_TEST_STORES=sqlite (or postgres) narrows the list. */
export const STORES: StoreUnderTest[] = [sqliteStore, postgresStore].filter(
  (store) => !process.env.RHTMX_TEST_STORES || process.env.RHTMX_TEST_STORES.split(',').includes(store.name),
);
