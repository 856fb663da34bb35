/**
 * `cleanup()` never leaves a live client with a row the server deleted:
 * - a delete pruned before the hub read it (cleanup on another node, or
 *   right after the write) makes the hub tell the subscribers that joined
 *   below the pruned horizon to refetch: WebSocket close 4205, SSE ended;
 * - a subscriber resuming with `since=` below a pruned horizon is told to
 *   refetch instead of being replayed a log that lacks the deletes.
 * Real engines on real SQLite files and PostgreSQL, over loopback.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import WebSocket from 'ws';
import { CLOSE_MUST_REFETCH } from '../src/core/protocol.js';
import { postJson, SseClient, type TestServer, waitFor } from './helpers.js';
import { STORES, sqliteStore } from './stores.js';

const closeOf = (url: string, subscribe: Record<string, unknown>) =>
  new Promise<{ code: number; reason: string; messages: any[] }>((resolve, reject) => {
    const socket = new WebSocket(url);
    const messages: any[] = [];
    socket.on('open', () => socket.send(JSON.stringify(subscribe)));
    socket.on('message', (data) => messages.push(JSON.parse(String(data))));
    const timer = setTimeout(() => {
      socket.terminate();
      reject(new Error(`no close within 20 s; got ${JSON.stringify(messages)}`));
    }, 20_000);
    socket.on('close', (code, reason) => {
      clearTimeout(timer);
      resolve({ code, reason: String(reason), messages });
    });
    socket.on('error', reject);
  });

const create = (id: string) => ({ changes: [{ id, action: 'create', data: { title: id, done: false } }] });

describe('a delete the hub had not read yet, pruned [sqlite]', () => {
  let server: TestServer;
  after(() => server?.close());

  test('the live subscriber is told to refetch', async () => {
    // The hub's poll is an hour here; its WAL watch runs on a later turn of the event loop than the one below.
    server = await sqliteStore.start({ pollMs: 3_600_000 });
    const created = await postJson(`${server.url}/api/sync/todos`, create('gone'));
    const since = created.body.version;
    const closed = closeOf(`${server.wsUrl}?protocol=2`, { type: 'subscribe', entities: ['todos'], since });
    const events = new SseClient(`${server.url}/api/sync/events?entities=todos&since=${since}`);
    await waitFor(() => events.status === 200, 5000, 'the SSE stream');
    // Another connection deletes the row, and cleanup prunes the delete before this node's hub read it: all in
    // one turn of the event loop (microtasks only), so the file event of the delete is handled after the cleanup.
    const other = new Database(server.dbPath);
    other.prepare("DELETE FROM todos WHERE id = 'gone'").run();
    other.close();
    const deleted = Date.now();
    while (Date.now() < deleted + 5); // older than "now", to the millisecond, without yielding
    await server.engine.cleanup(0);
    // The next write wakes the hub.
    await postJson(`${server.url}/api/sync/todos`, create('next'));
    const { code, reason, messages } = await closed;
    assert.equal(code, CLOSE_MUST_REFETCH);
    assert.match(reason, /^todos: pull again/);
    assert.ok(!messages.some((message) => message.type === 'change' && message.changes?.some((change: any) => change.id === 'gone')));
    await Promise.race([
      events.done,
      new Promise((_, reject) => setTimeout(() => reject(new Error('the SSE stream did not end')), 20_000)),
    ]);
    // The pull that follows is a reset: the row is gone.
    const pulled = await fetch(`${server.url}/api/sync/todos?since=${since}`).then((response) => response.json());
    assert.equal(pulled.reset, true);
    assert.ok(!pulled.changes.some((change: any) => change.id === 'gone'));
  });
});

for (const store of STORES) {
  describe(`resuming below a pruned horizon [${store.name}]`, () => {
    let server: TestServer;
    after(() => server?.close());

    test('a subscriber with an old cursor is told to refetch, not replayed', async () => {
      server = await store.start();
      const first = await postJson(`${server.url}/api/sync/todos`, create('old'));
      const since = first.body.version;
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'old', action: 'delete' }] });
      await postJson(`${server.url}/api/sync/todos`, create('kept'));
      // Read by the hub well before the cleanup: nothing it sent lacks the delete, so no one else is told.
      await new Promise((resolve) => setTimeout(resolve, 600));
      await server.engine.cleanup(0);
      const { code, messages } = await closeOf(`${server.wsUrl}?protocol=2`, { type: 'subscribe', entities: ['todos'], since });
      assert.equal(code, CLOSE_MUST_REFETCH);
      assert.ok(!messages.some((message) => message.type === 'change'), 'no incomplete replay');
      // A cursor at the horizon is served as before.
      const current = await fetch(`${server.url}/api/sync/todos?since=0`).then((response) => response.json());
      const live = new WebSocket(`${server.wsUrl}?protocol=2`);
      const got: any[] = [];
      live.on('message', (data) => got.push(JSON.parse(String(data))));
      await new Promise((resolve) => live.on('open', resolve));
      live.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since: current.version, ref: 1 }));
      await postJson(`${server.url}/api/sync/todos`, create('fresh'));
      await waitFor(() => got.some((message) => message.type === 'change' && message.changes.some((change: any) => change.id === 'fresh')));
      live.close();
    });
  });
}
