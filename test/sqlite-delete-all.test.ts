/**
 * SQLite has no TRUNCATE; its equivalent, `DELETE FROM t` without `WHERE`,
 * would skip row triggers through the truncate optimization, which SQLite
 * does not use on a table that has triggers. This proves that the capture
 * triggers are enough: a delete-all made by another process reaches every
 * client, by pull and live, as one delete per row.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { getJson, postJson, type TestServer, WsClient, waitFor } from './helpers.js';
import { sqliteStore } from './stores.js';

describe('DELETE without WHERE on SQLite is captured', () => {
  let server: TestServer;
  before(async () => {
    server = await sqliteStore.start();
  });
  after(() => server.close());

  test('every row of a delete-all reaches pulls and live clients as a delete', async () => {
    const changes = Array.from({ length: 50 }, (_, index) => ({
      id: `d${index}`,
      action: 'create',
      data: { title: `row ${index}`, done: false },
    }));
    assert.equal((await postJson(`${server.url}/api/sync/todos`, { changes })).status, 200);
    const from = (await getJson(`${server.url}/api/sync/todos?since=0&limit=1000`)).body.version as number;
    const live = await WsClient.connect(server.wsUrl);
    try {
      await live.request({ type: 'subscribe', entities: ['todos'] });
      await sqliteStore.externalWrite(server, 'DELETE FROM todos');
      await waitFor(() => live.changes().filter((change) => change.action === 'delete').length === 50, 10_000, '50 live deletes');
      const pull = await getJson(`${server.url}/api/sync/todos?since=${from}&limit=1000`);
      const deleted = pull.body.changes
        .filter((change: { action: string }) => change.action === 'delete')
        .map((change: { id: string }) => change.id);
      assert.equal(new Set(deleted).size, 50);
      const snapshot = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.deepEqual(snapshot.body.changes, []);
    } finally {
      live.close();
    }
  });
});
