/**
 * `TRUNCATE` of a synced PostgreSQL table, by another connection, reaches
 * every client: live sockets and pulls get one delete per row, a snapshot is
 * empty, and field-level sync sees the rows deleted too.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, type TestServer, WsClient, waitFor } from './helpers.js';
import { postgresStore } from './stores.js';

describe('TRUNCATE on PostgreSQL is captured', () => {
  let server: TestServer;
  before(async () => {
    server = await postgresStore.start({ fieldSync: FieldMergeStrategy.LastWriteWins });
  });
  after(() => server.close());

  test('every row of a truncated table reaches live clients, pulls and field sync as a delete', async () => {
    const changes = Array.from({ length: 30 }, (_, index) => ({
      id: `t${index}`,
      action: 'create',
      data: { title: `row ${index}`, done: false },
    }));
    assert.equal((await postJson(`${server.url}/api/sync/todos`, { changes })).status, 200);
    await waitFor(async () => (await getJson(`${server.url}/api/sync/todos?since=0`)).body.changes.length === 30, 10_000, 'rows visible');
    const from = (await getJson(`${server.url}/api/sync/todos?since=0`)).body.version as number;
    const fieldFrom = (await getJson(`${server.url}/api/field-sync/todos?since=0`)).body.version as number;
    const live = await WsClient.connect(server.wsUrl);
    try {
      await live.request({ type: 'subscribe', entities: ['todos'] });
      await postgresStore.externalWrite(server, 'TRUNCATE todos');
      await waitFor(() => live.changes().filter((change) => change.action === 'delete').length === 30, 10_000, '30 live deletes');
      const pull = await getJson(`${server.url}/api/sync/todos?since=${from}&limit=1000`);
      assert.equal(
        new Set(
          pull.body.changes.filter((change: { action: string }) => change.action === 'delete').map((change: { id: string }) => change.id),
        ).size,
        30,
      );
      assert.deepEqual((await getJson(`${server.url}/api/sync/todos?since=0`)).body.changes, []);
      const fields = await waitFor(
        async () => {
          const page = (await getJson(`${server.url}/api/field-sync/todos?since=${fieldFrom}&limit=1000`)).body;
          return (
            page.changes.filter((change: { field: string; action: string }) => change.field === '*' && change.action === 'delete')
              .length === 30 && page
          );
        },
        10_000,
        'field row deletes',
      );
      assert.ok(fields);
    } finally {
      live.close();
    }
  });
});
