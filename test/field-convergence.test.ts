/**
 * Convergence, property-based: after any mix of field pushes (any strategy
 * outcome, skewed and stale clients), row deletes, entity pushes and raw SQL,
 * a replica built only from the field feed — a snapshot plus incremental
 * pulls, or the live WebSocket feed — equals the real table, and /latest
 * agrees with it field by field.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, startServer, WsClient, waitFor } from './helpers.js';
import { rawSql, startPgServer } from './pg-helpers.js';

/** What the property needs of a server, whatever the database. */
interface Harness {
  url: string;
  wsUrl: string;
  /** Raw SQL from outside the engine (another connection). */
  setDone(id: string, done: boolean): Promise<void>;
  /** The real table, as the replica should look. */
  table(): Promise<Replica>;
  close(): Promise<void>;
}

const toReplica = (rows: any[]): Replica =>
  new Map(rows.map((row) => [row.id, { title: row.title, done: row.done === 1 || row.done === true, updated_at: row.updated_at }]));

const HARNESSES: Array<{ name: string; strategies: FieldMergeStrategy[]; start(strategy: FieldMergeStrategy): Promise<Harness> }> = [
  {
    name: 'sqlite',
    strategies: Object.values(FieldMergeStrategy),
    async start(strategy) {
      const server = await startServer({ fieldSync: strategy });
      return {
        url: server.url,
        wsUrl: server.wsUrl,
        async setDone(id, done) {
          server.db.prepare('UPDATE todos SET done = ? WHERE id = ?').run(done ? 1 : 0, id);
        },
        table: async () => toReplica(server.db.prepare('SELECT * FROM todos').all() as any[]),
        close: () => server.close(),
      };
    },
  },
  {
    // The merge rules are shared; the PostgreSQL run exercises its store (trigger, locks, horizon).
    name: 'postgres',
    strategies: [FieldMergeStrategy.LastWriteWins],
    async start(strategy) {
      const server = await startPgServer({ fieldSync: strategy, pollMs: 50 });
      return {
        url: server.url,
        wsUrl: server.wsUrl,
        async setDone(id, done) {
          await rawSql(server.dbUrl, 'UPDATE todos SET done = $1 WHERE id = $2', [done, id]);
        },
        table: async () => toReplica((await server.pool.query('SELECT * FROM todos')).rows),
        close: () => server.close(),
      };
    },
  },
];

type Replica = Map<string, Record<string, unknown>>;

function apply(replica: Replica, change: any): void {
  if (change.action === 'delete') {
    replica.delete(change.entity_id);
    return;
  }
  const row = replica.get(change.entity_id) ?? {};
  row[change.field] = change.value;
  replica.set(change.entity_id, row);
}

/**
 * A client's pull loop: incremental pages until `has_more` is false; a
 * `reset` answer (a snapshot, e.g. for cursor 0) replaces the replica and is
 * followed through its `next` pages. Returns the cursor to continue from.
 */
async function pull(server: Harness, replica: Replica, since: number): Promise<number> {
  let next: string | undefined;
  for (;;) {
    const query = next ? `since=0&snapshot=${next}` : `since=${since}`;
    const page = await getJson(`${server.url}/api/field-sync/todos?${query}&limit=7`);
    assert.equal(page.status, 200);
    if (page.body.reset) replica.clear();
    for (const change of page.body.changes) apply(replica, change);
    next = page.body.next;
    since = page.body.version;
    if (!next && !page.body.has_more) return since;
  }
}

const IDS = ['a', 'b', 'c'];
const operation = fc.oneof(
  fc.record({
    kind: fc.constant('field' as const),
    client: fc.constantFrom('c1', 'c2', 'c3'),
    id: fc.constantFrom(...IDS),
    field: fc.constantFrom('title', 'done'),
    text: fc.string({ maxLength: 6 }),
    skewMs: fc.option(fc.integer({ min: -5_000, max: 3_600_000 }), { nil: undefined }),
    stale: fc.boolean(),
  }),
  fc.record({
    kind: fc.constant('delete' as const),
    id: fc.constantFrom(...IDS),
    skewMs: fc.option(fc.integer({ min: -5_000, max: 5_000 })),
  }),
  fc.record({ kind: fc.constant('entity' as const), id: fc.constantFrom(...IDS), text: fc.string({ maxLength: 6 }) }),
  fc.record({ kind: fc.constant('sql' as const), id: fc.constantFrom(...IDS), done: fc.boolean() }),
);

