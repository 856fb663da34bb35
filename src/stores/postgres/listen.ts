/**
 * Watching the log: one dedicated LISTEN connection per store, woken by the
 * capture trigger's payload-free NOTIFY, plus a safety poll of the version
 * sequence and a quick re-check while the horizon lags behind a writer.
 *
 *   no watchers ──watch()──▶ connecting ──LISTEN ok──▶ listening (fire once: catch up)
 *        ▲                       ▲                          │ error / end
 *        └──last stop()──────────┴──── jittered backoff ◀───┘
 *
 * A NOTIFY sent while the connection is down reaches nobody, so every
 * (re)connect fires once and the watchers re-read the log from their cursor.
 *
 * The DDL event trigger (schema.ts) sends SCHEMA_NOTICE on the same channel
 * after an ALTER TABLE of a synced table: that wakes `onSchema` instead. A
 * (re)connect wakes it too (a notice may have been missed), and so does
 * every safety poll (the store ignores those while the event trigger exists).
 */
import type { Client, Pool } from 'pg';
import { claimedVersionSql } from './horizon.js';
import { NOTIFY_CHANNEL, SCHEMA_NOTICE } from './schema.js';

/** Why the store should look at the synced tables' shape. */
export type SchemaCheck = 'notice' | 'reconnect' | 'poll';

/** `application_name` of the LISTEN connection, so operators (and tests) can find it in pg_stat_activity. */
export const LISTEN_APPLICATION_NAME = 'rhtmx-sync-listen';

/** Wakes watchers soon after any committed write to the log, by anyone. */
export class LogWatcher {
  private watchers = new Set<() => void>();
  private listener: Client | null = null;
  private listenTimer: NodeJS.Timeout | null = null;
  private listenBackoffMs = 100;
  private pollTimer: NodeJS.Timeout | null = null;
  private recheckTimer: NodeJS.Timeout | null = null;
  private recheckDelayMs = 5;
  /** Claimed versions not yet proved safe exist: someone must read again soon. */
  private pending = false;
  private lastPolledClaim = -1;
  private closed = false;

  constructor(
    private readonly pool: Pool,
    /** The version sequence's quoted name (known once the store is installed). */
    private readonly sequence: () => string,
    private readonly pollMs: number,
    private readonly onError: (error: unknown) => void,
    /** Follow schema changes (see the file comment); must not throw. */
    private readonly onSchema: (why: SchemaCheck) => void = () => {},
  ) {}

  /** Call `onChange` on every wake-up; returns the stop function. */
  watch(onChange: () => void): () => void {
    this.watchers.add(onChange);
    if (this.watchers.size === 1 && !this.closed) this.start();
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0) this.stop();
    };
  }

  /**
   * After a read that could not prove every claimed version safe (a writer
   * was still in flight), read again soon: its commit may send no further
   * NOTIFY that concerns us (e.g. it was an unrelated transaction holding
   * xmin back). Backs off while the horizon stays behind.
   */
  notePending(pending: boolean): void {
    this.pending = pending;
    if (!pending) {
      this.recheckDelayMs = 5;
      return;
    }
    if (this.recheckTimer || this.watchers.size === 0 || this.closed) return;
    const delay = this.recheckDelayMs;
    this.recheckDelayMs = Math.min(this.recheckDelayMs * 2, this.pollMs);
    this.recheckTimer = setTimeout(() => {
      this.recheckTimer = null;
      this.fire();
    }, delay);
    this.recheckTimer.unref();
  }

  /** Stop for good and end the LISTEN connection. */
  async close(): Promise<void> {
    this.closed = true;
    const listener = this.listener;
    this.stop();
    this.watchers.clear();
    if (listener) await listener.end().catch(() => {});
  }

  private fire(): void {
    for (const watcher of this.watchers) {
      try {
        watcher();
      } catch (error) {
        this.onError(error);
      }
    }
  }

  private start(): void {
    void this.connect();
    this.pollTimer = setInterval(() => void this.poll(), this.pollMs);
    this.pollTimer.unref();
  }

  private stop(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.recheckTimer) clearTimeout(this.recheckTimer);
    if (this.listenTimer) clearTimeout(this.listenTimer);
    this.pollTimer = this.recheckTimer = this.listenTimer = null;
    const listener = this.listener;
    this.listener = null;
    if (listener) void listener.end().catch(() => {});
  }

  /** A dedicated connection (not a pooled one: LISTEN holds it for good). */
  private async connect(): Promise<void> {
    this.listenTimer = null;
    if (this.closed || this.watchers.size === 0) return;
    const ClientClass = (this.pool as unknown as { Client: new (config: object) => Client }).Client;
    const client = new ClientClass({ ...this.pool.options, application_name: LISTEN_APPLICATION_NAME, keepAlive: true });
    this.listener = client;
    const lost = (error?: unknown) => {
      if (error) this.onError(error);
      if (this.listener !== client) return;
      this.listener = null;
      void client.end().catch(() => {});
      this.scheduleReconnect();
    };
    client.on('error', lost);
    client.on('end', () => lost());
    client.on('notification', (message) => (message.payload === SCHEMA_NOTICE ? this.onSchema('notice') : this.fire()));
    try {
      await client.connect();
      await client.query(`LISTEN ${NOTIFY_CHANNEL}`);
      if (this.listener !== client) {
        await client.end().catch(() => {});
        return;
      }
      this.listenBackoffMs = 100;
      // Whatever was committed while we were not listening sent its NOTIFY to nobody: catch up from the log.
      this.fire();
      this.onSchema('reconnect');
    } catch (error) {
      lost(error);
    }
  }

  private scheduleReconnect(): void {
    if (this.closed || this.watchers.size === 0 || this.listenTimer) return;
    // Full jitter: many nodes losing the database at once must not reconnect in lockstep.
    const delay = this.listenBackoffMs / 2 + Math.random() * (this.listenBackoffMs / 2);
    this.listenBackoffMs = Math.min(this.listenBackoffMs * 2, 5000);
    this.listenTimer = setTimeout(() => void this.connect(), delay);
    this.listenTimer.unref();
  }

  /** Safety net: a missed NOTIFY (or one never sent) must not strand a change. */
  private async poll(): Promise<void> {
    if (this.closed) return;
    this.onSchema('poll');
    try {
      const { rows } = await this.pool.query<{ claimed: string }>(claimedVersionSql(this.sequence()));
      const claimed = Number(rows[0]?.claimed ?? 0);
      if (claimed !== this.lastPolledClaim || this.pending) {
        this.lastPolledClaim = claimed;
        this.fire();
      }
    } catch (error) {
      this.onError(error);
    }
  }
}
