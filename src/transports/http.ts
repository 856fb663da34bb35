/**
 * The engine's HTTP face as a Web-standard handler: `(Request) => Response`.
 * Every framework adapter funnels into this one function.
 */
import { pipeline, Readable } from 'node:stream';
import { promisify } from 'node:util';
import { createGzip, gzip } from 'node:zlib';
import type { SyncLimits, SyncUser } from '../core/config.js';
import { SyncError, toSyncError } from '../core/errors.js';
import type { FieldService } from '../core/field/service.js';
import type { ChangeHub } from '../core/hub.js';
import { ErrorCode } from '../core/protocol.js';
import type { PullParams, SyncService } from '../core/sync-service.js';
import { parseCursor, parseJson, parseLimit } from '../core/validation.js';
import type { ClientAssets } from './assets.js';
import { type Access, admit, admitPublic } from './gate.js';
import { abandoned, nodeBody, tooLarge, wholeBody } from './node.js';
import { openEventStream } from './sse.js';

const gzipAsync = promisify(gzip);
/** Below this, gzip costs more than it saves. */
const GZIP_MIN_BYTES = 1024;

export interface HttpRoutesOptions extends Access {
  basePath: string;
  fieldBasePath: string;
  limits: SyncLimits;
  heartbeatMs: number;
  assets: ClientAssets;
  onError?: (error: unknown) => void;
}

/** A JSON response, gzipped when the client accepts it and it is worth it. */
export function jsonResponse(request: Request, body: unknown, status = 200): Promise<Response> {
  return jsonTextResponse(request, JSON.stringify(body), status);
}

const acceptsGzip = (request: Request) => /\bgzip\b/.test(request.headers.get('accept-encoding') ?? '');

const responseHeaders = (type: string): Record<string, string> => ({
  'content-type': `${type}; charset=utf-8`,
  'cache-control': 'no-store',
  vary: 'accept-encoding',
});

/** `jsonResponse` of a body already serialized. */
async function jsonTextResponse(request: Request, text: string, status = 200): Promise<Response> {
  const headers = responseHeaders('application/json');
  if (text.length >= GZIP_MIN_BYTES && acceptsGzip(request)) {
    headers['content-encoding'] = 'gzip';
    const body = await gzipAsync(text);
    return wholeBody(new Response(body, { status, headers }), body);
  }
  return wholeBody(new Response(text, { status, headers }), text);
}

/** A pull page: its response (where the next page starts) and the JSON text that is sent. */
export type PageRead = (params: PullParams) => Promise<{ page: { version: number; has_more: boolean; next?: string }; text: string }>;

/**
 * A pull answer. With `stream=1` it is every page from `params` on, one JSON
 * line each, until a page says nothing more follows (docs/protocol.md,
 * "Streamed pull"): one response instead of a round trip per page, each page
 * read while the one before is on the wire, gzipped fast. The first page is
 * read before answering, so its refusal is a plain HTTP error; a later one
 * ends the stream with an error line, and the client resumes from the last
 * page it applied.
 */
export async function pullResponse(request: Request, params: PullParams, read: PageRead, onError?: (error: unknown) => void) {
  const first = await read(params);
  if (!params.streamed || !first.page.has_more) return jsonTextResponse(request, first.text);
  async function* lines(): AsyncGenerator<string> {
    let current = first;
    for (;;) {
      yield `${current.text}\n`;
      const { page } = current;
      if (!page.has_more) return;
      const next = page.next
        ? { since: 0, limit: params.limit, snapshot: page.next, streamed: true }
        : { since: page.version, limit: params.limit, streamed: true };
      try {
        current = await read(next);
      } catch (error) {
        const refusal = toSyncError(error);
        if (refusal.status >= 500) onError?.(error);
        yield `${JSON.stringify(refusal.toBody())}\n`;
        return;
      }
    }
  }
  const headers = responseHeaders('application/x-ndjson');
  // One page read ahead of the socket: memory stays a page or two per stream, however slow the reader.
  const source = Readable.from(lines(), { objectMode: false, highWaterMark: 1 });
  if (!acceptsGzip(request)) return new Response(Readable.toWeb(source) as ReadableStream<Uint8Array>, { headers });
  headers['content-encoding'] = 'gzip';
  const body = pipeline(source, createGzip({ level: 1 }), () => {});
  return new Response(Readable.toWeb(body) as ReadableStream<Uint8Array>, { headers });
}

