/** PostgreSQL store: being written (issue 4). */
import type { Pool } from 'pg';
import type { Store } from '../core/store.js';

export interface PostgresStoreOptions {
  pollMs?: number;
}

export class PostgresStore {
  constructor(_pool: Pool, _options: PostgresStoreOptions = {}) {
    throw new Error('rhtmx-sync: the PostgreSQL store is not available yet');
  }
}
export type { Store };
