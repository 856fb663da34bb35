/**
 * The checks every request to the engine passes before it is served, in one
 * order for HTTP, SSE and WebSocket upgrades alike (docs/security.md):
 *
 * 1. `Host` names this server (DNS-rebinding protection on loopback);
 * 2. state changes and live connections (POST, event streams, sockets) come
 *    from an allowed origin and not cross-site (CSRF, cross-site WebSockets);
 * 3. `authorize` names the user (401/403).
 */
import { checkHost, checkOrigin, resolveUser } from '../core/access.js';
import type { Authorize, SyncUser } from '../core/config.js';
import type { LiveSessions } from '../core/sessions.js';
import { arrivedOverLoopback } from './node.js';

/** Who may reach the engine, shared by every transport. */
export interface Access {
  authorize?: Authorize;
  allowedOrigins?: string[];
  allowedHosts?: string[];
  /** Live connections: per-user slots, counts and rights re-checks. */
  sessions: LiveSessions;
}

/** What a request asks for: `read` (GET of data), `write` (POST) or `live` (event stream, socket). */
export type RequestKind = 'read' | 'write' | 'live';

/** What checks 1 and 2 read of a request: a Web Request, or a lighter head of a Node upgrade (`requestHead`). */
export interface RequestHead {
  readonly url: string;
  readonly headers: { get(name: string): string | null };
}

/** Run the checks for one request; resolves to its user (null without an authorize hook). */
export async function admit(request: Request, access: Access, kind: RequestKind): Promise<SyncUser | null> {
  checkRequest(request, access, kind);
  return resolveUser(access.authorize, request);
}

/** Checks 1 and 2 alone: all there is to admit when no authorize hook names the user. */
export function checkRequest(request: RequestHead, access: Access, kind: RequestKind): void {
  admitPublic(request, access);
  if (kind !== 'read') checkOrigin(request.headers, request.url, access.allowedOrigins);
}

/** Only host and origin, for the public client files (no authorization). */
export function admitPublic(request: RequestHead, access: Access): void {
  checkHost(new URL(request.url).host, arrivedOverLoopback(request), access);
}
