/**
 * Browser-facing checks on every live endpoint, as a hostile page would test
 * them: cross-site event streams and WebSockets (Origin, Sec-Fetch-Site),
 * pushes a cross-site form or `text/plain` fetch could send without a CORS
 * preflight (415), and DNS rebinding (an attacker's host name in `Host` on a
 * server that listens on loopback). Real server on 127.0.0.1, real clients;
 * `Host` is set through node:http and ws, which send it as given.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import type { SyncEngineOptions } from '../src/core/config.js';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, SseClient, startServer, type TestServer, WsClient, waitFor } from './helpers.js';

const EVIL = 'http://evil.example';
/** What a stack trace looks like in a body (`at fn (file.ts:1:2)`). */
const STACK_TEXT = /\bat \S.*:\d+:\d+|\n\s+at /;

const portOf = (server: TestServer) => Number(new URL(server.url).port);
const fieldWsUrl = (server: TestServer) => server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws');
const WS_PATHS = ['/api/sync/ws', '/api/field-sync/ws'] as const;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  body: any;
}

/** One request over a fresh connection, with headers (Host included) exactly as given. */
function request(
  server: TestServer,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: portOf(server), path, method: options.method ?? 'GET', headers: options.headers, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk) => {
          text += chunk;
        });
        res.on('end', () => {
          let body: any = null;
          try {
            body = text ? JSON.parse(text) : null;
          } catch {}
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Try a WebSocket upgrade: 101 when it opens (closed at once), else the refusal's status and JSON body. */
function upgrade(url: string, options: WebSocket.ClientOptions = {}): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, options);
    socket.on('error', () => {}); // a refused handshake may also surface as an error; the status is what counts
    socket.once('unexpected-response', (_request, response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => {
        text += chunk;
      });
      response.on('end', () => {
        let body: any = null;
        try {
          body = text ? JSON.parse(text) : null;
        } catch {}
        resolve({ status: response.statusCode ?? 0, body });
      });
      response.on('error', reject);
    });
    socket.once('open', () => {
      socket.close();
      resolve({ status: 101, body: null });
    });
  });
}

function assertJsonError(
  answer: { status: number; body: any; headers?: http.IncomingHttpHeaders },
  status: number,
  code: string,
  what: string,
) {
  assert.equal(answer.status, status, `${what}: ${JSON.stringify(answer.body)}`);
  if (answer.headers) assert.match(String(answer.headers['content-type']), /^application\/json/, `${what}: JSON error body`);
  assert.equal(answer.body?.error?.code, code, `${what}: ${JSON.stringify(answer.body)}`);
  assert.equal(typeof answer.body.error.message, 'string');
}

const pulledIds = async (server: TestServer, base = '/api/sync') => {
  const pull = await getJson(`${server.url}${base}/todos?since=0`);
  assert.equal(pull.status, 200);
  return pull.body.changes.map((change: any) => change.id) as string[];
};

describe('event streams refuse cross-site requests', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  test('GET /api/sync/events with Sec-Fetch-Site: cross-site is a 403 JSON error', async () => {
    const answer = await request(server, '/api/sync/events', { headers: { 'sec-fetch-site': 'cross-site' } });
    assertJsonError(answer, 403, 'forbidden', 'cross-site stream');
  });

  test('GET /api/sync/events from a foreign Origin (or Origin: null) is a 403 JSON error', async () => {
    assertJsonError(await request(server, '/api/sync/events', { headers: { origin: EVIL } }), 403, 'forbidden', 'evil origin');
    assertJsonError(await request(server, '/api/sync/events', { headers: { origin: 'null' } }), 403, 'forbidden', 'opaque origin');
    // The foreign Origin wins over a same-origin claim in Sec-Fetch-Site.
    const mixed = await request(server, '/api/sync/events', { headers: { origin: EVIL, 'sec-fetch-site': 'same-origin' } });
    assertJsonError(mixed, 403, 'forbidden', 'evil origin claiming same-origin');
    assert.equal(server.engine.connections().sse, 0, 'no refused stream was opened');
  });

  test('GET /api/sync/events from the server’s own origin streams', async () => {
    const sse = new SseClient(`${server.url}/api/sync/events`, { origin: server.url, 'sec-fetch-site': 'same-origin' });
    await waitFor(() => sse.status !== 0, 5000, 'stream answer');
    assert.equal(sse.status, 200);
    assert.match(sse.headers?.get('content-type') ?? '', /^text\/event-stream/);
    sse.close();
    await sse.done;
  });
});

