import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { getJson, postJson, SseClient, type TestServer, waitFor } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`SSE /api/sync/events [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({
        setupSql: `
          CREATE TABLE todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT false, updated_at TEXT);
          CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);
        `,
        entities: ['todos', 'notes'],
        heartbeatMs: 50,
      });
    });
    after(() => server.close());

    const push = (entity: string, id: string, data: Record<string, unknown>) =>
      postJson(`${server.url}/api/sync/${entity}`, { changes: [{ id, action: 'create', data }] });

    test('streams pushed and raw-SQL changes with id: <version>, proxy-safe headers', async () => {
      const sse = new SseClient(`${server.url}/api/sync/events`);
      await waitFor(() => sse.status === 200, 5000, 'stream open');
      assert.match(sse.headers?.get('content-type') ?? '', /^text\/event-stream/);
      assert.match(sse.headers?.get('cache-control') ?? '', /no-cache/);
      assert.equal(sse.headers?.get('x-accel-buffering'), 'no');
      await push('todos', 'sse1', { title: 'pushed', done: false });
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('sse2', 'raw sql', true)");
      await waitFor(() => sse.changes().length >= 2, 5000, 'two changes');
      const [first, second] = sse.changes();
      assert.deepEqual([first.id, first.action, first.data.title], ['sse1', 'create', 'pushed']);
      assert.deepEqual([second.id, second.data.done], ['sse2', true]);
      for (const event of sse.events) {
        assert.equal(Number(event.id), event.data.version, 'event id is the version the batch brings the client to');
        assert.equal(event.data.type, 'change');
      }
      sse.close();
    });

    test('Last-Event-ID resumes exactly after the last seen event', async () => {
      const first = new SseClient(`${server.url}/api/sync/events?entities=todos`);
      await waitFor(() => first.status === 200);
      await push('todos', 'r1', { title: 'one', done: false });
      await waitFor(() => first.changes().some((change) => change.id === 'r1'));
      const lastId = first.events.at(-1)?.id as string;
      first.close();
      // Written while nobody listens.
      await push('todos', 'r2', { title: 'two', done: false });
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('r3', 'three', false)");
      const resumed = new SseClient(`${server.url}/api/sync/events?entities=todos`, { 'last-event-id': lastId });
      await waitFor(() => resumed.changes().some((change) => change.id === 'r3'), 5000, 'catch-up');
      await push('todos', 'r4', { title: 'four', done: false });
      await waitFor(() => resumed.changes().some((change) => change.id === 'r4'), 5000, 'live after catch-up');
      assert.deepEqual(
        resumed.changes().map((change) => change.id),
        ['r2', 'r3', 'r4'],
        'nothing repeated, nothing missed',
      );
      resumed.close();
    });

    test('?entities= filters the stream; unknown entities are refused', async () => {
      const notesOnly = new SseClient(`${server.url}/api/sync/events?entities=notes`);
      await waitFor(() => notesOnly.status === 200);
      await push('todos', 'f1', { title: 'ignored', done: false });
      await push('notes', 'n1', { body: 'wanted' });
      await waitFor(() => notesOnly.changes().length >= 1);
      assert.deepEqual(
        notesOnly.changes().map((change) => [change.entity, change.id]),
        [['notes', 'n1']],
      );
      notesOnly.close();
      const bad = await getJson(`${server.url}/api/sync/events?entities=todos,sqlite_master`);
      assert.equal(bad.status, 404);
      assert.equal(bad.body.error.code, 'unknown_entity');
      const badId = await getJson(`${server.url}/api/sync/events`, { headers: { 'last-event-id': 'NaN' } });
      assert.equal(badId.status, 400);
    });

    test('heartbeats keep an idle stream alive', async () => {
      const controller = new AbortController();
      const response = await fetch(`${server.url}/api/sync/events`, { signal: controller.signal });
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      let text = '';
      while (!text.includes(': ping')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      assert.match(text, /^retry: \d+/);
      assert.match(text, /: ping\n\n/);
      controller.abort();
    });

    test('a closed stream is unsubscribed from the hub', async () => {
      // Every stream the earlier tests closed is gone too.
      await waitFor(() => server.engine.connections().live === 0, 5000, 'earlier streams released');
      const sse = new SseClient(`${server.url}/api/sync/events`);
      await waitFor(() => server.engine.connections().live === 1, 5000, 'subscribed');
      sse.close();
      await waitFor(() => server.engine.connections().live === 0, 5000, 'unsubscribed');
    });
  });
}
