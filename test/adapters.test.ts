/**
 * Every framework adapter over real loopback HTTP, SSE and WebSocket: the
 * same scenario against node:http, Express, Hono (@hono/node-server) and
 * Fastify, each beside an app route of its own.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { serve } from '@hono/node-server';
import express from 'express';
import Fastify from 'fastify';
import { Hono } from 'hono';
import { expressMiddleware } from '../src/adapters/express.js';
import { fastifySync } from '../src/adapters/fastify.js';
import { mountSync } from '../src/adapters/hono.js';
import { nodeHandler } from '../src/adapters/node.js';
import { SyncEngine } from '../src/engine.js';
import { getJson, postJson, SseClient, tempDb, WsClient, waitFor } from './helpers.js';

/** A framework app serving the engine plus its own routes, listening on loopback. */
interface RunningApp {
  url: string;
  close(): Promise<void>;
}

type StartApp = (engine: SyncEngine) => Promise<RunningApp>;

const HELLO = 'hello from the app';

async function listenNode(server: http.Server, engine: SyncEngine): Promise<RunningApp> {
  engine.attach(server);
  if (!server.listening) await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: urlOf(server), close: () => closeServer(server) };
}

function urlOf(server: http.Server): string {
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function closeServer(server: http.Server): Promise<void> {
  // fetch() keeps idle keep-alive sockets open; the engine already closed the live ones.
  server.closeAllConnections();
  await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
}

const startNode: StartApp = (engine) => {
  const server = http.createServer(
    nodeHandler(engine, (req, res) => {
      if (req.url === '/hello') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(HELLO);
        return;
      }
      res.writeHead(404).end();
    }),
  );
  return listenNode(server, engine);
};

function expressApp(engine: SyncEngine, options: { jsonFirst: boolean }): express.Express {
  const app = express();
  if (options.jsonFirst) app.use(express.json());
  app.use(expressMiddleware(engine));
  if (!options.jsonFirst) app.use(express.json());
  app.get('/hello', (_req, res) => {
    res.type('text/plain').send(HELLO);
  });
  app.post('/echo', (req, res) => {
    res.json({ echoed: req.body });
  });
  return app;
}

const startExpress =
  (options: { jsonFirst: boolean }): StartApp =>
  async (engine) => {
    const app = expressApp(engine, options);
    const server = await new Promise<http.Server>((resolve, reject) => {
      const listening = app.listen(0, '127.0.0.1', (error?: Error) => (error ? reject(error) : resolve(listening)));
    });
    return listenNode(server, engine);
  };

const startHono =
  (options: { consumeBody: boolean } = { consumeBody: false }): StartApp =>
  async (engine) => {
    const app = new Hono();
    if (options.consumeBody) {
      // A middleware that reads the body first, as a validator would.
      app.use('*', async (c, next) => {
        if (c.req.method === 'POST') await c.req.json().catch(() => null);
        await next();
      });
    }
    app.get('/hello', (c) => c.text(HELLO));
    app.post('/echo', async (c) => c.json({ echoed: await c.req.json() }));
    mountSync(app, engine);
    const server = await new Promise<http.Server>((resolve) => {
      const started = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(started as http.Server));
    });
    return listenNode(server, engine);
  };

