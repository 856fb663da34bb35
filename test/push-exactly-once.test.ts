import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`push [${store.name}]`, () => {
    let server: TestServer;
    const rows = async () => {
      const { body } = await getJson(`${server.url}/api/sync/todos?since=0&limit=10000`);
      return body.changes.map((change: any) => change.data);
    };
    before(async () => {
      server = await store.start();
    });
    after(() => server.close());

    test("the seed's request shape (no client or mutation ids) is applied", async () => {
      const { status, body } = await postJson(`${server.url}/api/sync/todos`, {
        changes: [{ id: '1', action: 'create', data: { title: 'Bob', done: false } }],
      });
      assert.equal(status, 200);
      assert.equal(body.results[0].status, 'applied');
      assert.equal(body.results[0].id, '1');
      assert.ok(body.results[0].version > 0);
      assert.ok((await rows()).some((row: any) => row.id === '1' && row.title === 'Bob'));
    });

    test('a retried push is applied exactly once, and a longer retry applies only the new tail', async () => {
      const batch = {
        client_id: 'client-a',
        changes: [1, 2, 3].map((n) => ({ mutation_id: n, id: `eo${n}`, action: 'create', data: { title: `t${n}`, done: false } })),
      };
      const first = await postJson(`${server.url}/api/sync/todos`, batch);
      assert.deepEqual(
        first.body.results.map((result: any) => result.status),
        ['applied', 'applied', 'applied'],
      );
      const versionAfterFirst = first.body.version;
      const retry = await postJson(`${server.url}/api/sync/todos`, batch);
      assert.deepEqual(
        retry.body.results.map((result: any) => [result.status, result.duplicate]),
        [
          ['applied', true],
          ['applied', true],
          ['applied', true],
        ],
      );
      // Nothing was written again: the log did not move and the server row is returned to converge on.
      assert.equal(retry.body.version, versionAfterFirst);
      assert.equal(retry.body.results[0].row.title, 't1');
      const longer = await postJson(`${server.url}/api/sync/todos`, {
        client_id: 'client-a',
        changes: [
          ...batch.changes,
          { mutation_id: 4, id: 'eo1', action: 'update', data: { title: 't1 edited' } },
          { mutation_id: 5, id: 'eo4', action: 'create', data: { title: 't4', done: true } },
        ],
      });
      assert.deepEqual(
        longer.body.results.map((result: any) => [result.mutation_id, result.status, result.duplicate ?? false]),
        [
          [1, 'applied', true],
          [2, 'applied', true],
          [3, 'applied', true],
          [4, 'applied', false],
          [5, 'applied', false],
        ],
      );
      const byId = Object.fromEntries((await rows()).map((row: any) => [row.id, row]));
      assert.equal(byId.eo1.title, 't1 edited');
      assert.equal(byId.eo4.done, true);
      // Each create reached the log exactly once.
      const log = await getJson(`${server.url}/api/sync/todos?since=${first.body.version - 3}&limit=100`);
      assert.equal(log.body.changes.filter((change: any) => change.id === 'eo2').length, 1);
    });

    test('the same push sent concurrently lands once', async () => {
      const batch = {
        client_id: 'client-race',
        changes: Array.from({ length: 20 }, (_, index) => ({
          mutation_id: index + 1,
          id: `race${index}`,
          action: 'create',
          data: { title: 'r', done: false },
        })),
      };
      const answers = await Promise.all(Array.from({ length: 5 }, () => postJson(`${server.url}/api/sync/todos`, batch)));
      const fresh = answers.flatMap((answer) => answer.body.results.filter((result: any) => !result.duplicate));
      assert.equal(fresh.length, 20, 'each mutation applied by exactly one of the concurrent pushes');
      const start = Math.min(...answers.map((answer) => answer.body.version)) - 20;
      const { body } = await getJson(`${server.url}/api/sync/todos?since=${Math.max(0, start - 50)}&limit=1000`);
      const creates = body.changes.filter((change: any) => change.id.startsWith('race'));
      assert.equal(creates.length, 20);
    });

    test('a rejected change does not block the changes behind it', async () => {
      const { body } = await postJson(`${server.url}/api/sync/todos`, {
        client_id: 'client-b',
        changes: [
          { mutation_id: 1, id: 'rj1', action: 'create', data: { title: 'fine', done: false } },
          { mutation_id: 2, id: 'rj2', action: 'create', data: { title: null, done: false } },
          { mutation_id: 3, id: 'rj3', action: 'create', data: { title: 'also fine', done: true } },
        ],
      });
      assert.deepEqual(
        body.results.map((result: any) => result.status),
        ['applied', 'rejected', 'applied'],
      );
      assert.match(body.results[1].reason, /constraint|null/i);
      assert.doesNotMatch(body.results[1].reason, /INSERT|SELECT/i, 'no SQL text leaks');
      const ids = (await rows()).map((row: any) => row.id);
      assert.ok(ids.includes('rj1') && ids.includes('rj3') && !ids.includes('rj2'));
      // The rejected mutation counts as processed: a retry does not re-run it.
      const retry = await postJson(`${server.url}/api/sync/todos`, {
        client_id: 'client-b',
        changes: [{ mutation_id: 2, id: 'rj2', action: 'create', data: { title: null, done: false } }],
      });
      assert.equal(retry.body.results[0].duplicate, true);
    });

    test('creates without an id get one; updates are partial; deletes of missing rows are idempotent', async () => {
      const created = await postJson(`${server.url}/api/sync/todos`, {
        changes: [{ action: 'create', data: { title: 'no id', done: false } }],
      });
      const id = created.body.results[0].id;
      assert.match(id, /^[0-9a-f-]{36}$/);
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id, action: 'update', data: { done: true } }] });
      const row = (await rows()).find((candidate: any) => candidate.id === id);
      assert.deepEqual([row.title, row.done], ['no id', true]);
      const deleted = await postJson(`${server.url}/api/sync/todos`, {
        changes: [
          { id, action: 'delete' },
          { id, action: 'delete' },
        ],
      });
      assert.deepEqual(
        deleted.body.results.map((result: any) => result.status),
        ['applied', 'applied'],
      );
      assert.ok(!(await rows()).some((candidate: any) => candidate.id === id));
    });
  });
}
