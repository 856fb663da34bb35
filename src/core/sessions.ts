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
 *   connection keeps the rights it started with.
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

export class LiveSessions {
  private readonly sessions = new Set<LiveSession>();
  private readonly slots = new Map<string, number>();
  private timer: Timer | null = null;
  /** Connections past the first byte but not yet open (authorize running, handshake pending). */
  admitting = 0;

  constructor(
    private readonly maxPerUser: number,
    private readonly recheckMs: number,
  ) {}

  /**
   * Take a slot for `user` (429 when they hold `maxConnectionsPerUser`);
   * returns its release, which is safe to call any number of times.
   */
  acquire(user: SyncUser | null): () => void {
    if (!user) return () => {};
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
