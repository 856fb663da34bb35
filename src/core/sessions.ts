/**
 * LiveSessions: every open live connection of the engine (entity and field
 * WebSockets, SSE streams), whatever transport, in one place. It owns three
 * things that must never drift apart:
 *
 * - per-user slots (`maxConnectionsPerUser`): taken before a connection is
 *   admitted, given back exactly once when it ends, however it ends (closed,
 *   reset mid-handshake, abandoned while `authorize` was still running);
 * - the connection counts reported by `engine.metrics()` and `/metrics`;
 * - rights re-checks: one timer for all connections re-runs `authorize` every
 *   `rightsRecheckMs`, and `refresh(userId)` does it at once, so no open
 *   connection keeps the rights it started with;
 * - row budgets (rows read per second) per principal, the user or, without
 *   one, the remote address: shared by all of its sockets and kept across
 *   reconnects, so closing a socket and opening another never refills it.
 */
import type { SyncUser } from './config.js';
import { SyncError } from './errors.js';
import { ErrorCode } from './protocol.js';

/** One open connection, as the registry sees it. */
export interface LiveSession {
  readonly kind: 'websocket' | 'sse';
  /** The user the connection runs as now (null without an authorize hook). */
  readonly user: SyncUser | null;
  /** Re-run authorization: close the connection if refused, re-scope it if its rights changed. */
  recheck(): Promise<void>;
}

type Timer = ReturnType<typeof setInterval>;

/** A token bucket refilled continuously at `rate` per second, holding at most `rate`. */
export class Budget {
  private tokens: number;
  private refilledAt = Date.now();

  constructor(private readonly rate: number) {
    this.tokens = rate;
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.refilledAt) / 1000) * this.rate);
    this.refilledAt = now;
  }

  /** Take one token if there is one. */
  take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Spend `amount`, possibly into debt (the cost of work already done). */
  spend(amount: number): void {
    this.refill();
    this.tokens -= amount;
  }

  /** Milliseconds until the bucket is out of debt (0 when it is not in debt). */
  waitMs(): number {
    this.refill();
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / this.rate) * 1000);
  }

  /** Whether the bucket is full again (forgetting it then loses nothing). */
  get full(): boolean {
    this.refill();
    return this.tokens >= this.rate;
  }
}

/** What an anonymous connection gives back: no slot was taken (one function for all of them). */
const NOTHING_HELD = (): void => {};

/** Principals whose budgets are kept while they hold no connection, before full ones are forgotten. */
const KEPT_IDLE_BUDGETS = 1024;

export class LiveSessions {
  private readonly sessions = new Set<LiveSession>();
  private readonly slots = new Map<string, number>();
  private readonly budgets = new Map<string, { rows: Budget; holders: number }>();
  private timer: Timer | null = null;
  /** Connections past the first byte but not yet open (authorize running, handshake pending). */
  admitting = 0;

  constructor(
    private readonly maxPerUser: number,
    private readonly recheckMs: number,
    private readonly rowsPerSecond = 20_000,
  ) {}

  /**
   * The row budget of `user`, or of `address` for anonymous connections, and
   * its release. A principal's budget outlives its connections: one that
   * reconnects finds it as it left it (in debt, if it spent it).
   */
  rowBudgetFor(user: SyncUser | null, address: string | undefined): { rows: Budget; release: () => void } {
    const key = user ? `user:${user.id}` : `address:${address ?? 'unknown'}`;
    let entry = this.budgets.get(key);
    if (!entry) {
      if (this.budgets.size >= KEPT_IDLE_BUDGETS) this.forgetFullBudgets();
      entry = { rows: new Budget(this.rowsPerSecond), holders: 0 };
      this.budgets.set(key, entry);
    }
    entry.holders++;
    const held = entry;
    let released = false;
    return {
      rows: held.rows,
      release: () => {
        if (released) return;
        released = true;
        held.holders--;
      },
    };
  }

  /** Drop budgets nobody holds that have refilled: keeping them would change nothing. */
  private forgetFullBudgets(): void {
    for (const [key, entry] of this.budgets) {
      if (entry.holders === 0 && entry.rows.full) this.budgets.delete(key);
    }
  }

  /**
   * Take a slot for `user` (429 when they hold `maxConnectionsPerUser`);
   * returns its release, which is safe to call any number of times.
   */
  acquire(user: SyncUser | null): () => void {
    if (!user) return NOTHING_HELD;
    const count = this.slots.get(user.id) ?? 0;
    if (count >= this.maxPerUser) {
      throw new SyncError(ErrorCode.RateLimited, `at most ${this.maxPerUser} live connections per user`, 429);
    }
    this.slots.set(user.id, count + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.slots.get(user.id) ?? 1) - 1;
      if (left <= 0) this.slots.delete(user.id);
      else this.slots.set(user.id, left);
    };
  }

  /** Count a connection as open until the returned function is called (idempotent). */
  add(session: LiveSession): () => void {
    this.sessions.add(session);
    this.startTimer();
    return () => {
      this.sessions.delete(session);
      if (this.sessions.size === 0) this.stopTimer();
    };
  }

  /** Open connections of one kind. */
  count(kind: LiveSession['kind']): number {
    let count = 0;
    for (const session of this.sessions) if (session.kind === kind) count++;
    return count;
  }

  /** Re-check the rights of every connection of `userId` (every connection when omitted) now. */
  async refresh(userId?: string): Promise<void> {
    const due = [...this.sessions].filter((session) => userId === undefined || session.user?.id === userId);
    await Promise.all(due.map((session) => session.recheck().catch(() => {})));
  }

  private startTimer(): void {
    if (this.timer || this.recheckMs <= 0) return;
    this.timer = setInterval(() => void this.refresh(), this.recheckMs);
    (this.timer as { unref?: () => void }).unref?.();
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  close(): void {
    this.stopTimer();
  }
}
