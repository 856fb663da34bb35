import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { postJson, type TestServer, WsClient, waitFor } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`WebSocket /api/sync/ws [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({ limits: { maxWsMessageBytes: 64 * 1024, wsMessagesPerSecond: 1000 } });
    });
    after(() => server.close());

    test('hello, subscribe, and live change messages for pushes and raw SQL', async () => {
      const client = await WsClient.connect(server.wsUrl);
      const hello = client.messages[0];
      assert.equal(hello.type, 'hello');
      assert.deepEqual(hello.entities, ['todos']);
      const subscribed = await client.request({ type: 'subscribe', entities: ['todos'] });
      assert.equal(subscribed.type, 'subscribed');
      assert.deepEqual(subscribed.entities, ['todos']);
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'w1', action: 'create', data: { title: 'http', done: false } }] });
      // The create arrives alone before the raw write, so one batch holds exactly one change.
      await waitFor(() => client.changes().length >= 1);
      await store.externalWrite(server, "UPDATE todos SET done = true WHERE id = 'w1'");
      await waitFor(() => client.changes().length >= 2);
      assert.deepEqual(
        client.changes().map((change) => [change.id, change.action, change.data.done]),
        [
          ['w1', 'create', false],
          ['w1', 'update', true],
        ],
      );
      const single = client.messages.find((message) => message.type === 'change');
      assert.equal(single.change.id, 'w1', "one-change batches carry the seed's `change` field");
      client.close();
    });

    test('sync answers like an HTTP pull; push answers with push_ack in both shapes', async () => {
      const client = await WsClient.connect(server.wsUrl);
      const snapshot = await client.request({ type: 'sync', entity: 'todos', since: 0 });
      assert.equal(snapshot.type, 'sync');
      assert.equal(snapshot.reset, true);
      assert.ok(snapshot.changes.some((change: any) => change.id === 'w1'));
      // The seed's single-change shape.
      const seedAck = await client.request({
        type: 'push',
        entity: 'todos',
        entity_id: 'w2',
        action: 'create',
        data: { title: 'seed', done: false },
      });
      assert.equal(seedAck.type, 'push_ack');
      assert.equal(seedAck.entity_id, 'w2');
      assert.ok(seedAck.version > snapshot.version);
      // The batch shape with exactly-once ids.
      const batch = {
        type: 'push',
        entity: 'todos',
        client_id: 'ws-client',
        changes: [{ mutation_id: 1, id: 'w3', action: 'create', data: { title: 'batch', done: false } }],
      };
      const ack = await client.request(batch);
      assert.equal(ack.results[0].status, 'applied');
      const again = await client.request(batch);
      assert.equal(again.results[0].duplicate, true);
      const incremental = await client.request({ type: 'sync', entity: 'todos', since: snapshot.version });
      assert.deepEqual(
        incremental.changes.map((change: any) => change.id),
        ['w2', 'w3'],
      );
      client.close();
    });

    test('every request gets exactly one reply, errors included', async () => {
      const client = await WsClient.connect(server.wsUrl);
      const requests = [
        { type: 'ping', t: 1 },
        { type: 'subscribe', entities: ['todos'] },
        { type: 'sync', entity: 'todos', since: 0 },
        { type: 'nonsense' },
        { type: 'sync', entity: 'nope' },
        { type: 'sync', entity: 'todos', since: -1 },
        { type: 'push', entity: 'todos', changes: [{ id: 'x', action: 'explode' }] },
        { type: 'subscribe', entities: ['sqlite_master'] },
      ];
      const replies = [];
      for (const request of requests) replies.push(await client.request(request));
      assert.deepEqual(
        replies.map((reply) => reply.type),
        ['pong', 'subscribed', 'sync', 'error', 'error', 'error', 'error', 'error'],
      );
      assert.equal(replies[0].t, 1);
      assert.equal(replies[3].code, 'unknown_message');
      assert.equal(replies[4].code, 'unknown_entity');
      assert.equal(replies[6].code, 'bad_request');
      // Malformed frames without a ref still get an error reply.
      const count = client.messages.length;
      client.sendRaw('{not json');
      client.sendRaw('[1,2,3]');
      client.sendRaw(Buffer.from([1, 2, 3]));
      await waitFor(() => client.messages.length >= count + 3);
      assert.deepEqual(
        client.messages.slice(count).map((message) => [message.type, message.code]),
        [
          ['error', 'bad_json'],
          ['error', 'bad_request'],
          ['error', 'bad_request'],
        ],
      );
      client.close();
    });

    test('subscribe with since catches up from the log, then goes live without repeats', async () => {
      const first = await WsClient.connect(server.wsUrl);
      const { version } = await first.request({ type: 'sync', entity: 'todos', since: 0 });
      first.close();
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'c1', action: 'create', data: { title: 'missed', done: false } }] });
      const client = await WsClient.connect(server.wsUrl);
      await client.request({ type: 'subscribe', entities: ['todos'], since: version });
      await waitFor(() => client.changes().some((change) => change.id === 'c1'));
      assert.deepEqual(
        client.messages.slice(1, 3).map((message) => message.type),
        ['subscribed', 'change'],
        'the subscribe reply comes before the replayed changes',
      );
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'c2', action: 'create', data: { title: 'live', done: false } }] });
      await waitFor(() => client.changes().some((change) => change.id === 'c2'));
      assert.deepEqual(
        client.changes().map((change) => change.id),
        ['c1', 'c2'],
      );
      client.close();
    });

    test('an oversized message closes the socket with 1009 instead of buffering it', async () => {
      const socket = new WebSocket(server.wsUrl);
      await new Promise((resolve) => socket.once('open', resolve));
      const closed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
      socket.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(100 * 1024) }));
      assert.equal(await closed, 1009);
    });

    test('other paths are not upgraded', async () => {
      const socket = new WebSocket(server.wsUrl.replace('/api/sync/ws', '/api/sync/other'));
      const outcome = await new Promise<string>((resolve) => {
        socket.once('open', () => resolve('open'));
        socket.once('error', () => resolve('refused'));
        socket.once('unexpected-response', (_request, response) => resolve(`status ${response.statusCode}`));
      });
      assert.notEqual(outcome, 'open');
    });
  });
}