for (const harness of HARNESSES) {
  for (const strategy of harness.strategies) {
    describe(`field feed convergence [${harness.name}, ${strategy}]`, () => {
      let server: Harness;
      before(async () => {
        server = await harness.start(strategy);
      });
      after(() => server.close());

      test('a replica built from the field feed equals the table', async () => {
        let run = 0;
        await fc.assert(
          fc.asyncProperty(fc.array(operation, { minLength: 1, maxLength: 25 }), async (operations) => {
            run++;
            const id = (name: string) => `${run}-${name}`;
            // The replica starts from a snapshot, paged.
            const replica: Replica = new Map();
            const cursor = await pull(server, replica, 0);
            const live = await WsClient.connect(server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws'));
            const liveReplica: Replica = new Map([...replica].map(([key, row]) => [key, { ...row }]));
            await live.request({ type: 'subscribe', entities: ['todos'], since: cursor });

            for (const op of operations) {
              if (op.kind === 'field') {
                const current = await getJson(`${server.url}/api/field-sync/todos/${id(op.id)}/latest`);
                const base = current.status === 200 ? current.body.fields?.[op.field]?.version : undefined;
                await postJson(`${server.url}/api/field-sync/todos`, {
                  client_id: op.client,
                  changes: [
                    {
                      entity_id: id(op.id),
                      field: op.field,
                      value: op.field === 'done' ? op.text.length % 2 === 0 : op.text,
                      timestamp: op.skewMs === undefined ? undefined : Date.now() + op.skewMs,
                      base_version: base === undefined ? undefined : op.stale ? Math.max(0, base - 1) : base,
                    },
                  ],
                });
              } else if (op.kind === 'delete') {
                await postJson(`${server.url}/api/field-sync/todos`, {
                  changes: [
                    {
                      entity_id: id(op.id),
                      field: '*',
                      action: 'delete',
                      timestamp: op.skewMs === null ? undefined : Date.now() + op.skewMs,
                    },
                  ],
                });
              } else if (op.kind === 'entity') {
                await postJson(`${server.url}/api/sync/todos`, {
                  changes: [{ id: id(op.id), action: 'create', data: { title: op.text, done: false } }],
                });
              } else {
                await server.setDone(id(op.id), op.done);
              }
            }

            // Incremental pulls from the snapshot's cursor, to the end. On PostgreSQL the newest writes are served once
            // the version horizon is proved, so keep pulling from the returned cursor until nothing is missing.
            const table = await server.table();
            let since = cursor;
            await waitFor(
              async () => {
                since = await pull(server, replica, since);
                return isDeepStrictEqual(replica, table);
              },
              5000,
              'the pulled replica to converge',
            ).catch(() => {});
            assert.deepEqual(replica, table, 'pulled replica');

            // The live feed reaches the same state (arrival is awaited, never timed).
            let applied = 0;
            const converged = () => {
              const messages = live.messages.filter((message) => message.type === 'field_change');
              for (const message of messages.slice(applied)) for (const change of message.changes) apply(liveReplica, change);
              applied = messages.length;
              return isDeepStrictEqual(liveReplica, table);
            };
            await waitFor(converged, 5000, 'the live replica to converge').catch(() => {});
            live.close();
            assert.deepEqual(liveReplica, table, 'live replica');

            // /latest agrees with the table, field by field.
            for (const name of IDS) {
              const response = await getJson(`${server.url}/api/field-sync/todos/${id(name)}/latest`);
              const row = table.get(id(name));
              if (!row) {
                assert.ok(response.status === 404 || response.body.deleted === true);
                continue;
              }
              const values = Object.fromEntries(
                Object.entries(response.body.fields).map(([field, state]: [string, any]) => [field, state.value]),
              );
              assert.deepEqual(values, row);
            }
          }),
          { numRuns: 15 },
        );
      });
    });
  }
}
