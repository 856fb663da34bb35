import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

/**
 * The package as a user gets it: `npm pack`, installed into a fresh app
 * outside the repository, imported through its `exports` map, type-checked
 * through its `.d.ts`, and run with each adapter and store, syncing a row end
 * to end over real HTTP and WebSocket.
 */
const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const PG_ADMIN = 'postgres://postgres@127.0.0.1:5432/postgres';

/** One app per adapter: serves /hello itself and mounts the engine; prints the port when listening. */
const APP = `
import http from 'node:http';
import Database from 'better-sqlite3';
import pg from 'pg';
import { SyncEngine, nodeHandler } from 'rhtmx-sync';

const [adapter, databaseUrl] = process.argv.slice(2);
let db;
if (databaseUrl.startsWith('postgres')) {
  db = new pg.Pool({ connectionString: databaseUrl });
  await db.query('CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false)');
} else {
  db = new Database(databaseUrl);
  db.exec('CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0)');
}
const engine = await SyncEngine.create({ db, entities: ['todos'] });
let server;
if (adapter === 'node') {
  server = http.createServer(nodeHandler(engine, (req, res) => res.end('hello')));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
} else if (adapter === 'express') {
  const { default: express } = await import('express');
  const { expressMiddleware } = await import('rhtmx-sync/express');
  const app = express();
  app.use(expressMiddleware(engine));
  app.get('/hello', (_req, res) => res.send('hello'));
  server = await new Promise((resolve) => { const s = app.listen(0, '127.0.0.1', () => resolve(s)); });
} else if (adapter === 'hono') {
  const { Hono } = await import('hono');
  const { serve } = await import('@hono/node-server');
  const { mountSync } = await import('rhtmx-sync/hono');
  const app = new Hono();
  mountSync(app, engine);
  app.get('/hello', (c) => c.text('hello'));
  server = await new Promise((resolve) => { const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s)); });
} else if (adapter === 'fastify') {
  const { default: Fastify } = await import('fastify');
  const { fastifySync } = await import('rhtmx-sync/fastify');
  const app = Fastify();
  await app.register(fastifySync(engine, { websocket: false }));
  app.get('/hello', async () => 'hello');
  await app.listen({ port: 0, host: '127.0.0.1' });
  server = app.server;
}
engine.attach(server);
console.log('PORT ' + server.address().port);
`;

/** A client run by the test: push over HTTP, see it over WebSocket and in a pull. */
async function syncRoundTrip(port: number): Promise<void> {
  const base = `http://127.0.0.1:${port}`;
  assert.equal(await (await fetch(`${base}/hello`)).text(), 'hello');
  const { WebSocket } = await import('ws');
  // Our client's batch protocol (an undeclared socket gets one message per change).
  const socket = new WebSocket(`ws://127.0.0.1:${port}/api/sync/ws?protocol=2`);
  const messages: any[] = [];
  socket.on('message', (data) => messages.push(JSON.parse(String(data))));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  socket.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], ref: 1 }));
  await waitUntil(() => messages.some((message) => message.ref === 1));
  const id = `pkg-${Math.random().toString(36).slice(2)}`;
  const push = await fetch(`${base}/api/sync/todos`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      client_id: 'pkg',
      fresh: true,
      changes: [{ mutation_id: Date.now(), id, action: 'create', data: { title: 'packed', done: false } }],
    }),
  });
  assert.equal((await push.json()).results[0].status, 'applied');
  await waitUntil(() => messages.some((message) => message.type === 'change' && message.changes.some((change: any) => change.id === id)));
  const pulled = await (await fetch(`${base}/api/sync/todos?since=0`)).json();
  assert.ok(pulled.changes.some((change: any) => change.id === id && change.data.title === 'packed'));
  assert.match(await (await fetch(`${base}/api/sync/client.js`)).text(), /rhtmx/);
  socket.close();
}

