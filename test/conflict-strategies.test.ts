import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SyncStrategy } from '../src/core/config.js';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

/**
 * Each test makes a real conflict: a client reads a row (base version), the
 * row then changes on the server through raw SQL, and the client pushes an
 * update based on what it read.
 */
for (const store of STORES) {
  describe(`conflict strategies [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({
        setupSql: `
          CREATE TABLE lww (id TEXT PRIMARY KEY, title TEXT, note TEXT);
          CREATE TABLE cw (id TEXT PRIMARY KEY, title TEXT, note TEXT);
          CREATE TABLE sw (id TEXT PRIMARY KEY, title TEXT, note TEXT);
          CREATE TABLE merge (id TEXT PRIMARY KEY, title TEXT, note TEXT);
        `,
        entities: [
          { name: 'lww', strategy: SyncStrategy.LastWriteWins },
          { name: 'cw', strategy: SyncStrategy.ClientWins },
          { name: 'sw', strategy: SyncStrategy.ServerWins },
          {
            name: 'merge',
            // Keep the server's title, take the client's note, remember both titles.
            resolve: (serverRow, clientRow) => ({
              ...clientRow,
              title: `${serverRow?.title} | ${clientRow.title}`,
            }),
          },
        ],
      });
    });
    after(() => server.close());

    /** Create a row, read its version as a client would, then change it behind the client's back. */
    async function conflictSetup(entity: string, id: string) {
      await postJson(`${server.url}/api/sync/${entity}`, { changes: [{ id, action: 'create', data: { title: 'original', note: 'n0' } }] });
      const read = await getJson(`${server.url}/api/sync/${entity}?since=0`);
      const seen = read.body.changes.find((change: any) => change.id === id);
      const readAt = Date.now();
      await new Promise((resolve) => setTimeout(resolve, 5)); // the server write happens strictly later than readAt
      await store.externalWrite(server, `UPDATE ${entity} SET title = 'server edit' WHERE id = '${id}'`);
      return { baseVersion: seen.version as number, readAt };
    }

    const serverRow = async (entity: string, id: string) =>
      (await getJson(`${server.url}/api/sync/${entity}?since=0`)).body.changes.find((change: any) => change.id === id)?.data;

    test('server-wins: a push based on a stale version is refused with the server row', async () => {
      const { baseVersion } = await conflictSetup('sw', 'a');
      const { body } = await postJson(`${server.url}/api/sync/sw`, {
        client_id: 'c1',
        changes: [{ mutation_id: 1, id: 'a', action: 'update', data: { title: 'client edit' }, base_version: baseVersion }],
      });
      assert.equal(body.results[0].status, 'conflict');
      assert.equal(body.results[0].row.title, 'server edit');
      assert.ok(body.results[0].server_version > baseVersion);
      assert.equal((await serverRow('sw', 'a')).title, 'server edit');
      // Based on the current version, the same edit goes through.
      const retry = await postJson(`${server.url}/api/sync/sw`, {
        client_id: 'c1',
        changes: [
          { mutation_id: 2, id: 'a', action: 'update', data: { title: 'client edit' }, base_version: body.results[0].server_version },
        ],
      });
      assert.equal(retry.body.results[0].status, 'applied');
      assert.equal((await serverRow('sw', 'a')).title, 'client edit');
    });

    test('client-wins: the stale push overwrites the server edit', async () => {
      const { baseVersion } = await conflictSetup('cw', 'a');
      const { body } = await postJson(`${server.url}/api/sync/cw`, {
        changes: [{ id: 'a', action: 'update', data: { title: 'client edit' }, base_version: baseVersion }],
      });
      assert.equal(body.results[0].status, 'applied');
      assert.equal((await serverRow('cw', 'a')).title, 'client edit');
    });

    test('last-write-wins: an edit made before the server edit loses, one made after wins', async () => {
      const { baseVersion, readAt } = await conflictSetup('lww', 'a');
      const older = await postJson(`${server.url}/api/sync/lww`, {
        changes: [{ id: 'a', action: 'update', data: { title: 'offline edit' }, base_version: baseVersion, timestamp: readAt }],
      });
      assert.equal(older.body.results[0].status, 'conflict');
      assert.equal((await serverRow('lww', 'a')).title, 'server edit');

      const { baseVersion: base2 } = await conflictSetup('lww', 'b');
      await new Promise((resolve) => setTimeout(resolve, 5)); // strictly after the server edit's millisecond
      const newer = await postJson(`${server.url}/api/sync/lww`, {
        changes: [{ id: 'b', action: 'update', data: { title: 'later edit' }, base_version: base2, timestamp: Date.now() }],
      });
      assert.equal(newer.body.results[0].status, 'applied');
      assert.equal((await serverRow('lww', 'b')).title, 'later edit');
    });

    test('last-write-wins: a client clock an hour ahead cannot beat a later honest write', async () => {
      await postJson(`${server.url}/api/sync/lww`, { changes: [{ id: 'skew', action: 'create', data: { title: 'start' } }] });
      const base = (await getJson(`${server.url}/api/sync/lww?since=0`)).body.changes.find((c: any) => c.id === 'skew').version;
      const skewed = await postJson(`${server.url}/api/sync/lww`, {
        changes: [{ id: 'skew', action: 'update', data: { title: 'skewed' }, base_version: base, timestamp: Date.now() + 3_600_000 }],
      });
      assert.equal(skewed.body.results[0].status, 'applied');
      // Wait past the allowed drift (1 s): an honest client edits later, from the same stale base.
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      const honest = await postJson(`${server.url}/api/sync/lww`, {
        changes: [{ id: 'skew', action: 'update', data: { title: 'honest' }, base_version: base, timestamp: Date.now() }],
      });
      assert.equal(honest.body.results[0].status, 'applied', 'the skewed timestamp was clamped to the server clock');
      assert.equal((await serverRow('lww', 'skew')).title, 'honest');
    });

    test('custom resolver: the merged row is stored and returned', async () => {
      const { baseVersion } = await conflictSetup('merge', 'a');
      const { body } = await postJson(`${server.url}/api/sync/merge`, {
        changes: [{ id: 'a', action: 'update', data: { title: 'client edit', note: 'client note' }, base_version: baseVersion }],
      });
      assert.equal(body.results[0].status, 'applied');
      assert.equal(body.results[0].merged, true);
      assert.deepEqual(body.results[0].row, { id: 'a', title: 'server edit | client edit', note: 'client note' });
      assert.deepEqual(await serverRow('merge', 'a'), { id: 'a', title: 'server edit | client edit', note: 'client note' });
    });

    test('updating a row deleted on the server is a conflict unless the client wins', async () => {
      await postJson(`${server.url}/api/sync/sw`, { changes: [{ id: 'del', action: 'create', data: { title: 'x' } }] });
      const base = (await getJson(`${server.url}/api/sync/sw?since=0`)).body.changes.find((c: any) => c.id === 'del').version;
      await store.externalWrite(server, "DELETE FROM sw WHERE id = 'del'");
      const { body } = await postJson(`${server.url}/api/sync/sw`, {
        changes: [{ id: 'del', action: 'update', data: { title: 'y' }, base_version: base }],
      });
      assert.equal(body.results[0].status, 'conflict');
      assert.equal(body.results[0].row, null);
      assert.equal(await serverRow('sw', 'del'), undefined);
    });
  });
}
