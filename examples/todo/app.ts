/**
 * The demo app's own routes: plain htmx endpoints that read and write the
 * `todos` table and answer with HTML. Nothing here calls the sync API; the
 * engine picks the writes up from the database like any other write.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { prometheusMetrics } from '../../src/adapters/prometheus.js';
import type { SyncEngine } from '../../src/index.js';
import type { Todo, TodoDatabase, TodoPatch } from './db.js';
import { afterWrite, errorMessage, type HtmxMajor, page, type SafeHtml, todoList, type ViewOptions } from './views.js';

/** Longest accepted title, in characters. */
export const MAX_TITLE = 200;
/** Largest accepted request body; a todo is a few dozen bytes. */
const MAX_BODY_BYTES = 16 * 1024;

export interface AppOptions {
  todos: TodoDatabase;
  engine: SyncEngine;
  htmx: HtmxMajor;
  debug: boolean;
}

/** A client mistake, answered with a 4xx and a message fragment. */
class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

const require = createRequire(import.meta.url);
/** htmx comes from node_modules, never a CDN: the demo must work offline and in tests. */
function loadHtmx(major: HtmxMajor): Buffer {
  return readFileSync(require.resolve(major === 4 ? 'htmx.org/dist/htmx.min.js' : 'htmx2/dist/htmx.min.js'));
}

function send(res: ServerResponse, status: number, body: string | Buffer, type: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
  res.end(body);
}

const sendHtml = (res: ServerResponse, body: SafeHtml, status = 200, headers: Record<string, string> = {}) =>
  send(res, status, body.value, 'text/html; charset=utf-8', headers);

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new BadRequest('Request body too large.', 413);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Form fields from a urlencoded, multipart or JSON body, as strings or JSON scalars. */
async function readFields(req: IncomingMessage): Promise<Record<string, unknown>> {
  const body = await readBody(req);
  const type = req.headers['content-type'] ?? '';
  if (body.length === 0) return {};
  if (/^application\/([\w.+-]+\+)?json/i.test(type)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      throw new BadRequest('Malformed JSON body.');
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new BadRequest('Expected a JSON object.');
    return parsed as Record<string, unknown>;
  }
  if (/^multipart\/form-data/i.test(type)) {
    const form = await new Response(new Uint8Array(body), { headers: { 'content-type': type } }).formData().catch(() => {
      throw new BadRequest('Malformed form body.');
    });
    return Object.fromEntries([...form.entries()].filter(([, value]) => typeof value === 'string'));
  }
  return Object.fromEntries(new URLSearchParams(body.toString('utf8')));
}

/** A trimmed, non-empty title of at most MAX_TITLE characters. */
function parseTitle(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') throw new BadRequest('Please enter a title.');
  const title = value.trim().replace(/\s+/g, ' ');
  if ([...title].length > MAX_TITLE) throw new BadRequest(`Titles are limited to ${MAX_TITLE} characters.`);
  return title;
}

/** `done` as a checkbox ('on'), a form string ('true'/'false', '1'/'0') or a JSON boolean. */
function parseDone(value: unknown): boolean {
  if (value === true || value === 1) return true;
  if (value === false || value === 0) return false;
  if (typeof value === 'string') {
    const text = value.trim().toLowerCase();
    if (['on', 'true', '1', 'yes'].includes(text)) return true;
    if (['off', 'false', '0', 'no', ''].includes(text)) return false;
  }
  throw new BadRequest('`done` must be true or false.');
}

/** A node:http listener for the demo's routes (the engine's routes are served before it by `nodeHandler`). */
export function createApp({ todos, engine, htmx, debug }: AppOptions) {
  const views: ViewOptions = { htmx, debug };
  const htmxJs = loadHtmx(htmx);
  const appJs = readFileSync(new URL('./public/app.js', import.meta.url));
  const storeLabel = todos.dialect === 'sqlite' ? `SQLite (${todos.location})` : 'PostgreSQL';
  // Prometheus exposition of the engine's metrics (connections, change rate, fan-out time, pushes, log size, lag).
  const prometheus = prometheusMetrics(engine);

  /** The list plus the sync version it was read at (the version first: the list is then at least that new). */
  async function snapshot(): Promise<{ list: Todo[]; version: number }> {
    const version = await engine.currentVersion();
    return { list: await todos.list(), version };
  }

  /** After our own write: wake the engine now instead of at its next poll, then answer with the fresh list. */
  async function answerWrite(res: ServerResponse): Promise<void> {
    engine.notify();
    const { list, version } = await snapshot();
    sendHtml(res, afterWrite(list, version, views));
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      send(res, 400, 'malformed request target', 'text/plain; charset=utf-8');
      return;
    }
    const method = (req.method ?? 'GET').toUpperCase();
    const path = url.pathname;

    if (method === 'GET' || method === 'HEAD') {
      switch (path) {
        case '/': {
          const { list, version } = await snapshot();
          return sendHtml(res, page({ todos: list, version, store: storeLabel }, views));
        }
        case '/todos': {
          const { list, version } = await snapshot();
          return sendHtml(res, todoList(list, version, views));
        }
        case '/healthz':
          await engine.ready;
          return send(res, 200, JSON.stringify({ ok: true, version: await engine.currentVersion() }), 'application/json');
        case '/vendor/htmx.min.js':
          return send(res, 200, htmxJs, 'text/javascript; charset=utf-8', { 'cache-control': 'public, max-age=3600' });
        case '/metrics':
          return (await prometheus).handleNode(req, res);
        case '/app.js':
          return send(res, 200, appJs, 'text/javascript; charset=utf-8', { 'cache-control': 'no-cache' });
      }
    }

    if (path === '/todos' && method === 'POST') {
      const fields = await readFields(req);
      await todos.insert(parseTitle(fields.title));
      return answerWrite(res);
    }

    const match = /^\/todos\/([^/]+)$/.exec(path);
    if (match) {
      let id: string;
      try {
        id = decodeURIComponent(match[1] as string);
      } catch {
        throw new BadRequest('Malformed todo id.');
      }
      if (method === 'PATCH' || method === 'PUT') {
        const fields = await readFields(req);
        const patch: TodoPatch = {};
        if ('title' in fields) patch.title = parseTitle(fields.title);
        if ('done' in fields) patch.done = parseDone(fields.done);
        if (patch.title === undefined && patch.done === undefined) throw new BadRequest('Nothing to change: send `title` or `done`.');
        if (!(await todos.update(id, patch))) throw new BadRequest('That todo no longer exists.', 404);
        return answerWrite(res);
      }
      if (method === 'DELETE') {
        // Deleting twice (or a row another tab already deleted) is not an error: the list is what matters.
        await todos.remove(id);
        return answerWrite(res);
      }
      throw new BadRequest(`${method} is not supported here.`, 405);
    }

    if (path === '/todos') throw new BadRequest(`${method} is not supported here.`, 405);
    send(res, 404, 'Not found', 'text/plain; charset=utf-8');
  }

  return (req: IncomingMessage, res: ServerResponse): void => {
    route(req, res).catch((error: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (error instanceof BadRequest) {
        // htmx swaps the message into the error slot instead of the list.
        sendHtml(res, errorMessage(error.message), error.status, { 'hx-retarget': '#form-error', 'hx-reswap': 'innerHTML' });
        return;
      }
      console.error('todo: request failed:', error);
      sendHtml(res, errorMessage('Something went wrong on the server.'), 500, { 'hx-retarget': '#form-error', 'hx-reswap': 'innerHTML' });
    });
  };
}
