/**
 * Field-level sync under read scopes, on SQLite and PostgreSQL, over real
 * HTTP and the real field WebSocket: a user receives only fields of rows in
 * their scope (snapshot, log pull, live batches, /latest); a change of a row
 * outside the scope (one that left it, or never was in it) reaches them as one
 * row delete without a value, as at entity level; and they write only fields
 * of rows in their scope, never moving a row out of it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy, type SyncUser } from '../src/core/config.js';
import { getJson, type TestServer, WsClient, waitFor } from './helpers.js';
import { STORES } from './stores.js';

const users = new Map<string, SyncUser>([
  ['alice', { id: 'alice', team: 'a' }],
  ['bob', { id: 'bob', team: 'b' }],
]);

const NOTES_SQL = 'CREATE TABLE notes (id TEXT PRIMARY KEY, team TEXT NOT NULL, title TEXT);';

for (const store of STORES) {
  describe(`field sync with read scopes (${store.name})`, () => {
    let server: TestServer;
    const as = (user: string) => ({ authorization: `Bearer ${user}` });
    const fieldUrl = (path: string) => `${server.url}/api/field-sync/notes${path}`;
    const push = async (user: string, changes: unknown[]) => {
      const response = await fetch(fieldUrl(''), {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...as(user) },
        // `fresh`: until a push of this id is answered, its first mutations may be refused without a record.
        body: JSON.stringify({ client_id: `${user}-device`, fresh: true, changes }),
      });
      return { status: response.status, body: await response.json() };
    };
    const ids = (changes: Array<{ entity_id: string }>) => [...new Set(changes.map((change) => change.entity_id))].sort();

    before(async () => {
      server = await store.start({
        setupSql: NOTES_SQL,
        entities: [{ name: 'notes', read: (note, user) => note.team === user?.team }],
        fieldSync: FieldMergeStrategy.LastWriteWins,
        authorize: (request) => users.get(request.headers.get('authorization')?.replace(/^Bearer /, '') ?? '') ?? null,
      });
      for (const [id, team] of [
        ['a1', 'a'],
        ['a2', 'a'],
        ['b1', 'b'],
      ]) {
        await store.externalWrite(server, 'INSERT INTO notes (id, team, title) VALUES (?, ?, ?)', [id, team, `note ${id}`]);
      }
      await waitFor(async () => (await getJson(fieldUrl('?since=0'), { headers: as('bob') })).body.changes?.length > 0);
    });
    after(() => server.close());

    test('a snapshot holds only the fields of rows in the scope', async () => {
      const alice = await getJson(fieldUrl('?since=0'), { headers: as('alice') });
      assert.equal(alice.status, 200);
      assert.deepEqual(ids(alice.body.changes), ['a1', 'a2']);
      const bob = await getJson(fieldUrl('?since=0'), { headers: as('bob') });
      assert.deepEqual(ids(bob.body.changes), ['b1']);
      assert.ok(bob.body.changes.every((change: { field: string }) => change.field !== '*'));
    });

    test('live batches and log pulls carry only in-scope fields; a row leaving the scope is one row delete', async () => {
      const from = (await getJson(fieldUrl('?since=0'), { headers: as('alice') })).body.version as number;
      const socket = await WsClient.connect(server.wsUrl.replace('/api/sync/ws', '/api/field-sync/ws'), { headers: as('alice') });
      try {
        const reply = await socket.request({ type: 'subscribe', entities: ['notes'] });
        assert.equal(reply.type, 'subscribed');
        await store.externalWrite(server, 'UPDATE notes SET title = ? WHERE id = ?', ['b secret', 'b1']);
        await store.externalWrite(server, 'UPDATE notes SET team = ? WHERE id = ?', ['b', 'a2']);
        await store.externalWrite(server, 'UPDATE notes SET title = ? WHERE id = ?', ['a visible', 'a1']);
        const live = () => socket.messages.filter((message) => message.type === 'field_change').flatMap((message) => message.changes);
        await waitFor(() => live().some((change) => change.entity_id === 'a1' && change.value === 'a visible'), 10_000, 'a1 title');
        await waitFor(() => live().some((change) => change.entity_id === 'a2' && change.field === '*'), 10_000, 'a2 row delete');
        const outside = (change: { entity_id: string }) => change.entity_id === 'b1' || change.entity_id === 'a2';
        const onlyRowDeletes = (changes: Array<{ entity_id: string; field: string; action: string; value: unknown }>) =>
          changes.filter(outside).every((change) => change.field === '*' && change.action === 'delete' && change.value === null);
        assert.ok(onlyRowDeletes(live()), `rows outside the scope only as row deletes: ${JSON.stringify(live())}`);
        assert.ok(!JSON.stringify(live()).includes('b secret'), 'no value of a row outside the scope');
        const pull = await getJson(fieldUrl(`?since=${from}`), { headers: as('alice') });
        assert.ok(onlyRowDeletes(pull.body.changes));
        assert.ok(
          pull.body.changes.some(
            (change: { entity_id: string; value: unknown }) => change.entity_id === 'a1' && change.value === 'a visible',
          ),
        );
        assert.ok(!JSON.stringify(pull.body).includes('b secret'));
        // The same writes, seen by the other team: b1's title, and a2 arriving with its fields.
        const bob = await getJson(fieldUrl(`?since=${from}`), { headers: as('bob') });
        const bobValues = bob.body.changes.map((change: { entity_id: string; field: string; value: unknown }) => [
          change.entity_id,
          change.field,
          change.value,
        ]);
        assert.ok(bobValues.some(([id, field, value]: unknown[]) => id === 'b1' && field === 'title' && value === 'b secret'));
        assert.ok(bobValues.some(([id, field, value]: unknown[]) => id === 'a2' && field === 'team' && value === 'b'));
        assert.ok(!JSON.stringify(bob.body).includes('a visible'));
      } finally {
        socket.close();
      }
    });

    test('/latest of a row outside the scope is 404', async () => {
      assert.equal((await getJson(fieldUrl('/a1/latest'), { headers: as('alice') })).status, 200);
      assert.equal((await getJson(fieldUrl('/b1/latest'), { headers: as('alice') })).status, 404);
    });

    test('a user writes only fields of rows in the scope, and cannot move a row out of it', async () => {
      const outside = await push('alice', [{ entity_id: 'b1', field: 'title', value: 'taken', mutation_id: 1 }]);
      assert.equal(outside.status, 403, JSON.stringify(outside.body));
      const away = await push('alice', [{ entity_id: 'a1', field: 'team', value: 'b', mutation_id: 2 }]);
      assert.equal(away.status, 403, JSON.stringify(away.body));
      const inside = await push('alice', [{ entity_id: 'a1', field: 'title', value: 'mine', mutation_id: 3 }]);
      assert.equal(inside.status, 200);
      assert.equal(inside.body.results[0].status, 'applied');
      const b1 = await getJson(fieldUrl('/b1/latest'), { headers: as('bob') });
      assert.equal(b1.body.fields.title.value, 'b secret');
      const a1 = await getJson(fieldUrl('/a1/latest'), { headers: as('alice') });
      assert.deepEqual([a1.body.fields.title.value, a1.body.fields.team.value], ['mine', 'a']);
    });
  });
}
