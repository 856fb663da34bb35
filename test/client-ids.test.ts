/**
 * Client ids at the edges, on both stores over real HTTP:
 * - the feeds (pulls, live changes, field changes, /latest) never show a
 *   client's id, so a connection that copies what it sees cannot make
 *   another client's pushes be answered as duplicates;
 * - a client whose exactly-once record `cleanup()` pruned is refused with 409
 *   `client_unknown` (lowest mutation id above 1, or a declared `retry`)
 *   instead of having its mutations applied again, and the
 *   browser client's outbox (the real modules, over the memory store)
 *   recovers: what it had sent settles as rejected, the rest lands once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { memoryDb } from '../src/client/local/memory.js';
import { cursorKey, pullEntity } from '../src/client/local/replica.js';
import { META, OUTBOX } from '../src/client/local/store.js';
import { http } from '../src/client/net/http.js';
import { type ConflictDetail, enqueue, outboxFlusher, sender } from '../src/client/queue/outbox.js';
import { FieldMergeStrategy } from '../src/core/config.js';
import { PostgresStore } from '../src/stores/postgres/index.js';
import { SqliteStore } from '../src/stores/sqlite/index.js';
import { getJson, postJson, SseClient, type TestServer, waitFor, writer } from './helpers.js';
import { STORES, type StoreUnderTest } from './stores.js';

const HUGE = Number.MAX_SAFE_INTEGER;

/** Prune every client record (a record written in this very millisecond is not older than "now" yet). */
async function forgetClients(server: TestServer): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 5));
  await server.engine.cleanup(30, { clientDays: 0 });
}

/** The real client modules over the memory store and real HTTP: a replica, its outbox flusher and the conflicts it reports. */
function memoryClient(server: TestServer) {
  const db = memoryDb();
  const api = http(`${server.url}/api/sync`);
  const conflicts: ConflictDetail[] = [];
  const flush = outboxFlusher({
    db,
    send: sender(api, () => null),
    integerKey: async () => false,
    changed: () => {},
    conflict: (detail) => conflicts.push(detail),
    refetch: () => {},
    online: () => true,
    error: () => {},
    log: () => {},
  });
  return { db, api, replica: { db, idle: async () => {}, changed: () => {} }, conflicts, flush };
}

async function rows(store: StoreUnderTest, server: TestServer, sql: string): Promise<any[]> {
  if (store.name === 'sqlite') return server.db.prepare(sql).all();
  return (await (server.db as unknown as { query(sql: string): Promise<{ rows: any[] }> }).query(sql)).rows;
}

