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

/** Run the checks for one request; resolves to its user (null without an authorize hook). */
export async function admit(request: Request, access: Access, kind: RequestKind): Promise<SyncUser | null> {
  admitPublic(request, access);
  if (kind !== 'read') checkOrigin(request.headers, request.url, access.allowedOrigins);
  return resolveUser(access.authorize, request);
}

/** Only host and origin, for the public client files (no authorization). */
export function admitPublic(request: Request, access: Access): void {
  checkHost(new URL(request.url).host, arrivedOverLoopback(request), access);
}