async function waitUntil(check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('the npm package, installed into a fresh app', { timeout: 300_000 }, () => {
  let app: string;
  let pgDatabase: string;
  before(async () => {
    app = mkdtempSync(join(tmpdir(), 'rhtmx-pkg-'));
    const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', app], { cwd: repo, encoding: 'utf8' })
      .trim()
      .split('\n')
      .at(-1) as string;
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(app, packed)], { cwd: app, stdio: 'pipe' });
    // Optional peers the app chooses to use, taken from this repo's install (no native rebuild).
    for (const name of ['better-sqlite3', 'pg', 'express', 'hono', '@hono/node-server', 'fastify', 'typescript', '@types/node']) {
      const target = join(app, 'node_modules', name);
      mkdirSync(dirname(target), { recursive: true });
      symlinkSync(join(repo, 'node_modules', name), target);
    }
    pgDatabase = `rhtmx_pkg_${process.pid}`;
    const admin = new pg.Client(PG_ADMIN);
    await admin.connect();
    await admin.query(`CREATE DATABASE ${pgDatabase}`);
    await admin.end();
  });
  after(async () => {
    rmSync(app, { recursive: true, force: true });
    const admin = new pg.Client(PG_ADMIN);
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${pgDatabase} WITH (FORCE)`);
    await admin.end();
  });

  test('ships only built files with types for every entry point', () => {
    const installed = join(app, 'node_modules', 'rhtmx-sync');
    const top = readdirSync(installed).sort();
    assert.deepEqual(
      top.filter((name) => !['README.md', 'docs', 'dist', 'package.json', 'LICENSE'].includes(name)),
      [],
    );
    for (const file of [
      'dist/src/index.d.ts',
      'dist/src/adapters/express.d.ts',
      'dist/src/adapters/hono.d.ts',
      'dist/src/adapters/fastify.d.ts',
      'dist/client/rhtmx-sync.js',
      'dist/client/rhtmx-sync.esm.js',
      'dist/client/types/client/esm.d.ts',
    ]) {
      assert.ok(readdirSync(join(installed, dirname(file))).includes(file.split('/').at(-1) as string), file);
    }
  });

  test('a TypeScript consumer type-checks against the shipped declarations', () => {
    writeFileSync(
      join(app, 'consumer.ts'),
      `import { SyncEngine, SyncConfig, SyncStrategy, FieldMergeStrategy, type PullResponse } from 'rhtmx-sync';
       import { expressMiddleware } from 'rhtmx-sync/express';
       import { mountSync } from 'rhtmx-sync/hono';
       import { fastifySync } from 'rhtmx-sync/fastify';
       import { createSyncClient, type SyncClient } from 'rhtmx-sync/client';
       const config = new SyncConfig({}, ['todos']).withStrategy(SyncStrategy.ServerWins).withFieldSync(FieldMergeStrategy.KeepBoth);
       export const engine: SyncEngine = new SyncEngine(config);
       export const page: Promise<PullResponse> = engine.pull('todos', 0);
       export const uses = [expressMiddleware, mountSync, fastifySync];
       export const client: () => SyncClient = () => createSyncClient({ baseUrl: '/api/sync', entities: ['todos'] });
      `,
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          lib: ['ES2022', 'DOM'],
          noEmit: true,
          skipLibCheck: false,
          types: ['node'],
        },
        files: ['consumer.ts'],
      }),
    );
    try {
      execFileSync(process.execPath, [join(app, 'node_modules/typescript/bin/tsc'), '-p', app], { cwd: app, encoding: 'utf8' });
    } catch (error) {
      assert.fail(`tsc failed:\n${(error as { stdout?: string }).stdout}`);
    }
  });

  const runs: Array<[string, 'sqlite' | 'postgres']> = [
    ['node', 'sqlite'],
    ['express', 'sqlite'],
    ['hono', 'sqlite'],
    ['fastify', 'sqlite'],
    ['node', 'postgres'],
    ['express', 'postgres'],
  ];
  for (const [adapter, storeName] of runs) {
    test(`${adapter} adapter on ${storeName}: a row syncs end to end`, async () => {
      writeFileSync(join(app, 'app.mjs'), APP);
      const databaseUrl = storeName === 'sqlite' ? join(app, `${adapter}.db`) : `postgres://postgres@127.0.0.1:5432/${pgDatabase}`;
      const child = spawn(process.execPath, ['app.mjs', adapter, databaseUrl], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (chunk) => {
        output += chunk;
      });
      child.stderr.on('data', (chunk) => {
        output += chunk;
      });
      try {
        await waitUntil(() => /PORT \d+/.test(output) || child.exitCode !== null, 30_000).catch(() => {});
        const port = Number(/PORT (\d+)/.exec(output)?.[1]);
        assert.ok(port > 0, `the app did not start: ${output}`);
        await syncRoundTrip(port);
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});