describe('WebSocket upgrades refuse cross-site requests', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.LastWriteWins });
  });
  after(() => server.close());

  for (const path of WS_PATHS) {
    const url = () => server.wsUrl.replace('/api/sync/ws', path);

    test(`${path}: a foreign Origin is refused with 403`, async () => {
      const answer = await upgrade(url(), { origin: EVIL });
      assert.equal(answer.status, 403);
      assert.equal(answer.body?.error?.code, 'forbidden');
    });

    test(`${path}: Sec-Fetch-Site: cross-site without Origin is refused with 403`, async () => {
      const answer = await upgrade(url(), { headers: { 'sec-fetch-site': 'cross-site' } });
      assert.equal(answer.status, 403);
      assert.equal(answer.body?.error?.code, 'forbidden');
    });

    test(`${path}: the server’s own Origin opens`, async () => {
      const client = await WsClient.connect(url(), { origin: server.url, headers: { 'sec-fetch-site': 'same-origin' } });
      assert.equal(client.messages[0].type, 'hello');
      client.close();
    });
  }

  test('refused upgrades leave no connection behind', async () => {
    await waitFor(() => server.engine.connections().websocket === 0 && server.engine.connections().admitting === 0, 5000, 'no sockets');
  });
});

describe('pushes must say they are JSON (no preflight-free cross-site writes)', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.LastWriteWins });
  });
  after(() => server.close());

  const push = (id: string) => JSON.stringify({ changes: [{ id, action: 'create', data: { title: `title of ${id}`, done: false } }] });

  /** POST a valid JSON body with the given content-type (none when null). */
  async function post(path: string, contentType: string | null, body: string) {
    const response = await fetch(`${server.url}${path}`, {
      method: 'POST',
      // A Uint8Array body makes fetch send no content-type of its own.
      body: new TextEncoder().encode(body),
      headers: contentType === null ? {} : { 'content-type': contentType },
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null, contentType: response.headers.get('content-type') };
  }

  const refusedTypes: Array<string | null> = [
    'text/plain',
    'text/plain;charset=UTF-8',
    'application/x-www-form-urlencoded',
    'multipart/form-data',
    null,
  ];

  test('POST /api/sync/todos: text/plain, form types or no content-type are 415 and nothing is written', async () => {
    for (const [index, type] of refusedTypes.entries()) {
      const id = `refused-${index}`;
      const answer = await post('/api/sync/todos', type, push(id));
      assert.equal(answer.status, 415, `${JSON.stringify(type)}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.body.error.code, 'unsupported_media_type');
      assert.match(String(answer.contentType), /^application\/json/);
      assert.ok(!(await pulledIds(server)).includes(id), `${JSON.stringify(type)}: the row must not be written`);
      assert.equal(server.db.prepare('SELECT COUNT(*) FROM todos WHERE id = ?').pluck().get(id), 0);
    }
  });

  test('POST /api/sync/todos: application/json; charset=utf-8 is accepted', async () => {
    const answer = await post('/api/sync/todos', 'application/json; charset=utf-8', push('accepted'));
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.results[0].status, 'applied');
    assert.ok((await pulledIds(server)).includes('accepted'));
  });

  test('POST /api/field-sync/todos: text/plain, form types or no content-type are 415 and nothing is written', async () => {
    const created = await postJson(`${server.url}/api/sync/todos`, {
      changes: [{ id: 'f1', action: 'create', data: { title: 'original' } }],
    });
    assert.equal(created.status, 200);
    const before = await getJson(`${server.url}/api/field-sync/todos/f1/latest`);
    assert.equal(before.status, 200);
    for (const type of refusedTypes) {
      const body = JSON.stringify({ changes: [{ entity_id: 'f1', field: 'title', value: 'csrf' }] });
      const answer = await post('/api/field-sync/todos', type, body);
      assert.equal(answer.status, 415, `${JSON.stringify(type)}: ${JSON.stringify(answer.body)}`);
      assert.equal(answer.body.error.code, 'unsupported_media_type');
      // A field push for a row that does not exist must not create it either.
      const ghost = JSON.stringify({ changes: [{ entity_id: 'ghost', field: 'title', value: 'csrf' }] });
      assert.equal((await post('/api/field-sync/todos', type, ghost)).status, 415);
    }
    const rows = await getJson(`${server.url}/api/sync/todos?since=0`);
    const f1 = rows.body.changes.find((change: any) => change.id === 'f1');
    assert.equal(f1.data.title, 'original', 'the field was not written');
    assert.ok(!rows.body.changes.some((change: any) => change.id === 'ghost'), 'no row was created');
    const fieldPull = await getJson(`${server.url}/api/field-sync/todos?since=0`);
    assert.equal(fieldPull.status, 200);
    assert.ok(!JSON.stringify(fieldPull.body).includes('csrf'), 'no field change was recorded');
    const latest = await getJson(`${server.url}/api/field-sync/todos/f1/latest`);
    assert.equal(latest.body.fields.title.value, 'original');
    assert.equal(latest.body.fields.title.version, before.body.fields.title.version);
  });

  test('POST /api/field-sync/todos: application/json; charset=utf-8 is accepted', async () => {
    const body = JSON.stringify({ changes: [{ entity_id: 'f1', field: 'title', value: 'edited' }] });
    const answer = await post('/api/field-sync/todos', 'application/json; charset=utf-8', body);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(answer.body.results[0].status, 'applied');
    const latest = await getJson(`${server.url}/api/field-sync/todos/f1/latest`);
    assert.equal(latest.body.fields.title.value, 'edited');
  });
});

describe('DNS rebinding: a loopback server answers only to loopback host names', () => {
  let server: TestServer;
  let port: number;
  before(async () => {
    server = await startServer({ fieldSync: FieldMergeStrategy.LastWriteWins });
    port = portOf(server);
  });
  after(() => server.close());

  test('a foreign Host is a 403 on every route, with and without a port', async () => {
    const routes = [
      '/api/sync/todos?since=0',
      '/api/sync/schema',
      '/api/sync/events',
      '/api/sync/client.js',
      '/api/field-sync/todos?since=0',
    ];
    for (const host of [`evil.example:${port}`, 'evil.example', `EVIL.example:${port}`, `localhost.evil.example:${port}`]) {
      for (const route of routes) {
        const answer = await request(server, route, { headers: { host } });
        assertJsonError(answer, 403, 'forbidden', `GET ${route} with Host ${host}`);
      }
    }
    assert.equal(server.engine.connections().sse, 0, 'no stream opened for a rebinding page');
  });

  test('a push under a foreign Host is refused and not written', async () => {
    const body = JSON.stringify({ changes: [{ id: 'rebound', action: 'create', data: { title: 'x' } }] });
    const answer = await request(server, '/api/sync/todos', {
      method: 'POST',
      headers: { host: `evil.example:${port}`, 'content-type': 'application/json' },
      body,
    });
    assertJsonError(answer, 403, 'forbidden', 'push under a foreign Host');
    assert.ok(!(await pulledIds(server)).includes('rebound'));
  });

  test('loopback host names are served: localhost, 127.0.0.1, *.localhost, [::1]', async () => {
    for (const host of [
      `localhost:${port}`,
      `127.0.0.1:${port}`,
      `foo.localhost:${port}`,
      `LOCALHOST:${port}`,
      `[::1]:${port}`,
      'localhost',
    ]) {
      const answer = await request(server, '/api/sync/todos?since=0', { headers: { host } });
      assert.equal(answer.status, 200, `Host ${host}: ${answer.text.slice(0, 200)}`);
      assert.ok(Array.isArray(answer.body.changes));
    }
  });

  test('a WebSocket upgrade with a foreign Host is a 403, on both socket paths', async () => {
    for (const path of WS_PATHS) {
      const url = server.wsUrl.replace('/api/sync/ws', path);
      const refused = await upgrade(url, { headers: { host: `evil.example:${port}` } });
      assert.equal(refused.status, 403, `${path} with Host evil.example`);
      assert.equal(refused.body?.error?.code, 'forbidden');
      // The same page with its origin matching the rebound host is still refused: the Host is the tell.
      const sameOrigin = await upgrade(url, { headers: { host: `evil.example:${port}` }, origin: `http://evil.example:${port}` });
      assert.equal(sameOrigin.status, 403, `${path} with Host and Origin evil.example`);
      const served = await upgrade(url, { headers: { host: `localhost:${port}` } });
      assert.equal(served.status, 101, `${path} with Host localhost`);
    }
  });

  test('a malformed Host is a 400 bad_request with no stack trace', async () => {
    for (const route of ['/api/sync/todos?since=0', '/api/field-sync/todos?since=0']) {
      const answer = await request(server, route, { headers: { host: 'a b' } });
      assertJsonError(answer, 400, 'bad_request', `GET ${route} with Host "a b"`);
      assert.doesNotMatch(answer.text, STACK_TEXT);
    }
    const upgraded = await upgrade(fieldWsUrl(server), { headers: { host: 'a b' } });
    assert.equal(upgraded.status, 400);
    assert.equal(upgraded.body?.error?.code, 'bad_request');
    assert.doesNotMatch(JSON.stringify(upgraded.body), STACK_TEXT);
  });
});

