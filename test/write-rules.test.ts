/**
 * Write rules see the truth, on SQLite and PostgreSQL over real HTTP: the
 * action a change really performs (a `create` of an existing id is an update,
 * judged with the current row) and JSON columns parsed as reads show them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { WriteAttempt } from '../src/core/config.js';
import { postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`write rules see the truth [${store.name}]`, () => {
    let server: TestServer;
    const seen: WriteAttempt[] = [];
    before(async () => {
      server = await store.start({
        setupSql: 'CREATE TABLE docs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, meta JSON)',
        entities: [
          {
            name: 'docs',
            write: (attempt) => {
              seen.push(structuredClone(attempt));
              return true;
            },
          },
        ],
      });
      await store.externalWrite(server, `INSERT INTO docs (id, owner, meta) VALUES ('d1', 'alice', '{"tags":["a"]}')`);
    });
    after(() => server.close());

    test('a create of an existing id reaches the rule as an update, with the current row and its JSON parsed', async () => {
      seen.length = 0;
      const { status, body } = await postJson(`${server.url}/api/sync/docs`, {
        changes: [{ id: 'd1', action: 'create', data: { owner: 'bob', meta: { tags: ['b'] } } }],
      });
      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(seen.length, 1);
      assert.equal(seen[0]?.action, 'update');
      assert.equal(seen[0]?.current?.owner, 'alice');
      assert.deepEqual(seen[0]?.current?.meta, { tags: ['a'] }, 'the JSON column as a read shows it, not its text');
    });

    test('a create of a new id reaches the rule as a create without a current row', async () => {
      seen.length = 0;
      const { status } = await postJson(`${server.url}/api/sync/docs`, {
        changes: [{ id: 'd2', action: 'create', data: { owner: 'carol', meta: null } }],
      });
      assert.equal(status, 200);
      assert.deepEqual([seen[0]?.action, seen[0]?.current], ['create', null]);
    });
  });
}