/** Read a request body as text, refusing it as soon as it passes the limit (a Node-bridged body from its Node stream). */
export async function readBody(request: Request, maxBytes: number): Promise<string> {
  const declared = Number(request.headers.get('content-length') ?? '0');
  if (declared > maxBytes) throw tooLarge(maxBytes);
  // A web ReadableStream is async iterable in Node 20 (the DOM typings do not say so).
  const source = nodeBody(request) ?? (request.body as AsyncIterable<Uint8Array> | null);
  if (!source) return '';
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const chunk of source) {
      total += chunk.byteLength;
      // Leaving the loop cancels a web body; a Node body is left unread, its connection closed by the answer.
      if (total > maxBytes) throw tooLarge(maxBytes);
      chunks.push(chunk);
    }
  } catch (error) {
    if (error instanceof SyncError) throw error;
    // The client reset the connection mid-body: nobody is left to answer, and it is no server fault.
    throw new SyncError(ErrorCode.BadRequest, 'request body aborted', 400);
  }
  return new TextDecoder().decode(chunks.length === 1 ? (chunks[0] as Uint8Array) : Buffer.concat(chunks));
}

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

/** A route's handler: the request, its URL, the path's parameters and the admitted user. */
type Handler = (request: Request, url: URL, params: string[], user: SyncUser | null) => Promise<Response>;

/** One row of the route table: a base path, a pattern of segments (`:` marks a parameter) and a handler per method. */
interface Route {
  base: 'sync' | 'field';
  pattern: string[];
  methods: Partial<Record<'GET' | 'POST', Handler>>;
}

/**
 * The one route table of both base paths: entity sync under `basePath`,
 * field-level sync under `fieldBasePath`. Every route is admitted by the same
 * gate and refused through the same error path.
 */
export class HttpRoutes {
  private readonly routes: Route[];

  constructor(
    private readonly service: SyncService,
    /** The field-level service; a SyncError when field sync is configured but the store cannot keep it; null when off. */
    private readonly fields: FieldService | SyncError | null,
    private readonly hub: ChangeHub,
    private readonly options: HttpRoutesOptions,
  ) {
    const pushed = async (response: unknown, request: Request) => {
      this.hub.wake();
      return jsonResponse(request, response);
    };
    const body = async (request: Request) => {
      requireJson(request);
      return parseJson(await readBody(request, this.options.limits.maxBodyBytes), this.options.limits);
    };
    // Field routes run only once route() has refused them when field sync cannot be served.
    const field = () => this.fields as FieldService;
    this.routes = [
      {
        base: 'sync',
        pattern: ['events'],
        methods: { GET: (request, url, _params, user) => Promise.resolve(this.events(request, url, user)) },
      },
      { base: 'sync', pattern: ['schema'], methods: { GET: async (request) => jsonResponse(request, await this.service.schema()) } },
      {
        base: 'sync',
        pattern: [':entity'],
        methods: {
          GET: (request, url, [entity], user) => this.pull(request, url, (params) => this.service.pullJson(entity as string, params, user)),
          POST: async (request, _url, [entity], user) => {
            this.service.entity(entity as string); // unknown entity: 404 before reading the body
            return pushed(await this.service.push(entity as string, await body(request), user), request);
          },
        },
      },
      {
        base: 'field',
        pattern: [':entity'],
        methods: {
          GET: (request, url, [entity], user) =>
            this.pull(request, url, async (params) => {
              const page = await field().pull(entity as string, params, user);
              return { page, text: JSON.stringify(page) };
            }),
          POST: async (request, _url, [entity], user) => {
            field().target(entity as string);
            return pushed(await field().push(entity as string, await body(request), user), request);
          },
        },
      },
      {
        base: 'field',
        pattern: [':entity', ':id', 'latest'],
        methods: {
          GET: async (request, _url, [entity, id], user) => {
            const latest = await field().latest(entity as string, id, user);
            if (!latest)
              throw new SyncError(ErrorCode.NotFound, `${entity} ${JSON.stringify(String(id).slice(0, 64))} does not exist`, 404);
            return jsonResponse(request, latest);
          },
        },
      },
    ];
  }

