/**
 * Express adapter (Express 4 and 5): a middleware that answers the engine's
 * routes and calls `next()` for everything else.
 *
 * Typed structurally against node:http, so `express` and `@types/express`
 * stay optional peers: an Express `Request` is an `IncomingMessage`.
 *
 * @example
 * ```ts
 * const app = express();
 * app.use(expressMiddleware(engine)); // before express.json(), ideally
 * app.use(express.json());
 * const server = app.listen(3000);
 * engine.attach(server); // WebSockets on /api/sync/ws
 * ```
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SyncEngine } from '../engine.js';
import { sendWebResponse } from '../transports/node.js';

/** What the middleware reads from an Express request beyond `IncomingMessage`. */
export interface ExpressRequestLike extends IncomingMessage {
  /** Set by body parsers (`express.json()`, `express.urlencoded()`, `express.text()`...). */
  body?: unknown;
  /** The full path even when the middleware is mounted under a prefix. */
  originalUrl?: string;
}

/** Express's `next`: no argument to pass the request on, an error to report one. */
export type ExpressNext = (error?: unknown) => void;

/** An Express middleware: `app.use(expressMiddleware(engine))`. */
export type ExpressSyncMiddleware = (req: ExpressRequestLike, res: ServerResponse, next: ExpressNext) => void;

/**
 * Middleware serving the engine's routes (`/api/sync/*`, `/api/field-sync/*`,
 * including the SSE stream) and calling `next()` for every other path.
 *
 * Mount it before body parsers so it streams the raw body itself (with the
 * engine's size limit). Mounted after one, it re-serializes the parsed
 * `req.body`; note that a parser then answers malformed JSON with its own
 * error before the engine sees it.
 *
 * WebSockets are not middleware: call `engine.attach(server)` on the
 * `http.Server` that `app.listen()` returns.
 */
export function expressMiddleware(engine: SyncEngine): ExpressSyncMiddleware {
  return (req, res, next) => {
    const path = (req.originalUrl ?? req.url ?? '/').split('?')[0] ?? '/';
    if (!engine.matches(path)) {
      next();
      return;
    }
    serve(engine, req, res).then((handled) => {
      if (!handled) next();
    }, next);
  };
}

async function serve(engine: SyncEngine, req: ExpressRequestLike, res: ServerResponse): Promise<boolean> {
  const method = req.method ?? 'GET';
  if (method === 'GET' || method === 'HEAD' || !bodyConsumed(req)) return engine.handleNode(req, res);
  // A body parser already read the stream: hand the engine what it parsed.
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    // The replayed body is neither the original length nor still encoded.
    if (value === undefined || name === 'content-length' || name === 'content-encoding') continue;
    for (const item of Array.isArray(value) ? value : [value]) headers.append(name, item);
  }
  if (typeof req.body !== 'string' && !(req.body instanceof Uint8Array)) headers.set('content-type', 'application/json');
  const protocol = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  const url = `${protocol}://${req.headers.host ?? 'localhost'}${req.originalUrl ?? req.url ?? '/'}`;
  const request = new Request(url, { method, headers, body: replayBody(req.body) });
  const response = await engine.handle(request);
  if (response) await sendWebResponse(res, response, req);
  return response !== null;
}

/** A reader leaves the stream ended; body-parser 1.x (Express 4) also marks it with `_body`. */
function bodyConsumed(req: ExpressRequestLike): boolean {
  return req.readableEnded || (req as { _body?: unknown })._body === true;
}

/** Raw bodies (`express.text()`, `express.raw()`) pass through; parsed ones go back to JSON. */
function replayBody(body: unknown): string | Uint8Array<ArrayBuffer> {
  if (body === undefined) return '';
  if (typeof body === 'string') return body;
  if (body instanceof Uint8Array) return new Uint8Array(body);
  return JSON.stringify(body);
}