const startFastify: StartApp = async (engine) => {
  const app = Fastify();
  app.get('/hello', async (_request, reply) => reply.type('text/plain').send(HELLO));
  app.post('/echo', async (request) => ({ echoed: request.body }));
  await app.register(fastifySync(engine));
  // An app-wide auth hook, added after the plugin, still guards the engine's routes.
  app.addHook('preHandler', async (request, reply) => {
    if (request.headers['x-deny'] !== undefined) return reply.code(403).send({ error: { code: 'forbidden', message: 'denied' } });
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  return {
    url: urlOf(app.server),
    async close() {
      app.server.closeAllConnections();
      await app.close();
    },
  };
};

/** Start one app on a fresh SQLite file, run `body` against it, and close everything whatever happens. */
async function withApp(start: StartApp, body: (url: string, engine: SyncEngine) => Promise<void>): Promise<void> {
  const temp = tempDb();
  const engine = new SyncEngine({ db: temp.db, entities: ['todos'], pollMs: 10 });
  let app: RunningApp | undefined;
  try {
    await engine.ready;
    temp.db.prepare('INSERT INTO todos (id, title, done) VALUES (?, ?, 0)').run('seed', 'Seeded before start');
    app = await start(engine);
    await body(app.url, engine);
  } finally {
    await engine.close();
    await app?.close();
    temp.dispose();
  }
}

/** The scenario every adapter must pass. */
async function exercise(name: string, url: string): Promise<void> {
  const hello = await fetch(`${url}/hello`);
  assert.equal(hello.status, 200, 'the app route still answers');
  assert.equal(await hello.text(), HELLO);

  const pulled = await getJson(`${url}/api/sync/todos?since=0`);
  assert.equal(pulled.status, 200);
  assert.equal(pulled.body.entity, 'todos');
  assert.deepEqual(
    pulled.body.changes.map((change: { id: string }) => change.id),
    ['seed'],
  );

  const sse = new SseClient(`${url}/api/sync/events?entities=todos`);
  const ws = await WsClient.connect(`${url.replace('http', 'ws')}/api/sync/ws`);
  try {
    // The SSE subscription exists once the response headers arrive.
    await waitFor(() => sse.status, 5000, 'SSE response');
    assert.equal(sse.status, 200);
    assert.match(sse.headers?.get('content-type') ?? '', /^text\/event-stream/);
    const subscribed = await ws.request({ type: 'subscribe', entities: ['todos'] });
    assert.equal(subscribed.type, 'subscribed');

    const id = `from-${name}`;
    const pushed = await postJson(`${url}/api/sync/todos`, {
      client_id: `adapter-test-${name}`,
      changes: [{ mutation_id: 1, id, action: 'create', data: { id, title: `Pushed through ${name}`, done: false } }],
    });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    assert.equal(pushed.body.results[0].status, 'applied');
    assert.equal(pushed.body.results[0].id, id);

    const viaSse = await waitFor(() => sse.changes().find((change) => change.id === id), 5000, 'SSE change');
    assert.equal(viaSse.data.title, `Pushed through ${name}`);
    const viaWs = await waitFor(() => ws.changes().find((change) => change.id === id), 5000, 'WebSocket change');
    assert.equal(viaWs.action, 'create');
  } finally {
    sse.close();
    await sse.done;
    ws.close();
  }

  const malformed = await postJson(`${url}/api/sync/todos`, '{"changes": [');
  assert.equal(malformed.status, 400);
  assert.equal(malformed.body.error.code, 'bad_json');

  const unknownPull = await getJson(`${url}/api/sync/no_such_entity?since=0`);
  assert.equal(unknownPull.status, 404);
  assert.equal(typeof unknownPull.body.error.code, 'string');
  const unknownPush = await postJson(`${url}/api/sync/no_such_entity`, { changes: [] });
  assert.equal(unknownPush.status, 404);

  const script = await fetch(`${url}/api/sync/client.js`);
  assert.equal(script.status, 200);
  assert.match(script.headers.get('content-type') ?? '', /javascript/);
  const etag = script.headers.get('etag');
  assert.ok(etag, 'client.js carries an ETag');
  assert.ok((await script.text()).length > 0);
  const revalidated = await fetch(`${url}/api/sync/client.js`, { headers: { 'if-none-match': etag } });
  assert.equal(revalidated.status, 304);
  await revalidated.arrayBuffer();
}

/** The app's own JSON route keeps its body parser beside the engine's raw-body routes. */
async function exerciseEcho(url: string): Promise<void> {
  const echoed = await postJson(`${url}/echo`, { hello: 'world' });
  assert.equal(echoed.status, 200);
  assert.deepEqual(echoed.body, { echoed: { hello: 'world' } });
}

test('node:http adapter serves pull, push, SSE, WebSocket and client.js beside an app route', () =>
  withApp(startNode, (url) => exercise('node', url)));

test('Express middleware serves the engine and passes other routes on', () =>
  withApp(startExpress({ jsonFirst: false }), async (url) => {
    await exercise('express', url);
    await exerciseEcho(url);
  }));

test('Express middleware mounted after express.json() replays the parsed body', () =>
  withApp(startExpress({ jsonFirst: true }), async (url, engine) => {
    await exerciseEcho(url);
    const pushed = await postJson(`${url}/api/sync/todos`, {
      client_id: 'after-json',
      changes: [{ mutation_id: 1, id: 'parsed', action: 'create', data: { id: 'parsed', title: 'Parsed first', done: true } }],
    });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    assert.equal(pushed.body.results[0].status, 'applied');
    const pulled = await engine.pull('todos', 0);
    assert.equal(pulled.changes.find((change) => change.id === 'parsed')?.data?.title, 'Parsed first');
  }));

test('Hono handler (@hono/node-server) serves the engine beside app routes', () =>
  withApp(startHono(), async (url) => {
    await exercise('hono', url);
    await exerciseEcho(url);
  }));

test('Hono handler replays a body a middleware already read', () =>
  withApp(startHono({ consumeBody: true }), async (url, engine) => {
    const pushed = await postJson(`${url}/api/sync/todos`, {
      client_id: 'hono-consumed',
      changes: [{ mutation_id: 1, id: 'cached', action: 'create', data: { id: 'cached', title: 'From the cache', done: false } }],
    });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    assert.equal(pushed.body.results[0].status, 'applied');
    const pulled = await engine.pull('todos', 0);
    assert.equal(pulled.changes.find((change) => change.id === 'cached')?.data?.title, 'From the cache');
    const malformed = await postJson(`${url}/api/sync/todos`, '{"changes": [');
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.error.code, 'bad_json');
  }));

test('Fastify plugin serves the engine without leaking its body handling to app routes', () =>
  withApp(startFastify, async (url) => {
    await exercise('fastify', url);
    await exerciseEcho(url);
    const denied = await getJson(`${url}/api/sync/todos?since=0`, { headers: { 'x-deny': '1' } });
    assert.equal(denied.status, 403, 'app hooks run before the engine answers');
  }));
