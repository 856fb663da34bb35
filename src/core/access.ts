/**
 * Access control: who is asking (authorize hook), from where (Origin and
 * Fetch-Metadata checks against CSRF and cross-site WebSockets), how many
 * live connections they hold, and which rows they may see and write.
 */
import type { Authorize, ReadRule, SyncUser, WriteRule } from './config.js';
import { SyncError } from './errors.js';
import { type Change, ErrorCode, type FieldChange, ROW_FIELD, type Row } from './protocol.js';
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
 * Run the authorize hook again for a connection opened as `previous`. The
 * answer is the user's current context; a session now refused (401/403), or
 * now naming another user, throws, and the connection must close.
 */
export async function reauthorize(authorize: Authorize | undefined, request: Request, previous: SyncUser | null): Promise<SyncUser | null> {
  if (!authorize) return previous;
  const user = await resolveUser(authorize, request).catch((error: unknown) => {
    if (error instanceof SyncError) throw error;
    throw new SyncError(ErrorCode.Unauthorized, 'session could not be re-checked', 401);
  });
  if (user?.id !== previous?.id) throw new SyncError(ErrorCode.Unauthorized, 'session ended', 401);
  return user;
}

/** A user's view of live changes and the key shared by every connection with the same view. */
export interface LiveScope {
  key: string;
  /** One entity's part of the key: what its read rule depends on (null when it has none). */
  keyFor: (entity: string) => string | null;
  apply: (change: Change) => Change;
  /** The field changes this user may see; `rowOf` gives each change's row as the same batch leaves it. */
  applyFields: (changes: readonly FieldChange[], rowOf: RowLookup) => FieldChange[];
}

/** A row by entity and id: the row, null when it is gone, undefined when unknown. */
export type RowLookup = (entity: string, id: string) => Row | null | undefined;

/** A deep copy of a user context (a shallow one when it holds what cannot be cloned, e.g. functions). */
export function snapshotUser(user: SyncUser | null): SyncUser | null {
  if (user === null) return null;
  try {
    return structuredClone(user);
  } catch {
    return { ...user };
  }
}

/** JSON with object keys sorted, so equal contexts give equal strings whatever their key order. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, item: unknown) =>
    item && typeof item === 'object' && !Array.isArray(item)
      ? Object.fromEntries(Object.entries(item as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : item,
  );
}

const LOOPBACK_HOST = /^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)*\.localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])$/i;

/** The host name of a `Host` header value (`name`, `name:port`, `[v6]:port`), lower-cased, without the port. */
export function hostName(host: string): string {
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d*$/, '');
  return name.toLowerCase();
}

/**
 * DNS-rebinding protection. A page on an attacker's domain that re-points that
 * domain at 127.0.0.1 reaches a development server as a same-origin request,
 * with the attacker's name in `Host`. So a request that arrived over a loopback
 * address must name a loopback host, unless the app listed its hosts or origins.
 */
export function checkHost(
  host: string | null,
  overLoopback: boolean,
  allowed: { allowedHosts?: readonly string[]; allowedOrigins?: readonly string[] },
): void {
  if (!host) return;
  const name = hostName(host);
  if (allowed.allowedHosts) {
    if (allowed.allowedHosts.some((entry) => entry.toLowerCase() === name) || LOOPBACK_HOST.test(name)) return;
    throw new SyncError(ErrorCode.Forbidden, `host ${name.slice(0, 100)} is not allowed (allowedHosts)`, 403);
  }
  if (!overLoopback || allowed.allowedOrigins || LOOPBACK_HOST.test(name)) return;
  throw new SyncError(
    ErrorCode.Forbidden,
    `host ${name.slice(0, 100)} is not allowed on a loopback address; list it in allowedHosts (see docs/security.md)`,
    403,
  );
}

/**
 * Refuse cross-site state changes and WebSockets. Browsers send `Origin` on
 * every cross-origin POST and WebSocket, and `Sec-Fetch-Site` on modern
 * engines; requests with neither come from non-browser clients, which CSRF
 * cannot forge, so they pass.
 */
export function checkOrigin(
  headers: { get(name: string): string | null },
  requestUrl: string,
  allowedOrigins: readonly string[] | undefined,
): void {
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

/**
 * Field changes as `user` sees them, the field-level twin of `scopeChange`:
 * a field of a row in scope passes; a row outside it becomes one row delete
 * (`*`), so it disappears from clients that had it, or, in a snapshot, is left
 * out. A field change whose row cannot be judged is dropped (failing closed).
 */
export function scopeFieldChanges(
  changes: readonly FieldChange[],
  readOf: (entity: string) => ReadRule | undefined,
  user: SyncUser | null,
  rowOf: RowLookup,
  snapshot = false,
): FieldChange[] {
  const kept: FieldChange[] = [];
  const removed = new Set<string>();
  for (const change of changes) {
    const read = readOf(change.entity);
    if (!read || change.action === 'delete') {
      kept.push(change);
      continue;
    }
    const row = rowOf(change.entity, change.entity_id);
    if (row && safeRule(() => read(row, user))) {
      kept.push(change);
      continue;
    }
    const key = `${change.entity}\u0000${change.entity_id}`;
    if (snapshot || row === undefined || row === null || removed.has(key)) continue;
    removed.add(key);
    kept.push({ ...change, field: ROW_FIELD, value: null, action: 'delete' });
  }
  return kept;
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
      verdict = rules.write({ action: performedAction(change, server), id: change.id, data: change.data, current: server.row }, user);
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

/**
 * The action a change really performs on the server row, which is what a
 * write rule must judge: a `create` naming an existing row updates it, an
 * `update` of a row the server does not have creates it.
 */
export function performedAction(change: ValidatedChange, server: ServerRowState): ValidatedChange['action'] {
  if (change.action === 'create' && server.row !== null) return 'update';
  if (change.action === 'update' && server.row === null) return 'create';
  return change.action;
}

/**
 * What the log says of a push's writer: `#` and 128 bits of the client id's
 * SHA-256. Changes still show which writes came from one client (the field
 * merge breaks HLC ties with it), but never the id a push must name: copied
 * from the live feed, a raw id and a huge `mutation_id` would make that
 * client's later pushes be answered as duplicates. `#` never starts a client
 * id, so the stores' one-time rewrite of older logs (`hashOldWriters`) can tell
 * the two apart.
 */
export async function writerOf(clientId: string | null): Promise<string | null> {
  if (clientId === null) return null;
  const known = writers.get(clientId);
  if (known !== undefined) return known;
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(clientId)));
  let writer = '#';
  for (const byte of digest.subarray(0, 16)) writer += byte.toString(16).padStart(2, '0');
  // A client pushes again and again: its digest (a tenth of a one-change push's CPU) is worked out once.
  if (writers.size >= WRITER_CACHE) writers.delete(writers.keys().next().value as string);
  writers.set(clientId, writer);
  return writer;
}

/** Client ids whose writer digest is known, oldest first, at most `WRITER_CACHE`. */
const writers = new Map<string, string>();
const WRITER_CACHE = 4096;

/** Client ids are per user: the same id from two users never shares exactly-once bookkeeping. */
export function scopedClientId(clientId: string | null, user: SyncUser | null): string | null {
  if (clientId === null || user === null) return clientId;
  return `${encodeURIComponent(user.id)}/${clientId}`;
}