for (const store of STORES) {
  describe(`client ids [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({ fieldSync: FieldMergeStrategy.LastWriteWins });
    });
    after(() => server.close());

    const push = (body: unknown) => postJson(`${server.url}/api/sync/todos`, body);
    const pushFields = (body: unknown) => postJson(`${server.url}/api/field-sync/todos`, body);

    test('no feed shows a client id; copying what it shows cannot make a client lose its next push', async () => {
      const victim = `victim-${crypto.randomUUID()}`;
      const events = new SseClient(`${server.url}/api/sync/events?entities=todos&since=0`);
      try {
        const first = await push({
          client_id: victim,
          changes: [{ mutation_id: 1, id: 'h1', action: 'create', data: { title: 'a', done: false } }],
        });
        assert.equal(first.status, 200);
        const fieldFirst = await pushFields({
          client_id: victim,
          changes: [{ mutation_id: 1, entity_id: 'h1', field: 'title', value: 'b' }],
        });
        assert.equal(fieldFirst.status, 200, JSON.stringify(fieldFirst.body));

        // Everything an attacker can read about those writes.
        const pulled = (await getJson(`${server.url}/api/sync/todos?since=0`)).body.changes;
        const fieldPulled = (await getJson(`${server.url}/api/field-sync/todos?since=0`)).body.changes;
        const latest = (await getJson(`${server.url}/api/field-sync/todos/h1/latest`)).body;
        await waitFor(() => events.events.some((event) => JSON.stringify(event.data).includes('"h1"')), 5000, 'live change');
        const seen = JSON.stringify([pulled, fieldPulled, latest, events.events]);
        assert.ok(!seen.includes(victim), 'the raw client id is never shown');
        assert.ok(seen.includes(writer(victim)), 'changes still say which writes came from one client (a digest)');

        // The attack: push as every writer the feeds show, with the largest mutation id.
        const shown = new Set<string>([...pulled, ...fieldPulled].map((change: { client_id: string | null }) => change.client_id ?? ''));
        for (const client_id of [...shown].filter(Boolean)) {
          await push({ client_id, changes: [{ mutation_id: HUGE, id: 'h1', action: 'update', data: { title: 'attacker' } }] });
          await pushFields({ client_id, changes: [{ mutation_id: HUGE, entity_id: 'h1', field: 'done', value: true }] });
        }

        // The victim's next pushes still land.
        const next = await push({
          client_id: victim,
          changes: [{ mutation_id: 2, id: 'h1', action: 'update', data: { title: 'victim 2' } }],
        });
        assert.equal(next.body.results[0].status, 'applied');
        assert.notEqual(next.body.results[0].duplicate, true);
        const fieldNext = await pushFields({
          client_id: victim,
          changes: [{ mutation_id: 2, entity_id: 'h1', field: 'done', value: false }],
        });
        assert.equal(fieldNext.body.results[0].status, 'applied');
        assert.notEqual(fieldNext.body.results[0].duplicate, true);
        const [row] = await rows(store, server, "SELECT title, done FROM todos WHERE id = 'h1'");
        assert.equal(row.title, 'victim 2');
        assert.equal(Boolean(row.done), false);
      } finally {
        events.close();
      }
    });

    test('a log written before writers were digests is rewritten once, on start', async () => {
      await push({
        client_id: 'legacy-device',
        changes: [{ mutation_id: 1, id: 'old1', action: 'create', data: { title: 'x', done: false } }],
      });
      // What an older version left: the raw id in the log and in the field bookkeeping, and no mark.
      await store.externalWrite(server, "UPDATE _rhtmx_sync_log SET client_id = 'legacy-device' WHERE entity_id = 'old1'");
      await store.externalWrite(server, "UPDATE _rhtmx_field_versions SET client_id = 'legacy-device' WHERE entity_id = 'old1'");
      await store.externalWrite(server, "DELETE FROM _rhtmx_sync_meta WHERE key = 'writers_hashed'");
      const reopened = store.name === 'sqlite' ? new SqliteStore(server.db) : new PostgresStore(server.db as never);
      await reopened.init([{ entity: 'todos', table: 'todos' }]);
      const logged = await rows(store, server, "SELECT client_id FROM _rhtmx_sync_log WHERE entity_id = 'old1'");
      assert.deepEqual(
        logged.map((row) => row.client_id),
        [writer('legacy-device')],
      );
      const stamps = await rows(store, server, "SELECT DISTINCT client_id FROM _rhtmx_field_versions WHERE entity_id = 'old1'");
      assert.deepEqual(
        stamps.map((row) => row.client_id),
        [writer('legacy-device')],
      );
      const pulled = await getJson(`${server.url}/api/field-sync/todos?since=0`);
      assert.ok(!JSON.stringify(pulled.body).includes('legacy-device'));
    });

    test('a pruned client is told client_unknown, never applied twice; fresh starts it again', async () => {
      const id = `gone-${crypto.randomUUID()}`;
      const create = (n: number) => ({ mutation_id: n, id: `${id}-${n}`, action: 'create', data: { title: `t${n}`, done: false } });
      assert.equal((await push({ client_id: id, changes: [create(1), create(2)] })).status, 200);
      assert.equal(
        (await pushFields({ client_id: id, changes: [{ mutation_id: 1, entity_id: `${id}-1`, field: 'title', value: 'f1' }] })).status,
        200,
      );
      await forgetClients(server);

      // The retry of mutation 2 (its answer lost) and a new mutation 3: neither is applied.
      const retry = await push({ client_id: id, changes: [create(2), create(3)] });
      assert.equal(retry.status, 409, JSON.stringify(retry.body));
      assert.equal(retry.body.error.code, 'client_unknown');
      assert.match(retry.body.error.message, /client_id/);
      const fieldRetry = await pushFields({
        client_id: id,
        changes: [{ mutation_id: 2, entity_id: `${id}-1`, field: 'title', value: 'f2' }],
      });
      assert.equal(fieldRetry.status, 409);
      assert.equal(fieldRetry.body.error.code, 'client_unknown');
      const logged = await rows(store, server, `SELECT entity_id FROM _rhtmx_sync_log WHERE entity_id = '${id}-2'`);
      assert.equal(logged.length, 1, 'mutation 2 was applied once');
      const [title] = await rows(store, server, `SELECT title FROM todos WHERE id = '${id}-1'`);
      assert.equal(title.title, 'f1', 'the field retry was not applied');
      assert.equal((await rows(store, server, `SELECT id FROM todos WHERE id = '${id}-3'`)).length, 0);

      // Mutation 1 of an unknown client is a new client; `fresh` vouches for a higher first id.
      const restarted = await push({ client_id: `${id}.1`, fresh: true, changes: [create(3)] });
      assert.equal(restarted.body.results[0].status, 'applied');
      assert.equal((await push({ client_id: `${id}.1`, fresh: true, changes: [create(3)] })).body.results[0].duplicate, true);
      assert.equal((await push({ client_id: id, fresh: 'yes', changes: [create(4)] })).status, 400);

      // A first push applied, its answer lost, the record pruned: the client says `retry`, and is refused even at id 1.
      const first = `${id}-first`;
      const only = { mutation_id: 1, id: `${first}-1`, action: 'create', data: { title: 'once', done: false } };
      assert.equal((await push({ client_id: first, fresh: true, changes: [only] })).status, 200);
      await forgetClients(server);
      const again = await push({ client_id: first, retry: 60_000, changes: [only] });
      assert.equal(again.status, 409);
      assert.equal(again.body.error.code, 'client_unknown');
      assert.equal((await push({ client_id: first, retry: true, changes: [only] })).status, 409, '`true`: an age not known');
      assert.equal((await rows(store, server, `SELECT entity_id FROM _rhtmx_sync_log WHERE entity_id = '${first}-1'`)).length, 1);
      // A retry first sent after that cleanup cannot have lost a record: it is a new client's.
      await new Promise((resolve) => setTimeout(resolve, 20));
      const late = await push({ client_id: `${id}-late`, retry: 5, changes: [{ ...only, id: `${id}-late-1` }] });
      assert.equal(late.body.results?.[0]?.status, 'applied', JSON.stringify(late.body));
      assert.equal((await push({ client_id: first, retry: -1, changes: [only] })).status, 400);
    });

    test('the browser outbox recovers from client_unknown: sent changes settle as rejected, the others land once', async () => {
      const db = memoryDb();
      const conflicts: ConflictDetail[] = [];
      const api = http(`${server.url}/api/sync`);
      const real = sender(api, () => null);
      const replica = { db, idle: async () => {}, changed: () => {} };
      let loseAnswer = false;
      let refetches = 0;
      // Offline while the test stages the server's forgetting: the flusher's own retry timer must not resend first.
      let online = true;
      const flush = outboxFlusher({
        db,
        send: async (entity, changes, as) => {
          const results = await real(entity, changes, as);
          if (loseAnswer) {
            loseAnswer = false;
            throw new TypeError('network lost the answer');
          }
          return results;
        },
        integerKey: async () => false,
        changed: () => {},
        conflict: (detail) => conflicts.push(detail),
        refetch: () => refetches++,
        online: () => online,
        error: () => {},
        log: () => {},
      });
      const prefix = `b-${crypto.randomUUID().slice(0, 8)}`;
      const make = (n: number) => enqueue(db, 'todos', { id: `${prefix}-${n}`, action: 'create', data: { title: `b${n}`, done: false } });
      await make(1);
      await make(2);
      await flush();
      assert.equal(db.peek(OUTBOX).size, 0, 'the first pushes were answered');

      // Mutation 3 is applied but its answer is lost; then the server forgets the client.
      await make(3);
      loseAnswer = true;
      await flush();
      online = false;
      assert.equal(db.peek(OUTBOX).size, 1);
      // The replica has caught up past that write (its own change came back).
      await pullEntity(replica, api, 'todos', () => {});
      await forgetClients(server);
      online = true;
      await make(4);
      await flush();
      await waitFor(() => db.peek(OUTBOX).size === 0, 15_000, 'the outbox to drain');

      const applied = await rows(store, server, `SELECT entity_id FROM _rhtmx_sync_log WHERE entity_id LIKE '${prefix}-%'`);
      assert.deepEqual(
        applied.map((entry) => entry.entity_id).sort(),
        [1, 2, 3, 4].map((n) => `${prefix}-${n}`),
        'each change applied once',
      );
      assert.deepEqual(
        conflicts.map((detail) => [detail.id, detail.result.status]),
        [[`${prefix}-3`, 'rejected']],
        'the change whose fate is unknown is reported',
      );
      assert.match(conflicts[0]?.result.reason ?? '', /client_id/);
      const identity = db.peek(META).get('id') as { g?: number };
      assert.equal(identity.g, 1, 'the outbox pushes as a new client now');

      // The rejected change's row reverted, and its entity is fetched whole again: the replica equals the table.
      assert.equal(refetches, 1);
      assert.equal(db.peek(META).get(cursorKey('todos')), undefined, 'the cursor was dropped: the next pull is a reset snapshot');
      await pullEntity(replica, api, 'todos', () => {});
      const local = [...db.peek('todos').values()].filter((row: any) => row.id.startsWith(prefix)).map((row: any) => row.id);
      const table = await rows(store, server, `SELECT id FROM todos WHERE id LIKE '${prefix}-%' ORDER BY id`);
      assert.deepEqual(
        local.sort(),
        table.map((row) => row.id),
      );
      assert.equal(local.length, 4);
    });

    test('a refused change restores the row its change now sits on: a delete applied meanwhile stands', async () => {
      const { db, api, replica, conflicts, flush } = memoryClient(server);
      const id = `prev-${crypto.randomUUID().slice(0, 8)}`;
      await enqueue(db, 'todos', { id, action: 'create', data: { title: 'kept until deleted', done: false } });
      await flush();
      // An edit the server will refuse (an object in a text column: 400), made while the row was still here...
      await enqueue(db, 'todos', { id, action: 'update', data: { title: { not: 'text' } } as never });
      // ...then another client deletes the row, and this replica applies the delete (the edit is rebased on nothing).
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id, action: 'delete' }] });
      await pullEntity(replica, api, 'todos', () => {});
      await flush();
      assert.deepEqual(
        conflicts.map((detail) => [detail.id, detail.result.status]),
        [[id, 'rejected']],
      );
      assert.equal(db.peek('todos').has(id), false, 'the refusal did not bring back the row the delete removed');
      await pullEntity(replica, api, 'todos', () => {});
      assert.equal(db.peek('todos').has(id), false);
    });

    test('an update of a row the replica no longer holds is based on its cursor: no create once cleanup pruned the delete', async () => {
      const { db, api, replica, conflicts, flush } = memoryClient(server);
      const id = `gone-${crypto.randomUUID().slice(0, 8)}`;
      await enqueue(db, 'todos', { id, action: 'create', data: { title: 'short-lived', done: false } });
      await flush();
      // Another client deletes it; this replica applies the delete; cleanup prunes it from the log.
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id, action: 'delete' }] });
      await pullEntity(replica, api, 'todos', () => {});
      assert.equal(db.peek('todos').has(id), false);
      await new Promise((resolve) => setTimeout(resolve, 5));
      await server.engine.cleanup(0);
      assert.equal((await rows(store, server, `SELECT entity_id FROM _rhtmx_sync_log WHERE entity_id = '${id}'`)).length, 0);
      // The app still shows the row (a page rendered before the delete) and edits it.
      const entry = await enqueue(db, 'todos', { id, action: 'update', data: { title: 'edited after the delete' } });
      assert.ok((entry.base_version ?? 0) > 0, 'based on the replica cursor');
      await flush();
      assert.deepEqual(
        conflicts.map((detail) => [detail.id, detail.result.status]),
        [[id, 'conflict']],
      );
      assert.equal((await rows(store, server, `SELECT id FROM todos WHERE id = '${id}'`)).length, 0, 'the delete stands');
    });
  });
}
