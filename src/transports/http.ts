/**
 * The engine's HTTP face as a Web-standard handler: `(Request) => Response`.
 * Every framework adapter funnels into this one function.
 */
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import type { SyncLimits, SyncUser } from '../core/config.js';
import { SyncError, toSyncError } from '../core/errors.js';
import type { ChangeHub } from '../core/hub.js';
import { ErrorCode } from '../core/protocol.js';
import type { SyncService } from '../core/sync-service.js';
import { parseCursor, parseJson, parseLimit } from '../core/validation.js';
import type { ClientAssets } from './assets.js';
import { type Access, admit, admitPublic } from './gate.js';
import { openEventStream } from './sse.js';

const gzipAsync = promisify(gzip);
/** Below this, gzip costs more than it saves. */
const GZIP_MIN_BYTES = 1024;

export interface HttpRoutesOptions extends Access {
  basePath: string;
  limits: SyncLimits;
  heartbeatMs: number;
  assets: ClientAssets;
  /** Extra routes (field-level sync) tried after the entity routes. */
  extra?: (request: Request, url: URL) => Promise<Response | null>;
  onError?: (error: unknown) => void;
}

/** A JSON response, gzipped when the client accepts it and it is worth it. */
export async function jsonResponse(request: Request, body: unknown, status = 200): Promise<Response> {
  const text = JSON.stringify(body);
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    vary: 'accept-encoding',
  };
  if (text.length >= GZIP_MIN_BYTES && /\bgzip\b/.test(request.headers.get('accept-encoding') ?? '')) {
    headers['content-encoding'] = 'gzip';
    return new Response(await gzipAsync(text), { status, headers });
  }
  return new Response(text, { status, headers });
}

export function errorResponse(error: SyncError): Response {
  return new Response(JSON.stringify(error.toBody()), {
    status: error.status,
    headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
  });
}

/** Read a request body as text, refusing it as soon as it passes the limit. */
export async function readBody(request: Request, maxBytes: number): Promise<string> {
  const declared = Number(request.headers.get('content-length') ?? '0');
  if (declared > maxBytes) throw tooLarge(maxBytes);
  if (!request.body) return '';
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch {
      // The client reset the connection mid-body: nobody is left to answer, and it is no server fault.
      throw new SyncError(ErrorCode.BadRequest, 'request body aborted', 400);
    }
    const { done, value } = chunk;
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}

const tooLarge = (maxBytes: number) => new SyncError(ErrorCode.TooLarge, `request body exceeds ${maxBytes} bytes`, 413);

/**
 * A push body must say it is JSON: `text/plain` and form bodies are what a
 * cross-site page can send without a preflight, so they are refused (415)
 * before anything is read.
 */
export function requireJson(request: Request): void {
  const type = request.headers.get('content-type') ?? '';
  if (!/^application\/([\w.+-]+\+)?json\s*(;|$)/i.test(type)) {
    throw new SyncError(
      ErrorCode.UnsupportedMediaType,
      `a push must be sent as Content-Type: application/json (got ${JSON.stringify(type.slice(0, 64)) || 'none'})`,
      415,
    );
  }
}

/** The answer for a WebSocket path asked for over plain HTTP. */
export const upgradeRequired = () => new SyncError(ErrorCode.UpgradeRequired, 'connect with a WebSocket', 426);

export class HttpRoutes {
  constructor(
    private readonly service: SyncService,
    private readonly hub: ChangeHub,
    private readonly options: HttpRoutesOptions,
  ) {}

  /** Answer a request under the base path; null when the path is not ours. */
  async handle(request: Request): Promise<Response | null> {
    const url = new URL(request.url);
    try {
      const response = await this.route(request, url);
      if (response) return response;
      return this.options.extra ? await this.options.extra(request, url) : null;
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      return errorResponse(syncError);
    }
  }

  private async route(request: Request, url: URL): Promise<Response | null> {
    const base = this.options.basePath;
    if (url.pathname !== base && !url.pathname.startsWith(`${base}/`)) return null;
    const rest = url.pathname.slice(base.length + 1);
    const method = request.method.toUpperCase();
    // The client files are public; everything else is data and goes through authorization.
    if (rest === 'client.js' || rest === 'field-client.js' || rest === 'sw.js') {
      admitPublic(request, this.options);
      return this.asset(request, rest, method);
    }
    const kind = rest === 'events' ? 'live' : method === 'GET' || method === 'HEAD' ? 'read' : 'write';
    const user = await admit(request, this.options, kind);
    switch (rest) {
      case 'events':
        if (method !== 'GET') throw methodNotAllowed(method, rest);
        return this.events(request, url, user);
      case 'ws':
      case 'field-ws':
        throw upgradeRequired();
      case 'schema':
        if (method !== 'GET') throw methodNotAllowed(method, rest);
        return jsonResponse(request, await this.service.schema());
    }
    let entity: string;
    try {
      entity = decodeURIComponent(rest);
    } catch {
      throw new SyncError(ErrorCode.NotFound, 'malformed path', 404);
    }
    if (entity === '' || entity.includes('/')) {
      throw new SyncError(ErrorCode.NotFound, `no sync route ${JSON.stringify(url.pathname.slice(0, 100))}`, 404);
    }
    if (method === 'GET' || method === 'HEAD') {
      const since = parseCursor(url.searchParams.get('since'), 'since', 0);
      const limit = parseLimit(url.searchParams.get('limit'), this.options.limits);
      const snapshot = url.searchParams.get('snapshot');
      return jsonResponse(request, await this.service.pull(entity, { since, limit, snapshot }, user));
    }
    if (method === 'POST') {
      this.service.entity(entity);
      requireJson(request);
      const body = parseJson(await readBody(request, this.options.limits.maxBodyBytes), this.options.limits);
      const response = await this.service.push(entity, body, user);
      this.hub.wake();
      return jsonResponse(request, response);
    }
    throw methodNotAllowed(method, entity);
  }

  private async asset(request: Request, name: string, method: string): Promise<Response> {
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, name);
    return this.options.assets.respond(request, name);
  }

  private events(request: Request, url: URL, user: SyncUser | null): Response {
    const requested = url.searchParams.get('entities');
    const entities = requested ? this.service.entityList(requested.split(',').filter(Boolean)) : this.service.entityNames;
    // EventSource resends the last `id:` it saw as Last-Event-ID; `?since=` serves first connections.
    const lastEventId = request.headers.get('last-event-id') ?? url.searchParams.get('lastEventId');
    const since = lastEventId ? parseCursor(lastEventId, 'Last-Event-ID', 0) : parseCursor(url.searchParams.get('since'), 'since', -1);
    // Abandoned while authorize ran: no slot, no subscription.
    if (request.signal.aborted) throw new SyncError(ErrorCode.BadRequest, 'request abandoned', 400);
    const release = this.options.sessions.acquire(user);
    return openEventStream({
      hub: this.hub,
      user,
      scopeFor: (next) => this.service.liveScope(next),
      authorize: this.options.authorize,
      request,
      sessions: this.options.sessions,
      onClose: release,
      entities,
      since: since >= 0 ? since : undefined,
      heartbeatMs: this.options.heartbeatMs,
      maxBufferedBytes: this.options.limits.maxBufferedBytes,
      signal: request.signal,
    });
  }
}

const methodNotAllowed = (method: string, path: string) =>
  new SyncError(ErrorCode.MethodNotAllowed, `${method.slice(0, 16)} is not allowed on ${path.slice(0, 64)}`, 405);
