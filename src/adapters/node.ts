/**
 * node:http adapter.
 *
 * @example
 * ```ts
 * const server = http.createServer(nodeHandler(engine, (req, res) => app(req, res)));
 * engine.attach(server);
 * ```
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SyncEngine } from '../engine.js';

export type NodeListener = (req: IncomingMessage, res: ServerResponse) => void;

/** A request listener that serves the engine's routes and passes every other request to `next`. */
export function nodeHandler(engine: SyncEngine, next?: NodeListener): NodeListener {
  return (req, res) => {
    engine.handleNode(req, res).then(
      (handled) => {
        if (handled) return;
        if (next) next(req, res);
        else {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 'not_found', message: 'not found' } }));
        }
      },
      (error: unknown) => {
        engine.logger.error({ err: error }, 'rhtmx-sync: request failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'internal', message: 'internal error' } }));
      },
    );
  };
}
