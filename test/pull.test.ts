import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`pull [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start();
    });
    after(() => server.close());

    test('before the first write the snapshot cursor is above 0, so clients continue incrementally', async () => {
      const { body } = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.equal(body.reset, true);
      assert.ok(body.version > 0, 'version 0 would mean "no snapshot yet" and make every page load refetch');
      const next = await getJson(`${server.url}/api/sync/todos?since=${body.version}`);
      assert.equal(next.body.reset, undefined);
    });

    test('since=0 is a snapshot of current rows, not the log replayed', async () => {
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('s1', 'one', false)");
      await store.externalWrite(server, "UPDATE todos SET title = 'one again' WHERE id = 's1'");
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('s2', 'two', true)");
      await store.externalWrite(server, "DELETE FROM todos WHERE id = 's2'");
      const { status, body } = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.equal(status, 200);
      assert.equal(body.entity, 'todos');
      assert.equal(body.reset, true);
      assert.equal(body.has_more, false);
      assert.deepEqual(
        body.changes.map((change: any) => [change.id, change.entity_id, change.action, change.data.title, change.data.done]),
        [['s1', 's1', 'create', 'one again', false]],
      );
      // The snapshot is consistent with the cursor it returns: pulling from it yields nothing older.
      const next = await getJson(`${server.url}/api/sync/todos?since=${body.version}`);
      assert.deepEqual(next.body.changes, []);
      assert.equal(next.body.version, body.version);
      // Each snapshot row carries its own version (for base_version in later pushes).
      assert.ok(body.changes[0].version > 0 && body.changes[0].version <= body.version);
    });

    test('incremental pulls return changes after the cursor, newest per row, with deletes', async () => {
      const start = (await getJson(`${server.url}/api/sync/todos?since=0`)).body.version;
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('i1', 'a', false)");
      await store.externalWrite(server, "UPDATE todos SET done = true WHERE id = 'i1'");
      await store.externalWrite(server, "DELETE FROM todos WHERE id = 's1'");
      const { body } = await getJson(`${server.url}/api/sync/todos?since=${start}`);
      assert.equal(body.has_more, false);
      assert.deepEqual(
        body.changes.map((change: any) => [change.id, change.action, change.data?.done ?? null]),
        [
          ['i1', 'update', true],
          ['s1', 'delete', null],
        ],
      );
      assert.equal(body.changes[1].data, null);
      assert.ok(body.version >= body.changes[1].version);
    });

    test('pages with limit and has_more walk the whole log exactly once', async () => {
      const start = (await getJson(`${server.url}/api/sync/todos?since=0`)).body.version;
      const ids = Array.from({ length: 25 }, (_, index) => `p${index}`);
      await postJson(`${server.url}/api/sync/todos`, {
        changes: ids.map((id) => ({ id, action: 'create', data: { title: id, done: false } })),
      });
      const seen: string[] = [];
      let since = start;
      let pages = 0;
      for (;;) {
        const { body } = await getJson(`${server.url}/api/sync/todos?since=${since}&limit=7`);
        pages++;
        seen.push(...body.changes.map((change: any) => change.id));
        assert.ok(body.version > since || !body.has_more);
        since = body.version;
        if (!body.has_more) break;
      }
      assert.equal(pages, 4);
      assert.deepEqual(seen, ids);
    });

    test('snapshot pagination covers every row once via the next token', async () => {
      const all = new Set<string>();
      let url = `${server.url}/api/sync/todos?since=0&limit=4`;
      const pageVersions: number[] = [];
      for (;;) {
        const { body } = await getJson(url);
        if (pageVersions.length === 0) {
          const rows = (await getJson(`${server.url}/api/sync/todos?since=0&limit=10000`)).body.changes.length;
          assert.equal(body.total, rows, 'the first page of a paged snapshot says how many rows to expect');
        } else {
          assert.equal(body.total, undefined);
        }
        pageVersions.push(body.version);
        // The last page says the snapshot's version; pages before it a cursor at or below it (test/seed-client.test.ts).
        if (!body.has_more)
          assert.ok(
            pageVersions.every((version) => version <= body.version),
            'pages before the last never pass it',
          );
        for (const change of body.changes) {
          assert.ok(!all.has(change.id), `row ${change.id} served twice`);
          all.add(change.id);
        }
        if (!body.has_more) break;
        assert.ok(body.next);
        url = `${server.url}/api/sync/todos?since=0&limit=4&snapshot=${body.next}`;
      }
      const { body } = await getJson(`${server.url}/api/sync/todos?since=0&limit=1000`);
      assert.deepEqual([...all].sort(), body.changes.map((change: any) => change.id).sort());
    });

    test('a cursor older than the pruned log gets a reset snapshot; cleanup keeps the live rows', async () => {
      const before = (await getJson(`${server.url}/api/sync/todos?since=0`)).body;
      await store.externalWrite(server, "INSERT INTO todos (id, title, done) VALUES ('gone', 'x', false)");
      await store.externalWrite(server, "DELETE FROM todos WHERE id = 'gone'");
      const stale = before.version;
      // Prune everything older than now: the tombstone of 'gone' goes, so `stale` can no longer be served.
      await new Promise((resolve) => setTimeout(resolve, 5)); // entries must be strictly older than the cutoff
      const removed = await server.engine.cleanup(0);
      assert.ok(removed > 0);
      const { body } = await getJson(`${server.url}/api/sync/todos?since=${stale}`);
      assert.equal(body.reset, true, 'must refetch');
      assert.deepEqual(body.changes.map((change: any) => change.id).sort(), before.changes.map((change: any) => change.id).sort());
      // A current cursor keeps working incrementally after cleanup.
      const current = (await getJson(`${server.url}/api/sync/todos?since=${body.version}`)).body;
      assert.equal(current.reset, undefined);
      assert.deepEqual(current.changes, []);
      // Rows keep their versions (the newest log entry per live row survives cleanup).
      assert.ok(body.changes.every((change: any) => change.version > 0));
    });

    test('schema endpoint publishes column types for client-side coercion', async () => {
      const { body } = await getJson(`${server.url}/api/sync/schema`);
      const todos = body.entities.find((entity: any) => entity.name === 'todos');
      assert.equal(todos.primaryKey, 'id');
      const types = Object.fromEntries(todos.columns.map((column: any) => [column.name, column.type]));
      assert.deepEqual(types, { id: 'text', title: 'text', done: 'boolean', updated_at: 'text' });
      assert.deepEqual(todos.routes, ['/todos']);
    });
  });
}
