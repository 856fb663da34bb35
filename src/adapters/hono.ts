/**
 * Hono adapter: Hono hands us a Web `Request`, the engine answers with a Web
 * `Response`, so the adapter is one line plus route registration.
 *
 * Only hono's types are imported: hono stays an optional peer dependency.
 *
 * @example
 * ```ts
 * const app = new Hono();
 * mountSync(app, engine);
 * const server = serve({ fetch: app.fetch, port: 3000 }); // @hono/node-server
 * engine.attach(server as http.Server); // WebSockets on /api/sync/ws
 * ```
 */
import type { Context, Env, Handler, Hono, Schema } from 'hono';
import type { SyncEngine } from '../engine.js';
import { noteConnection } from '../transports/node.js';

/**
 * A Hono handler answering the engine's routes; register it for both
 * `app.all('/api/sync/*', h)` and `app.all('/api/field-sync/*', h)`.
 * Paths under those prefixes that the engine does not serve get its JSON 404.
 */
export function honoHandler<E extends Env = Env>(engine: SyncEngine): Handler<E> {
  return async (c: Context<E>) => {
    const request = await replayable(c);
    // @hono/node-server passes the Node request as `env.incoming`: the loopback (DNS-rebinding) check needs its socket.
    const incoming = (c.env as { incoming?: { socket?: { localAddress?: string } } } | undefined)?.incoming;
    noteConnection(request, incoming?.socket?.localAddress);
    return engine.fetch(request);
  };
}

/** Register the engine's routes (sync and field-sync base paths) on `app`; returns `app`. */
export function mountSync<E extends Env, S extends Schema, B extends string>(app: Hono<E, S, B>, engine: SyncEngine): Hono<E, S, B> {
  const handler = honoHandler<E>(engine);
  app.all(`${engine.basePath}/*`, handler);
  app.all(`${engine.fieldBasePath}/*`, handler);
  return app;
}

/**
 * The raw request, or, when a middleware already read it with `c.req.json()`
 * (or `text()`, ...), a copy rebuilt from Hono's body cache.
 */
function replayable(c: Context): Request | Promise<Request> {
  const raw = c.req.raw;
  if (!raw.bodyUsed) return raw;
  return c.req.text().then((body) => {
    const headers = new Headers(raw.headers);
    headers.delete('content-length');
    headers.delete('content-encoding');
    return new Request(raw.url, { method: raw.method, headers, body, signal: raw.signal });
  });
}
