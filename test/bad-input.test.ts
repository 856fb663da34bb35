import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES } from './stores.js';

for (const store of STORES) {
  describe(`bad input is refused with a 4xx JSON error and writes nothing [${store.name}]`, () => {
    let server: TestServer;
    let version: number;
    before(async () => {
      server = await store.start({ limits: { maxBodyBytes: 16 * 1024, maxJsonDepth: 8 } });
      await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'keep', action: 'create', data: { title: 'keep', done: false } }] });
      version = await server.engine.currentVersion();
    });
    after(() => server.close());

    const expectRefused = async (response: { status: number; body: any }, status: number, code: string) => {
      assert.equal(response.status, status, JSON.stringify(response.body));
      assert.equal(response.body.error.code, code);
      assert.equal(typeof response.body.error.message, 'string');
      assert.ok(response.body.error.message.length > 0);
      assert.doesNotMatch(response.body.error.message, /SELECT |INSERT INTO|UPDATE \S+ SET|near "|syntax error/i, 'no SQL leaks');
      assert.equal(await server.engine.currentVersion(), version, 'nothing was written');
    };

    test('unknown entities, including system tables and path tricks', async () => {
      const cases: Array<[string, string]> = [
        ['nope', 'unknown_entity'],
        ['sqlite_master', 'unknown_entity'],
        ['_rhtmx_sync_log', 'unknown_entity'],
        ['pg_class', 'unknown_entity'],
        ['..%2Fx', 'not_found'],
        ['%E0%A4%A', 'not_found'],
      ];
      for (const [entity, code] of cases) {
        await expectRefused(await getJson(`${server.url}/api/sync/${entity}?since=0`), 404, code);
        await expectRefused(await postJson(`${server.url}/api/sync/${entity}`, { changes: [] }), 404, code);
      }
    });

    test('non-numeric, negative and huge cursors and limits', async () => {
      for (const since of ['abc', '-1', 'NaN', '1e309', '1.5', '99999999999999999999', '0x10']) {
        await expectRefused(await getJson(`${server.url}/api/sync/todos?since=${encodeURIComponent(since)}`), 400, 'bad_cursor');
      }
      await expectRefused(await getJson(`${server.url}/api/sync/todos?since=0&limit=0`), 400, 'bad_request');
      await expectRefused(await getJson(`${server.url}/api/sync/todos?since=0&limit=1000000`), 400, 'bad_request');
      await expectRefused(await getJson(`${server.url}/api/sync/todos?since=0&snapshot=garbage`), 400, 'bad_cursor');
    });

    test('malformed, oversized and too deep bodies', async () => {
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, '{"changes": ['), 400, 'bad_json');
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, ''), 400, 'bad_json');
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, '[]'), 400, 'bad_request');
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, { changes: 'all' }), 400, 'bad_request');
      const huge = { changes: [{ id: 'h', action: 'create', data: { title: 'x'.repeat(32 * 1024) } }] };
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, huge), 413, 'payload_too_large');
      let deep: unknown = 'bottom';
      for (let level = 0; level < 20; level++) deep = { nested: deep };
      await expectRefused(await postJson(`${server.url}/api/sync/todos`, { changes: [], deep }), 400, 'json_too_deep');
    });

    test('a body streamed without content-length is cut off at the limit', async () => {
      const chunks = new ReadableStream({
        start(controller) {
          for (let index = 0; index < 64; index++) controller.enqueue(new TextEncoder().encode(' '.repeat(1024)));
          controller.close();
        },
      });
      const response = await fetch(`${server.url}/api/sync/todos`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: chunks,
        duplex: 'half',
      } as RequestInit);
      await expectRefused({ status: response.status, body: await response.json() }, 413, 'payload_too_large');
    });

    test('unknown columns, hostile keys, bad actions and bad ids reject the whole batch', async () => {
      const cases: Array<[unknown, string]> = [
        [{ changes: [{ id: 'a', action: 'create', data: { title: 't', nope: 1 } }] }, 'unknown_column'],
        [{ changes: [{ id: 'a', action: 'create', data: JSON.parse('{"__proto__": {"polluted": true}}') }] }, 'unknown_column'],
        [{ changes: [{ id: 'a', action: 'create', data: { 'title"; DROP TABLE todos;--': 'x' } }] }, 'unknown_column'],
        [{ changes: [{ id: 'a', action: 'drop', data: {} }] }, 'bad_request'],
        [{ changes: [{ action: 'update', data: { title: 'no id' } }] }, 'bad_request'],
        [{ changes: [{ id: { $gt: '' }, action: 'delete' }] }, 'bad_request'],
        [{ changes: [{ id: 'a', action: 'create', data: { title: 'x' }, mutation_id: 1 }] }, 'bad_request'],
        [{ client_id: '../../etc', changes: [] }, 'bad_request'],
        [{ client_id: 'c', changes: [{ id: 'a', action: 'create', data: { title: 'x' }, mutation_id: -4 }] }, 'bad_request'],
        [{ changes: [{ id: 'a', action: 'create', data: { title: 'x' }, base_version: 'old' }] }, 'bad_request'],
        [{ changes: [{ id: 'a', action: 'create', data: { title: 'x' }, timestamp: 'yesterday-ish' }] }, 'bad_request'],
        [
          {
            changes: [
              { id: 'ok', action: 'create', data: { title: 'x' } },
              { id: 'b', action: 'create', data: [] },
            ],
          },
          'bad_request',
        ],
      ];
      for (const [body, code] of cases) {
        await expectRefused(await postJson(`${server.url}/api/sync/todos`, body), 400, code);
      }
      assert.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype pollution');
      const { body } = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.deepEqual(
        body.changes.map((change: any) => change.id),
        ['keep'],
      );
    });

    test('wrong methods and unknown sub-routes', async () => {
      const del = await fetch(`${server.url}/api/sync/todos`, { method: 'DELETE' });
      await expectRefused({ status: del.status, body: await del.json() }, 405, 'method_not_allowed');
      await expectRefused(await getJson(`${server.url}/api/sync/todos/extra`), 404, 'not_found');
      const ws = await fetch(`${server.url}/api/sync/ws`);
      assert.equal(ws.status, 426);
      const other = await fetch(`${server.url}/not-the-engine`);
      assert.equal(other.status, 404);
    });
  });
}
