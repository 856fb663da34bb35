/**
 * A real app for the browser tests: node:http on 127.0.0.1 serving the sync
 * engine (real SQLite file), htmx from node_modules (2.x or 4.x, never a
 * CDN), a page with the client script tag, and a server-rendered todo list
 * fragment, like an htmx app would.
 *
 * The client is bundled from src/client into a private temp folder per test
 * process, so parallel test files never read a half-written dist/ file.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { nodeHandler } from '../../src/adapters/node.js';
import type { SyncEngineOptions } from '../../src/core/config.js';
import { SyncEngine } from '../../src/engine.js';
import { tempDb } from '../helpers.js';
import { buildClient } from './client-bundle.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

const HTMX: Record<string, string> = {
  '2': join(root, 'node_modules/htmx2/dist/htmx.min.js'),
  '4': join(root, 'node_modules/htmx.org/dist/htmx.min.js'),
};

export interface FixtureOptions extends Partial<SyncEngineOptions> {
  /** Answer WebSocket upgrades with 403, as a proxy that blocks them would. */
  refuseWebSocket?: boolean;
  /** Rows to seed: [id, title]. */
  seed?: Array<[string, string]>;
  /** Schema to create instead of the default todos table (must include todos). */
  setupSql?: string;
  /** Extra HTML at the end of the page's body (forms for the offline htmx tests). */
  body?: string;
  /** What `#list` refetches on (default: on load and every `rhtmx:todos:changed`). */
  listTrigger?: string;
  /** The list fragment GET /todos-fragment answers (default: a plain <ul> of <li data-id>). */
  fragment?: (rows: Array<{ id: string; title: string }>) => string;
  /** More GET routes: path → HTML answer. */
  routes?: Record<string, string>;
}

export interface Fixture {
  url: string;
  engine: SyncEngine;
  db: Database.Database;
  /** `/?htmx=2|4&ws=false&entities=todos,notes&defer=1` */
  pageUrl(query?: { htmx?: '2' | '4'; ws?: boolean; entities?: string; defer?: boolean }): string;
  /** A write through a second SQLite connection, as another process would make it. */
  externalWrite(sql: string, ...params: unknown[]): void;
  /** Rows of the todos table. */
  todos(): Array<{ id: string; title: string; done: number }>;
  /** How many times GET /todos-fragment was answered. */
  renders(): number;
  close(): Promise<void>;
}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(htmx: string, useWebSocket: boolean, entities: string, defer: boolean, body: string, trigger: string): string {
  return `<!doctype html>
<html>
<head>
  <meta charset="utf-8">
  <title>rhtmx-sync fixture</title>
  <script>
    window.__events = [];
    for (const name of ['rhtmx:sync:ready', 'rhtmx:todos:changed', 'rhtmx:sync:conflict', 'rhtmx:connection:state', 'rhtmx:sync:error']) {
      document.addEventListener(name, (event) => window.__events.push({ name, detail: event.detail }));
    }
  </script>
  <script src="/htmx${htmx}.js"></script>
  <script${defer ? ' defer' : ''} src="/api/sync/client.js" data-sync-entities="${escapeHtml(entities)}" data-conflict-strategy="server-wins" data-debug="true"${useWebSocket ? '' : ' data-use-websocket="false"'}></script>
</head>
<body>
  <h1>Todos</h1>
  <div id="list" hx-get="/todos-fragment" hx-trigger="${trigger}"></div>
${body}
</body>
</html>`;
}

export async function startFixture(options: FixtureOptions = {}): Promise<Fixture> {
  const {
    refuseWebSocket,
    seed = [],
    setupSql,
    body = '',
    listTrigger = 'load, rhtmx:todos:changed from:body',
    fragment,
    routes = {},
    ...engineOptions
  } = options;
  const temp = tempDb(setupSql);
  const insert = temp.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)');
  temp.db.transaction(() => {
    for (const [id, title] of seed) insert.run(id, title);
  })();
  const engine = new SyncEngine({ db: temp.db, entities: ['todos'], pollMs: 10, clientDir: await buildClient(), ...engineOptions });
  await engine.ready;
  let renders = 0;

  const app = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      const query = url.searchParams;
      res.end(
        page(
          query.get('htmx') ?? '4',
          query.get('ws') !== 'false',
          query.get('entities') ?? 'todos',
          query.has('defer'),
          body,
          listTrigger,
        ),
      );
      return;
    }
    const route = routes[url.pathname];
    if (route !== undefined) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(route);
      return;
    }
    const htmx = /^\/htmx(\d)\.js$/.exec(url.pathname)?.[1];
    if (htmx && HTMX[htmx]) {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(readFileSync(HTMX[htmx] as string));
      return;
    }
    if (url.pathname === '/todos-fragment') {
      renders++;
      const rows = temp.db.prepare('SELECT id, title, done FROM todos ORDER BY id').all() as Array<{ id: string; title: string }>;
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(
        fragment
          ? fragment(rows)
          : `<ul data-render="${renders}">${rows.map((row) => `<li data-id="${escapeHtml(row.id)}">${escapeHtml(row.title)}</li>`).join('')}</ul>`,
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  };

  const server = http.createServer(nodeHandler(engine, app));
  if (refuseWebSocket) {
    server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n'));
  } else {
    engine.attach(server);
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    engine,
    db: temp.db,
    pageUrl: (query = {}) =>
      `${url}/?htmx=${query.htmx ?? '4'}${query.ws === false ? '&ws=false' : ''}${query.entities ? `&entities=${query.entities}` : ''}${query.defer ? '&defer=1' : ''}`,
    externalWrite(sql, ...params) {
      const other = new Database(temp.path);
      try {
        other.pragma('busy_timeout = 5000');
        other.prepare(sql).run(...params);
      } finally {
        other.close();
      }
    },
    todos: () =>
      temp.db.prepare('SELECT id, title, done FROM todos ORDER BY id').all() as Array<{ id: string; title: string; done: number }>,
    renders: () => renders,
    async close() {
      await engine.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      temp.dispose();
    },
  };
}
