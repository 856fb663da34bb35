/**
 * The stores every shared behaviour test runs against. Each entry starts a
 * real server on a fresh database of that kind.
 */
import type { SyncEngineOptions } from '../src/core/config.js';
import { type TestServer, startServer } from './helpers.js';

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

/** Stores to run the shared suites against. The PostgreSQL entry is added by its module. */
export const STORES: StoreUnderTest[] = [sqliteStore];
