/**
 * The one way this store runs SQL that writes or needs one snapshot: a
 * pooled client, BEGIN … COMMIT, ROLLBACK on any error, and the client given
 * back to the pool whatever happens (destroyed when even ROLLBACK failed, so a
 * broken connection is never handed out again).
 */
import type { Pool, PoolClient } from 'pg';
import { SyncError } from '../../core/errors.js';
import { isChangeError, isRetryable } from './errors.js';

/** Attempts of a retried transaction (a deadlock victim usually wins the second time). */
const MAX_ATTEMPTS = 5;

/** How `transaction` runs. */
export interface TransactionOptions {
  /** Run `work` again, in a new transaction, when PostgreSQL kills it for a deadlock or serialization failure. */
  retry?: boolean;
  /** The statement that opens the transaction (default `BEGIN`). */
  begin?: string;
  /** Statements on the same connection before the transaction opens (the horizon proof reads before its snapshot). */
  before?: (client: PoolClient) => Promise<void>;
}

/** Run `work` in one transaction on a client borrowed from `pool`; returns what it returns. */
export async function transaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken: Error | undefined;
    // A connection dying while checked out emits 'error' with no pool listener attached, which would
    // crash the process: record it instead, so the client is destroyed on release.
    const lost = (error: Error) => {
      broken = error;
    };
    client.on('error', lost);
    try {
      await options.before?.(client);
      await client.query(options.begin ?? 'BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await client.query('ROLLBACK').catch((rollbackError: Error) => {
        broken = rollbackError;
      });
      // Two pushes locking the same rows in opposite orders: PostgreSQL kills one; run it again.
      if (options.retry && isRetryable(error) && attempt < MAX_ATTEMPTS) continue;
      throw error;
    } finally {
      client.removeListener('error', lost);
      client.release(broken);
    }
  }
}

/** What `savepoint` made of one change's work: its value, or the change error that rolled it back. */
export type Attempt<T> = { ok: true; value: T } | { ok: false; error: unknown };

/**
 * Run one change's `work` under a savepoint, so a bad change (see
 * isChangeError) is undone and rejected alone while the rest of the push
 * applies. Anything else propagates and aborts the transaction; so does a
 * SyncError (a forbidden change rolls the whole push back).
 */
export async function savepoint<T>(client: PoolClient, work: () => Promise<T>): Promise<Attempt<T>> {
  await client.query('SAVEPOINT rhtmx_change');
  try {
    const value = await work();
    await client.query('RELEASE SAVEPOINT rhtmx_change');
    return { ok: true, value };
  } catch (error) {
    if (error instanceof SyncError || !isChangeError(error)) throw error;
    await client.query('ROLLBACK TO SAVEPOINT rhtmx_change; RELEASE SAVEPOINT rhtmx_change');
    return { ok: false, error };
  }
}
