/**
 * Live HTML on the wire, both stores, over real WebSocket and SSE
 * connections: a raw SQL write (another connection, as another process) goes
 * out with its rendered fragment; deletes carry only the element id; the
 * renderer runs once per change and read scope however many connections
 * share it, and one scope's fragment never reaches another; a failing
 * renderer sends the change without HTML and the server keeps answering; a
 * bulk batch and a catch-up carry rows only.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { RenderContext } from '../src/core/config.js';
import type { Row } from '../src/core/protocol.js';
import { getJson, SseClient, type TestServer, WsClient, waitFor } from './helpers.js';
import { STORES } from './stores.js';

const NOTES_SQL = 'CREATE TABLE notes (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT)';

/** A template library's safe string: the renderer may return it (its toString is the HTML). */
class Safe {
  constructor(private readonly html: string) {}
  toString() {
    return this.html;
  }
}

const auth = (token: string) => ({ authorization: `Bearer ${token}` });

for (const store of STORES) {
  describe(`live HTML on the wire [${store.name}]`, () => {
    let server: TestServer;
    const renders: Array<{ id: unknown; scope: string | null; action: string }> = [];
    before(async () => {
      server = await store.start({
        setupSql: NOTES_SQL,
        authorize: (request) => {
          const token = request.headers.get('authorization')?.replace(/^Bearer /, '') ?? '';
          return token ? { id: token } : null;
        },
        entities: [
          {
            name: 'notes',
            read: (row, user) => row.owner === user?.id,
            scopeKey: (user) => String(user?.id),
            domId: (id) => `note-${id}`,
            render: async (row: Row, context: RenderContext) => {
              renders.push({ id: row.id, scope: context.scope, action: context.action });
              if (row.body === 'explode') throw new Error('template failed');
              await new Promise((resolve) => setTimeout(resolve, 1));
              return new Safe(`<li id="${context.domId}">${String(row.body)}</li>`) as unknown as string;
            },
            renderDeleted: (id, context) => {
              renders.push({ id, scope: context.scope, action: context.action });
              return `<p id="notes-left" hx-swap-oob="true">gone: ${id}</p>`;
            },
          },
        ],
      });
    });
    after(() => server.close());

    test('raw SQL writes go out rendered, once per read scope, to WebSocket and SSE alike', async () => {
      const aliceWs = await WsClient.connect(server.wsUrl, { headers: auth('alice') });
      await aliceWs.request({ type: 'subscribe', entities: ['notes'] });
      const aliceSse = new SseClient(`${server.url}/api/sync/events?entities=notes`, auth('alice'));
      const bobWs = await WsClient.connect(server.wsUrl, { headers: auth('bob') });
      await bobWs.request({ type: 'subscribe', entities: ['notes'] });
      await waitFor(() => aliceSse.status === 200, 5000, 'SSE open');
      await new Promise((resolve) => setTimeout(resolve, 100));

      await store.externalWrite(server, "INSERT INTO notes (id, owner, body) VALUES ('a1', 'alice', 'first')");
      for (const client of [aliceWs, aliceSse]) {
        const change = await waitFor(() => client.changes().find((c: any) => c.id === 'a1'), 5000, 'create');
        assert.equal(change.dom_id, 'note-a1');
        assert.equal(change.html, '<li id="note-a1">first</li>');
        assert.equal(change.data.body, 'first', 'the row comes as before');
      }
      await store.externalWrite(server, "UPDATE notes SET body = 'edited' WHERE id = 'a1'");
      await store.externalWrite(server, "DELETE FROM notes WHERE id = 'a1'");
      const deleted = await waitFor(() => aliceWs.changes().find((c: any) => c.id === 'a1' && c.action === 'delete'), 5000, 'delete');
      assert.equal(deleted.dom_id, 'note-a1');
      assert.equal(deleted.html, '<p id="notes-left" hx-swap-oob="true">gone: a1</p>', 'a delete sends what renderDeleted gives');
      const updated = aliceWs.changes().find((c: any) => c.id === 'a1' && c.action === 'update');
      assert.equal(updated.html, '<li id="note-a1">edited</li>');
      await waitFor(() => aliceSse.changes().some((c: any) => c.action === 'delete'), 5000, 'SSE delete');

      // Bob's connection saw none of alice's fragments: her row reaches him as a delete (renderDeleted's, with the id alone).
      for (const change of bobWs.changes()) {
        assert.equal(change.action, 'delete', JSON.stringify(change));
        assert.doesNotMatch(change.html ?? '', /first|edited/, JSON.stringify(change));
      }
      await store.externalWrite(server, "INSERT INTO notes (id, owner, body) VALUES ('b1', 'bob', 'bobs')");
      const bobs = await waitFor(() => bobWs.changes().find((c: any) => c.id === 'b1'), 5000, "bob's row");
      assert.equal(bobs.html, '<li id="note-b1">bobs</li>');
      await new Promise((resolve) => setTimeout(resolve, 100));
      const seenByAlice = aliceWs.changes().find((c: any) => c.id === 'b1');
      assert.equal(seenByAlice?.action ?? 'delete', 'delete', "bob's row reaches alice as a delete at most");
      assert.doesNotMatch(seenByAlice?.html ?? '', /bobs/, "alice never gets bob's fragment");
      // One render per change and scope: alice's two connections share hers; bob's is his own.
      const of = (id: string, scope: string) =>
        renders.filter((render) => render.id === id && render.scope === scope).map((render) => render.action);
      assert.deepEqual(of('a1', 'alice'), ['create', 'update', 'delete']);
      assert.deepEqual(of('a1', 'bob'), ['delete', 'delete', 'delete'], 'for bob, only the deletes his view makes of them');
      assert.deepEqual(of('b1', 'bob'), ['create']);
      for (const client of [aliceWs, bobWs]) client.close();
      aliceSse.close();
    });

    test('a renderer that throws sends the change without HTML, and the server keeps answering', async () => {
      const ws = await WsClient.connect(server.wsUrl, { headers: auth('carol') });
      await ws.request({ type: 'subscribe', entities: ['notes'] });
      await store.externalWrite(server, "INSERT INTO notes (id, owner, body) VALUES ('c1', 'carol', 'explode'), ('c2', 'carol', 'fine')");
      const broken = await waitFor(() => ws.changes().find((c: any) => c.id === 'c1'), 5000, 'the change');
      assert.equal(broken.html, undefined);
      assert.equal(broken.dom_id, 'note-c1', 'the element id still goes out');
      assert.equal(broken.data.body, 'explode');
      const fine = await waitFor(() => ws.changes().find((c: any) => c.id === 'c2'), 5000, 'the next change');
      assert.equal(fine.html, '<li id="note-c2">fine</li>', 'the other change of the batch is rendered');
      const pulled = await getJson(`${server.url}/api/sync/notes?since=0`, { headers: auth('carol') });
      assert.equal(pulled.status, 200);
      ws.close();
    });

    test('a bulk batch and a catch-up carry rows only', async () => {
      const ws = await WsClient.connect(server.wsUrl, { headers: auth('dave') });
      await ws.request({ type: 'subscribe', entities: ['notes'] });
      const start = (await getJson(`${server.url}/api/sync/notes?since=0`, { headers: auth('dave') })).body.version;
      const values = Array.from({ length: 150 }, (_, index) => `('d${index}', 'dave', 'bulk ${index}')`).join(', ');
      const bulk = (id: unknown) => /^d\d+$/.test(String(id));
      await store.externalWrite(server, `INSERT INTO notes (id, owner, body) VALUES ${values}`);
      await waitFor(() => ws.changes().filter((c: any) => c.id.startsWith('d')).length === 150, 5000, 'the bulk rows');
      for (const change of ws.changes().filter((c: any) => bulk(c.id))) {
        assert.equal(change.html, undefined, 'more than 100 rendered changes: no HTML');
      }
      assert.equal(renders.filter((render) => bulk(render.id)).length, 0, 'and no render');
      // A connection joining with an old cursor catches up from the log: rows, no HTML.
      const late = await WsClient.connect(server.wsUrl, { headers: auth('dave') });
      await late.request({ type: 'subscribe', entities: ['notes'], since: start });
      await waitFor(() => late.changes().filter((c: any) => c.id.startsWith('d')).length === 150, 5000, 'the catch-up');
      for (const change of late.changes().filter((c: any) => bulk(c.id))) assert.equal(change.html, undefined);
      ws.close();
      late.close();
    });
  });
}