describe('DNS rebinding with the app’s own host list', () => {
  const started: TestServer[] = [];
  const start = async (options: Partial<SyncEngineOptions>) => {
    const server = await startServer(options);
    started.push(server);
    return server;
  };
  after(async () => {
    for (const server of started) await server.close();
  });

  test('allowedHosts: listed hosts (and loopback) are served, others are 403', async () => {
    const server = await start({ allowedHosts: ['app.example'] });
    const port = portOf(server);
    for (const host of ['app.example', `app.example:${port}`, 'APP.example', `localhost:${port}`]) {
      const answer = await request(server, '/api/sync/todos?since=0', { headers: { host } });
      assert.equal(answer.status, 200, `Host ${host}: ${answer.text.slice(0, 200)}`);
    }
    for (const host of ['evil.example', `evil.example:${port}`, 'app.example.evil.example', 'evilapp.example']) {
      assertJsonError(await request(server, '/api/sync/todos?since=0', { headers: { host } }), 403, 'forbidden', `Host ${host}`);
    }
    assert.equal((await upgrade(server.wsUrl, { headers: { host: 'evil.example' } })).status, 403);
    assert.equal((await upgrade(server.wsUrl, { headers: { host: 'app.example' } })).status, 101);
  });

  test('allowedOrigins: the app chose its hosts, so a foreign Host passes the host check', async () => {
    const server = await start({ allowedOrigins: ['http://app.example'] });
    const port = portOf(server);
    const answer = await request(server, '/api/sync/todos?since=0', { headers: { host: `evil.example:${port}` } });
    assert.equal(answer.status, 200, answer.text.slice(0, 200));
    // The origin list itself still holds.
    const stream = await request(server, '/api/sync/events', {
      headers: { host: `evil.example:${port}`, origin: `http://evil.example:${port}` },
    });
    assertJsonError(stream, 403, 'forbidden', 'stream from an unlisted origin');
    assert.equal((await upgrade(server.wsUrl, { headers: { host: 'app.example' }, origin: 'http://app.example' })).status, 101);
    assert.equal((await upgrade(server.wsUrl, { headers: { host: 'app.example' }, origin: EVIL })).status, 403);
  });
});
