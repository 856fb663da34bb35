/**
 * rhtmx-sync demo: a server-rendered htmx todo list whose table is synced to
 * every open browser's IndexedDB.
 *
 *   npm start                                   # SQLite file ./todo.db on http://localhost:3000
 *   DATABASE_URL=postgres://postgres@127.0.0.1/todo PORT=3001 npm start
 *
 * Environment: PORT (3000), HOST (0.0.0.0), DATABASE_URL (./todo.db or a
 * postgres:// URL), DEBUG=1 (engine and client debug logging), HTMX=2 (serve
 * htmx 2 instead of 4), RHTMX_CLIENT_DIR (serve the browser client from another
 * build folder than dist/client; the tests use a fresh private bundle).
 */
import http from 'node:http';
import { FieldMergeStrategy, nodeHandler, SyncEngine } from '../../src/index.js';
import { createApp } from './app.js';
import { openTodoDatabase, toTodo } from './db.js';
import { liveTodo, todoCount } from './views.js';

const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST || '0.0.0.0';
const databaseUrl = process.env.DATABASE_URL || './todo.db';
const debug = process.env.DEBUG === '1';
const htmx = process.env.HTMX === '2' ? 2 : 4;

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`todo: PORT must be a port number, got ${JSON.stringify(process.env.PORT)}`);
  process.exit(1);
}

const todos = await openTodoDatabase(databaseUrl);
const engine = new SyncEngine({
  db: todos.handle,
  entities: [
    {
      name: 'todos',
      // Live HTML: each changed todo goes out rendered, so open pages swap it in instead of refetching
      // the list (writes by raw SQL and other processes too). Its element id is todo-<id> (views.ts).
      domId: (id) => `todo-${id}`,
      render: async (row) => liveTodo(toTodo(row), await todos.counts(), { htmx, debug }).value,
      // A delete removes the todo's element; the count line goes with it, out of band.
      renderDeleted: async () => {
        const { total, left } = await todos.counts();
        return todoCount(total, left, true).value;
      },
    },
  ],
  fieldSync: FieldMergeStrategy.LastWriteWins,
  debug,
  clientDir: process.env.RHTMX_CLIENT_DIR || undefined,
  // Every limit set explicitly, so the demo shows them: bodies, JSON depth, batch size, pull pages,
  // WebSocket message size, rate, pending requests and row budget, bytes queued per connection and
  // connections per user (docs/security.md).
  limits: {
    maxBodyBytes: 256 * 1024,
    maxJsonDepth: 16,
    maxPushChanges: 500,
    defaultPullLimit: 500,
    maxPullLimit: 2000,
    maxWsMessageBytes: 256 * 1024,
    wsMessagesPerSecond: 100,
    maxPendingRequests: 32,
    wsRowsPerSecond: 100_000,
    maxBufferedBytes: 4 * 1024 * 1024,
    maxConnectionsPerUser: 16,
  },
});
try {
  await engine.ready;
} catch (error) {
  console.error(`todo: the sync engine could not start on ${todos.location}: ${(error as Error).message}`);
  await todos.close().catch(() => {});
  process.exit(1);
}

const server = http.createServer(nodeHandler(engine, createApp({ todos, engine, htmx, debug })));
engine.attach(server);

server.on('error', (error) => {
  console.error(`todo: cannot listen on ${host}:${port}: ${error.message}`);
  process.exit(1);
});
server.listen(port, host, () => {
  const address = server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  const shown = host === '0.0.0.0' || host === '::' ? 'localhost' : host;
  console.log(`todo: http://${shown}:${actualPort}  (${todos.dialect}: ${todos.location}, htmx ${htmx})`);
});

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`todo: ${signal}, shutting down`);
  // Live connections (SSE, WebSocket) never end on their own: close them, then the server.
  await engine.close().catch((error: unknown) => console.error('todo: engine close failed:', error));
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await todos.close().catch(() => {});
  process.exit(0);
}
process.on('SIGINT', () => void shutdown('SIGINT'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));
