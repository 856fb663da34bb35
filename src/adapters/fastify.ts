/**
 * Fastify adapter (Fastify 4 and 5): a plugin that registers the engine's
 * routes, hijacks the reply and lets the engine answer on the raw Node
 * request and response, so streaming (SSE) and the body size limit are the
 * engine's own.
 *
 * Only fastify's types are imported: fastify stays an optional peer dependency.
 *
 * @example
 * ```ts
 * const app = Fastify();
 * await app.register(fastifySync(engine)); // also routes WebSocket upgrades
 * app.addHook('preClose', () => engine.close());
 * await app.listen({ port: 3000 });
 * ```
 */
import type { Server } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { SyncEngine } from '../engine.js';

export interface FastifySyncOptions {
  /**
   * Route WebSocket upgrades on `fastify.server` to the engine
   * (`engine.attach(fastify.server)`). Default true; pass false if you attach
   * the engine yourself, or route upgrades through another plugin.
   */
  websocket?: boolean;
}

/** A Fastify plugin: `app.register(fastifySync(engine))`. */
export type FastifySyncPlugin = (fastify: FastifyInstance) => Promise<void>;

/**
 * Plugin registering `/api/sync/*` and `/api/field-sync/*` (the engine's base
 * paths) for every method. Register it without a `prefix`: the engine's
 * base paths decide where it answers.
 *
 * Body parsing is switched off for these routes only (in a nested,
 * encapsulated context), so the engine reads the raw stream; the app's own
 * routes keep their parsers. App hooks (`onRequest`, `preHandler`, ...) still
 * run before the engine answers, so auth hooks apply.
 */
export function fastifySync(engine: SyncEngine, options: FastifySyncOptions = {}): FastifySyncPlugin {
  const plugin = async (fastify: FastifyInstance): Promise<void> => {
    if (options.websocket !== false) engine.attach(fastify.server as Server);
    await fastify.register(async (scope) => {
      // Encapsulated: this pass-through parser never reaches the app's routes.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser('*', (_request, _payload, done) => done(null, undefined));
      const handler = (request: FastifyRequest, reply: FastifyReply) => serve(engine, request, reply);
      for (const base of new Set([engine.basePath, engine.fieldBasePath])) scope.all(`${base}/*`, handler);
    });
  };
  // Like fastify-plugin, without the dependency: register in the caller's context, not a child of it.
  return Object.assign(plugin, {
    [Symbol.for('skip-override')]: true,
    [Symbol.for('fastify.display-name')]: 'rhtmx-sync',
  });
}

async function serve(engine: SyncEngine, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  // From here on the engine owns the raw response; Fastify must not send one.
  reply.hijack();
  const res = reply.raw;
  try {
    if (await engine.handleNode(request.raw, res)) return;
    // Only when the plugin was registered under a prefix the engine does not know.
    res.writeHead(404, { 'content-type': 'application/json; charset=utf-8' });
    res.end(JSON.stringify({ error: { code: 'not_found', message: 'not a sync route' } }));
  } catch (error) {
    request.log.error({ err: error }, 'rhtmx-sync: request failed');
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json; charset=utf-8' });
    res.end(JSON.stringify({ error: { code: 'internal', message: 'internal error' } }));
  }
}
