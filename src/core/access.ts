/**
 * Access control: who is asking (authorize hook), from where (Origin and
 * Fetch-Metadata checks against CSRF and cross-site WebSockets), how many
 * live connections they hold, and which rows they may see and write.
 */
import type { Authorize, ReadRule, SyncUser, WriteRule } from './config.js';
import { SyncError } from './errors.js';
import { type Change, ErrorCode, type Row } from './protocol.js';
import type { ServerRowState, ValidatedChange } from './store.js';

/** Run the authorize hook; without one, everyone is anonymous and allowed. */
export async function resolveUser(authorize: Authorize | undefined, request: Request): Promise<SyncUser | null> {
  if (!authorize) return null;
  const user = await authorize(request);
  if (user === false) throw new SyncError(ErrorCode.Forbidden, 'forbidden', 403);
  if (user === null || user === undefined) throw new SyncError(ErrorCode.Unauthorized, 'sign in first', 401);
  if (typeof user !== 'object' || typeof user.id !== 'string' || user.id === '') {
    throw new TypeError('rhtmx-sync: authorize() must return a user with a string `id`, null or false');
  }
  return user;
}

/**
 * Refuse cross-site state changes and WebSockets. Browsers send `Origin` on
 * every cross-origin POST and WebSocket, and `Sec-Fetch-Site` on modern
 * engines; requests with neither come from non-browser clients, which CSRF
 * cannot forge, so they pass.
 */
export function checkOrigin(headers: Headers, requestUrl: string, allowedOrigins: readonly string[] | undefined): void {
  const origin = headers.get('origin');
  const site = headers.get('sec-fetch-site');
  if (origin && origin !== 'null') {
    const own = new URL(requestUrl).origin;
    const hostOrigin = headers.get('host') ? `${new URL(requestUrl).protocol}//${headers.get('host')}` : own;
    const allowed = allowedOrigins ?? [own, hostOrigin];
    if (!allowed.includes(origin)) {
      throw new SyncError(ErrorCode.Forbidden, `origin ${origin.slice(0, 100)} is not allowed`, 403);
    }
    return;
  }
  if (origin === 'null' || site === 'cross-site') {
    throw new SyncError(ErrorCode.Forbidden, 'cross-site request refused', 403);
  }
}

/** Counts live connections per user; anonymous connections are not limited here. */
export class ConnectionLimiter {
  private readonly counts = new Map<string, number>();

  constructor(private readonly maxPerUser: number) {}

  /** Take a slot for the user or refuse with 429; returns the release function. */
  acquire(user: SyncUser | null): () => void {
    if (!user) return () => {};
    const count = this.counts.get(user.id) ?? 0;
    if (count >= this.maxPerUser) {
      throw new SyncError(ErrorCode.RateLimited, `at most ${this.maxPerUser} live connections per user`, 429);
    }
    this.counts.set(user.id, count + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.counts.get(user.id) ?? 1) - 1;
      if (left <= 0) this.counts.delete(user.id);
      else this.counts.set(user.id, left);
    };
  }
}

/**
 * What a user sees of a change: itself, or, when the row is outside their read
 * scope, a delete (so a row that moves out of scope disappears from their
 * clients). Deletes carry no data and pass unchanged.
 */
export function scopeChange(change: Change, read: ReadRule | undefined, user: SyncUser | null): Change {
  if (!read || change.action === 'delete' || change.data === null) return change;
  if (safeRule(() => read(change.data as Row, user))) return change;
  return { ...change, action: 'delete', data: null };
}

/** Keep only rows inside the read scope (snapshots: rows never seen need no delete). */
export function inScope(row: Row | null, read: ReadRule | undefined, user: SyncUser | null): boolean {
  if (!read || row === null) return true;
  return safeRule(() => read(row, user));
}

/** A throwing rule denies: failing closed is the only safe reading of a broken rule. */
function safeRule(rule: () => boolean): boolean {
  try {
    return rule() === true;
  } catch {
    return false;
  }
}

/**
 * Check one change against the entity's rules inside the write transaction.
 * Throws 403 (rolling the whole push back) when the user may not make it.
 */
export function checkWrite(
  change: ValidatedChange,
  server: ServerRowState,
  primaryKey: string,
  rules: { read?: ReadRule; write?: WriteRule },
  user: SyncUser | null,
  index: number,
): void {
  const refuse = (reason: string) =>
    new SyncError(ErrorCode.Forbidden, `changes[${index}]: ${reason}`, 403, { id: change.id, mutation_id: change.mutationId });
  if (rules.write) {
    let verdict: boolean | string;
    try {
      verdict = rules.write({ action: change.action, id: change.id, data: change.data, current: server.row }, user);
    } catch {
      verdict = false;
    }
    if (verdict !== true) throw refuse(typeof verdict === 'string' ? verdict : 'not allowed to write this row');
    return;
  }
  if (!rules.read) return;
  // Without a write rule, a user may only touch rows they can see, and only leave them visible.
  if (server.row && !inScope(server.row, rules.read, user)) throw refuse('row is outside your scope');
  if (change.action !== 'delete') {
    const next: Row = { ...(server.row ?? {}), ...change.data };
    if (change.id !== null) next[primaryKey] = next[primaryKey] ?? change.id;
    if (!inScope(next, rules.read, user)) throw refuse('the row would be outside your scope');
  }
}

/** Client ids are per user: the same id from two users never shares exactly-once bookkeeping. */
export function scopedClientId(clientId: string | null, user: SyncUser | null): string | null {
  if (clientId === null || user === null) return clientId;
  return `${encodeURIComponent(user.id)}/${clientId}`;
}