  /** Answer a request under either base path; null when the path is not ours. */
  async handle(request: Request): Promise<Response | null> {
    const url = new URL(request.url);
    const base = this.baseOf(url.pathname);
    if (!base) return null;
    try {
      return await this.route(request, url, base);
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      return syncError.toResponse();
    }
  }

  private baseOf(pathname: string): 'sync' | 'field' | null {
    const under = (base: string) => pathname === base || pathname.startsWith(`${base}/`);
    if (under(this.options.basePath)) return 'sync';
    if (this.fields !== null && under(this.options.fieldBasePath)) return 'field';
    return null;
  }

  private async route(request: Request, url: URL, base: 'sync' | 'field'): Promise<Response> {
    const prefix = base === 'sync' ? this.options.basePath : this.options.fieldBasePath;
    const rest = url.pathname.slice(prefix.length + 1);
    const method = request.method.toUpperCase();
    // The client files are public; everything else is data and goes through authorization.
    if (base === 'sync' && (rest === 'client.js' || rest === 'field-client.js' || rest === 'sw.js')) {
      admitPublic(request, this.options);
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, rest);
      return this.options.assets.respond(request, rest);
    }
    const kind = base === 'sync' && rest === 'events' ? 'live' : method === 'GET' || method === 'HEAD' ? 'read' : 'write';
    const user = await admit(request, this.options, kind);
    if (base === 'field' && this.fields instanceof SyncError) throw this.fields;
    if (rest === 'ws' || rest === 'field-ws') throw upgradeRequired();
    let segments: string[];
    try {
      segments = rest.split('/').map((segment) => decodeURIComponent(segment));
    } catch {
      throw new SyncError(ErrorCode.NotFound, 'malformed path', 404);
    }
    // An empty segment or an encoded slash (`..%2Fx`) is a path trick, not a name.
    const tricky = segments.some((segment) => segment === '' || segment.includes('/'));
    const route = tricky ? undefined : this.routes.find((candidate) => matches(candidate, base, segments));
    if (!route) throw new SyncError(ErrorCode.NotFound, `no route ${JSON.stringify(url.pathname.slice(0, 100))}`, 404);
    const handler = route.methods[method === 'HEAD' && route.pattern[0] !== 'events' ? 'GET' : (method as 'GET' | 'POST')];
    if (!handler) throw methodNotAllowed(method, segments.at(-1) ?? rest);
    const params = segments.filter((_segment, index) => route.pattern[index]?.startsWith(':'));
    return handler(request, url, params, user);
  }

  /** A pull, streamed with `stream=1`; a stream's pages default to the largest page size. */
  private pull(request: Request, url: URL, read: PageRead): Promise<Response> {
    const query = url.searchParams;
    const streamed = query.get('stream') === '1';
    const { limits } = this.options;
    const params = {
      since: parseCursor(query.get('since'), 'since', 0),
      limit: parseLimit(query.get('limit'), streamed ? { ...limits, defaultPullLimit: limits.maxPullLimit } : limits),
      snapshot: query.get('snapshot'),
      streamed,
    };
    return pullResponse(request, params, read, this.options.onError);
  }

  private events(request: Request, url: URL, user: SyncUser | null): Response {
    const requested = url.searchParams.get('entities');
    const entities = requested ? this.service.entityList(requested.split(',').filter(Boolean)) : this.service.entityNames;
    // EventSource resends the last `id:` it saw as Last-Event-ID; `?since=` serves first connections.
    const lastEventId = request.headers.get('last-event-id') ?? url.searchParams.get('lastEventId');
    const since = lastEventId ? parseCursor(lastEventId, 'Last-Event-ID', 0) : parseCursor(url.searchParams.get('since'), 'since', -1);
    // Abandoned while authorize ran: no slot, no subscription.
    if (abandoned(request)) throw new SyncError(ErrorCode.BadRequest, 'request abandoned', 400);
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

function matches(route: Route, base: 'sync' | 'field', segments: string[]): boolean {
  return (
    route.base === base &&
    route.pattern.length === segments.length &&
    route.pattern.every((part, index) => part.startsWith(':') || part === segments[index])
  );
}

const methodNotAllowed = (method: string, path: string) =>
  new SyncError(ErrorCode.MethodNotAllowed, `${method.slice(0, 16)} is not allowed on ${path.slice(0, 64)}`, 405);
