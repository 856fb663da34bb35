import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as v from 'valibot';
import { z } from 'zod';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

/** The same rules in two Standard Schema libraries: a title of 1–50 characters, trimmed; a priority 1–5 coerced from strings. */
const schemas = {
  zod: z.object({
    id: z.string(),
    title: z.string().trim().min(1, 'title is required').max(50),
    priority: z.coerce.number().int().min(1).max(5),
  }),
  valibot: v.object({
    id: v.string(),
    title: v.pipe(v.string(), v.trim(), v.minLength(1, 'title is required'), v.maxLength(50)),
    priority: v.pipe(v.union([v.number(), v.string()]), v.transform(Number), v.number(), v.integer(), v.minValue(1), v.maxValue(5)),
  }),
};

for (const store of STORES) {
  for (const [library, schema] of Object.entries(schemas)) {
    describe(`Standard Schema validation with ${library} [${store.name}]`, () => {
      let server: TestServer;
      before(async () => {
        server = await store.start({
          setupSql: 'CREATE TABLE tasks (id TEXT PRIMARY KEY, title TEXT, priority INTEGER)',
          entities: [{ name: 'tasks', schema }],
        });
      });
      after(() => server.close());

      test('valid rows are coerced; invalid ones are rejected with issues while the rest of the batch applies', async () => {
        const { status, body } = await postJson(`${server.url}/api/sync/tasks`, {
          client_id: 'v1',
          changes: [
            { mutation_id: 1, id: 't1', action: 'create', data: { title: '  padded  ', priority: '3' } },
            { mutation_id: 2, id: 't2', action: 'create', data: { title: '', priority: 2 } },
            { mutation_id: 3, id: 't3', action: 'create', data: { title: 'too urgent', priority: 9 } },
            { mutation_id: 4, id: 't4', action: 'create', data: { title: 'fine', priority: 1 } },
          ],
        });
        assert.equal(status, 200);
        assert.deepEqual(
          body.results.map((result: any) => result.status),
          ['applied', 'rejected', 'rejected', 'applied'],
        );
        assert.equal(body.results[1].reason, 'schema validation failed');
        assert.ok(body.results[1].issues.some((issue: any) => issue.path === 'title' && /required/.test(issue.message)));
        assert.ok(body.results[2].issues.some((issue: any) => issue.path === 'priority'));
        const rows = (await getJson(`${server.url}/api/sync/tasks?since=0`)).body.changes.map((change: any) => change.data);
        assert.deepEqual(rows, [
          { id: 't1', title: 'padded', priority: 3 },
          { id: 't4', title: 'fine', priority: 1 },
        ]);
      });

      test('partial updates are validated as the whole resulting row', async () => {
        const bad = await postJson(`${server.url}/api/sync/tasks`, { changes: [{ id: 't1', action: 'update', data: { priority: 0 } }] });
        assert.equal(bad.body.results[0].status, 'rejected');
        const good = await postJson(`${server.url}/api/sync/tasks`, { changes: [{ id: 't1', action: 'update', data: { priority: '5' } }] });
        assert.equal(good.body.results[0].status, 'applied');
        const row = (await getJson(`${server.url}/api/sync/tasks?since=0`)).body.changes.find((change: any) => change.id === 't1').data;
        assert.deepEqual(row, { id: 't1', title: 'padded', priority: 5 });
        // Deletes are not validated.
        const deleted = await postJson(`${server.url}/api/sync/tasks`, { changes: [{ id: 't4', action: 'delete' }] });
        assert.equal(deleted.body.results[0].status, 'applied');
      });
    });
  }
}
