/**
 * Clients that follow only ../shared/SEED.md (the original crate's README)
 * lose nothing. The clients here are written from that text alone: they send
 * only its messages (`{"type":"subscribe","entities":[…]}`, `GET ?since=V`),
 * never declare our batch protocol, read one `change` per live message (SSE:
 * `event: sync` whose data is the change, as the crate's own client reads
 * it), and never look at `has_more` or `next`: they pull `since=<version>`
 * of the last answer. A real engine on a real HTTP server on loopback, a real
 * `ws` client and a real HTTP event-stream reader; SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { FieldMergeStrategy } from '../src/core/config.js';
import { getJson, postJson, type TestServer, waitFor } from './helpers.js';
import { STORES } from './stores.js';

/** A WebSocket as the seed's client opens it: no query, no protocol; every message it gets is kept. */
class SeedSocket {
  readonly messages: any[] = [];
  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data) => this.messages.push(JSON.parse(String(data))));
  }

  static async open(url: string): Promise<SeedSocket> {
    const client = new SeedSocket(new WebSocket(url));
    await new Promise<void>((resolve, reject) => {
      client.socket.once('open', () => resolve());
      client.socket.once('error', reject);
    });
    return client;
  }

  /** The seed's subscribe, exactly; resolves once the server says the subscription is live. */
  async subscribe(entities: string[]): Promise<void> {
    this.socket.send(JSON.stringify({ type: 'subscribe', entities }));
    await waitFor(() => this.messages.find((message) => message.type === 'subscribed'), 5000, 'subscribed');
  }

  /** Live messages of one type, in arrival order. */
  live(type: string): any[] {
    return this.messages.filter((message) => message.type === type);
  }

  close(): void {
    this.socket.close();
  }
}

/** An event-stream reader that keeps each event's `event:` name, `id:` and parsed data. */
class EventStream {
  readonly events: Array<{ event: string; id?: string; data: any }> = [];
  private readonly controller = new AbortController();
  status = 0;
  readonly opened: Promise<void>;

  constructor(url: string, headers: Record<string, string> = {}) {
    let opened = () => {};
    this.opened = new Promise((resolve) => {
      opened = resolve;
    });
    void this.run(url, headers, opened);
  }

  private async run(url: string, headers: Record<string, string>, opened: () => void): Promise<void> {
    try {
      const response = await fetch(url, { headers, signal: this.controller.signal });
      this.status = response.status;
      const reader = response.body?.getReader();
      if (!reader) return;
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          // The stream's opening comment: the subscription is in place.
          if (block.includes(': connected')) opened();
          let event = 'message';
          let id: string | undefined;
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) this.events.push({ event, id, data: JSON.parse(data.join('\n')) });
        }
      }
    } catch (error) {
      if ((error as Error).name !== 'AbortError') throw error;
    } finally {
      opened();
    }
  }

  close(): void {
    this.controller.abort();
  }
}

const rowsSql = (ids: string[]) =>
  `INSERT INTO todos (id, title, done) VALUES ${ids.map((id) => `('${id}', 'title ${id}', false)`).join(', ')}`;

/** The server's rows, from its own snapshot (followed through `next`, as our client does). */
async function serverRows(server: TestServer): Promise<Map<string, any>> {
  const rows = new Map<string, any>();
  let query = 'since=0&limit=10000';
  for (;;) {
    const { body } = await getJson(`${server.url}/api/sync/todos?${query}`);
    for (const change of body.changes) rows.set(change.id, change.data);
    if (!body.next) return rows;
    query = `since=0&limit=10000&snapshot=${body.next}`;
  }
}

/**
 * The seed's pull, repeated the way the crate's client does it: `since` is the
 * last answer's `version`, `has_more` and `next` unknown. Stops at the first
 * answer without changes; `afterFirst` runs between the first and second pull.
 */
async function seedPull(
  url: string,
  apply: (change: any) => void,
  afterFirst: () => Promise<void> = async () => {},
): Promise<{ first: any; pulls: number }> {
  let since = 0;
  let first: any;
  for (let pulls = 1; pulls <= 200; pulls++) {
    const { status, body } = await getJson(`${url}?since=${since}`);
    assert.equal(status, 200);
    for (const change of body.changes) apply(change);
    if (first === undefined) {
      first = body;
      await afterFirst();
    } else if (body.changes.length === 0) {
      return { first, pulls };
    }
    since = body.version;
  }
  throw new Error(`since=version pulls did not come to an end (stuck at since=${since})`);
}

for (const store of STORES) {
  describe(`clients written only from SEED.md [${store.name}]`, () => {
    let server: TestServer;
    let wsBase: string;
    before(async () => {
      // Pages of 3 (the seed client sends no limit): a snapshot of a few rows already spans several pages.
      server = await store.start({ fieldSync: FieldMergeStrategy.LastWriteWins, limits: { defaultPullLimit: 3 }, pollMs: 10 });
      wsBase = server.url.replace(/^http/, 'ws');
    });
    after(() => server.close());

    test('WebSocket: one {"type":"change","change":…} per change of a transaction; a declared client gets batches', async () => {
      const seed = await SeedSocket.open(`${wsBase}/api/sync/ws`);
      const ours = await SeedSocket.open(`${wsBase}/api/sync/ws?protocol=2`);
      try {
        await seed.subscribe(['todos']);
        const from = seed.live('subscribed')[0].version;
        // Three rows in one statement (one transaction), then a push of three changes (one transaction).
        await store.externalWrite(server, rowsSql(['w1', 'w2', 'w3']));
        const pushed = await postJson(`${server.url}/api/sync/todos`, {
          changes: [
            { id: 'w1', action: 'update', data: { title: 'w1 again' } },
            { id: 'w4', action: 'create', data: { title: 'w4', done: true } },
            { id: 'w2', action: 'delete' },
          ],
        });
        assert.equal(pushed.status, 200);
        // A marker after both: once it arrived, everything before it has.
        await store.externalWrite(server, rowsSql(['w-marker']));
        await waitFor(() => seed.live('change').some((message) => message.change?.id === 'w-marker'), 5000, 'the marker');

        const messages = seed.live('change');
        assert.ok(
          messages.every((message) => message.change && typeof message.change === 'object' && message.changes === undefined),
          'every live message carries `change`, never a batch',
        );
        const expected = [
          ['todos', 'w1', 'create'],
          ['todos', 'w2', 'create'],
          ['todos', 'w3', 'create'],
          ['todos', 'w1', 'update'],
          ['todos', 'w4', 'create'],
          ['todos', 'w2', 'delete'],
          ['todos', 'w-marker', 'create'],
        ];
        assert.deepEqual(
          messages.map((message) => [message.change.entity, message.change.entity_id, message.change.action]),
          expected,
        );
        assert.equal(messages[3].change.data.title, 'w1 again');
        assert.equal(messages[5].change.data, null);
        // Each message's version is the cursor once it is applied: increasing, and at least its change's.
        for (const [index, message] of messages.entries()) {
          assert.ok(message.version >= message.change.version);
          if (index > 0) assert.ok(message.version > messages[index - 1].version);
        }

        // Our own client declares the batch protocol: the same range, replayed from the log, is one batch.
        ours.socket.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since: from }));
        await waitFor(() => ours.live('change').length > 0, 5000, 'the replayed batch');
        const [batch] = ours.live('change');
        assert.deepEqual(
          batch.changes.map((change: any) => [change.entity, change.entity_id, change.action]),
          expected,
        );
        assert.equal(batch.change, undefined, '`change` only on a batch of one');
        assert.equal(batch.version, messages.at(-1).version);
      } finally {
        seed.close();
        ours.close();
      }
    });

    test('field-sync WebSocket: one {"type":"field_change","change":…} per field change', async () => {
      const seed = await SeedSocket.open(`${wsBase}/api/field-sync/ws`);
      try {
        await seed.subscribe(['todos']);
        await store.externalWrite(server, rowsSql(['f1']));
        // Field bookkeeping keeps each field's latest state: each write's fields arrive before the next write.
        const ofF1 = () => seed.live('field_change').filter((message) => message.change?.entity_id === 'f1');
        await waitFor(() => ofF1().length === 3, 5000, 'the created fields');
        // Two fields in one push, then two columns in one UPDATE: one write, two field changes of one version.
        const pushed = await postJson(`${server.url}/api/field-sync/todos`, {
          changes: [
            { entity_id: 'f1', field: 'title', value: 'renamed' },
            { entity_id: 'f1', field: 'done', value: true },
          ],
        });
        assert.equal(pushed.status, 200);
        assert.equal(pushed.body.applied, 2);
        await waitFor(() => ofF1().length === 5, 5000, 'the pushed fields');
        await store.externalWrite(server, "UPDATE todos SET title = 'raw', updated_at = 'now' WHERE id = 'f1'");
        await store.externalWrite(server, rowsSql(['f-marker']));
        await waitFor(
          () => seed.live('field_change').some((message) => message.change?.entity_id === 'f-marker'),
          5000,
          'the marker field changes',
        );
        const messages = seed.live('field_change');
        assert.ok(messages.every((message) => message.change && message.changes === undefined));
        const f1 = messages.filter((message) => message.change.entity_id === 'f1');
        // The create (every field), then exactly the fields each write changed, one message each
        // (the fields of one write in no promised order).
        const fields = (list: any[]) => list.map((message) => [message.change.field, message.change.value]).sort();
        assert.equal(f1.length, 7);
        assert.deepEqual(fields(f1.slice(0, 3)), [
          ['done', false],
          ['title', 'title f1'],
          ['updated_at', null],
        ]);
        assert.deepEqual(fields(f1.slice(3, 4)), [['title', 'renamed']]);
        assert.deepEqual(fields(f1.slice(4, 5)), [['done', true]]);
        assert.deepEqual(fields(f1.slice(5)), [
          ['title', 'raw'],
          ['updated_at', 'now'],
        ]);
        const [title, updated] = f1.slice(-2);
        assert.equal(title.change.version, updated.change.version, 'one write');
        assert.ok(title.version < updated.version, 'the first of two fields of one write does not claim the write yet');
        assert.ok(title.version >= f1[4].change.version);
      } finally {
        seed.close();
      }
    });

    test('SSE: `event: sync` per change, data the change itself, and its id resumes after exactly that change', async () => {
      const stream = new EventStream(`${server.url}/api/sync/events`);
      try {
        await stream.opened;
        assert.equal(stream.status, 200);
        await store.externalWrite(server, rowsSql(['e1', 'e2', 'e3']));
        await waitFor(() => stream.events.some((event) => event.data.entity_id === 'e3'), 5000, 'e3');
        const events = stream.events.filter((event) => event.data.entity_id?.startsWith('e'));
        assert.deepEqual(
          events.map((event) => [event.event, event.data.entity, event.data.entity_id, event.data.action, event.data.data?.title]),
          [
            ['sync', 'todos', 'e1', 'create', 'title e1'],
            ['sync', 'todos', 'e2', 'create', 'title e2'],
            ['sync', 'todos', 'e3', 'create', 'title e3'],
          ],
        );
        assert.ok(
          stream.events.every((event) => event.event === 'sync'),
          'nothing but `sync` events',
        );
        // EventSource resends the last id it saw: after e1, the stream brings e2 and e3 again, not e1.
        const resumed = new EventStream(`${server.url}/api/sync/events`, { 'last-event-id': String(events[0]?.id) });
        try {
          await waitFor(() => resumed.events.some((event) => event.data.entity_id === 'e3'), 5000, 'e3 after resuming');
          assert.deepEqual(
            resumed.events.map((event) => event.data.entity_id),
            ['e2', 'e3'],
          );
        } finally {
          resumed.close();
        }
      } finally {
        stream.close();
      }
    });

    test('a protocol the server does not know is refused with 400 and a message', async () => {
      const sse = await getJson(`${server.url}/api/sync/events?protocol=7`);
      assert.equal(sse.status, 400);
      assert.equal(sse.body.error.code, 'bad_request');
      assert.match(sse.body.error.message, /protocol/);
      const refusal = await new Promise<{ status: number; body: any }>((resolve, reject) => {
        const socket = new WebSocket(`${wsBase}/api/sync/ws?protocol=batch`);
        socket.once('open', () => reject(new Error('upgraded')));
        socket.once('unexpected-response', (_request, response) => {
          let text = '';
          response.on('data', (chunk: Buffer) => {
            text += chunk;
          });
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
        });
      });
      assert.equal(refusal.status, 400);
      assert.match(refusal.body.error.message, /protocol/);
      // Refusals gave their connection slots back: a stream still opens.
      const stream = new EventStream(`${server.url}/api/sync/events?protocol=2`);
      await stream.opened;
      assert.equal(stream.status, 200);
      stream.close();
    });

    test('pull: every page `version` continues without loss, a multi-page snapshot included', async () => {
      const ids = Array.from({ length: 10 }, (_, index) => `p${String(index).padStart(2, '0')}`);
      await store.externalWrite(server, rowsSql(ids));
      const replica = new Map<string, any>();
      const { first } = await seedPull(
        `${server.url}/api/sync/todos`,
        (change) => {
          if (change.action === 'delete') replica.delete(String(change.entity_id));
          else replica.set(String(change.entity_id), change.data);
        },
        async () => {
          // Between the seed client's pulls: a row it has goes, one it has not been sent yet changes, one is new.
          await store.externalWrite(server, "DELETE FROM todos WHERE id = 'e2'");
          await store.externalWrite(server, "UPDATE todos SET title = 'late' WHERE id = 'p09'");
          await store.externalWrite(server, rowsSql(['p10']));
        },
      );
      // The first page was a snapshot with more behind it, which the seed client never asked for.
      assert.equal(first.reset, true);
      assert.equal(first.has_more, true);
      assert.equal(first.changes.length, 3);
      assert.ok(first.version > 0, 'a cursor a since-pull continues from, not a restart');
      assert.deepEqual(replica, await serverRows(server));
      assert.equal(replica.get('p09').title, 'late');
      assert.ok(replica.has('p10') && !replica.has('e2'));
    });

    test('field pull: the same for /api/field-sync pages', async () => {
      const replica = new Map<string, Record<string, unknown>>();
      const { first } = await seedPull(
        `${server.url}/api/field-sync/todos`,
        (change) => {
          if (change.field === '*' && change.action === 'delete') replica.delete(change.entity_id);
          else replica.set(change.entity_id, { ...replica.get(change.entity_id), [change.field]: change.value });
        },
        async () => {
          await store.externalWrite(server, "DELETE FROM todos WHERE id = 'p00'");
          await store.externalWrite(server, "UPDATE todos SET done = true WHERE id = 'p08'");
          await store.externalWrite(server, rowsSql(['p11']));
        },
      );
      assert.equal(first.reset, true);
      assert.equal(first.has_more, true);
      assert.ok(first.version > 0);
      const rows = await serverRows(server);
      assert.deepEqual([...replica.keys()].sort(), [...rows.keys()].sort(), 'every row arrived, none that is gone stayed');
      for (const [id, fields] of replica) {
        const { id: _key, ...row } = rows.get(id);
        assert.deepEqual(fields, row, `fields of ${id}`);
      }
      assert.equal(replica.get('p08')?.done, true);
    });
  });

  describe(`rows written before change capture [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      // These rows predate the engine's triggers: no log entry says anything about them.
      const setupSql = `CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY, title TEXT NOT NULL, done BOOLEAN NOT NULL DEFAULT 0, updated_at TEXT);
        ${rowsSql(['o1', 'o2', 'o3', 'o4', 'o5'])}`;
      server = await store.start({ setupSql, limits: { defaultPullLimit: 2 } });
    });
    after(() => server.close());

    test('a snapshot page with more behind it then says 0: a since-pull starts over instead of skipping them', async () => {
      const { body } = await getJson(`${server.url}/api/sync/todos?since=0`);
      assert.equal(body.has_more, true);
      assert.ok(body.next);
      assert.equal(body.version, 0, 'no log cursor brings these rows');
      const again = await getJson(`${server.url}/api/sync/todos?since=${body.version}`);
      assert.equal(again.body.reset, true);
      assert.deepEqual(
        again.body.changes.map((change: any) => change.id),
        ['o1', 'o2'],
      );
      // Our own client follows `next` and gets every row; the last page carries the snapshot's own cursor.
      let next = body.next;
      const seen = body.changes.map((change: any) => change.id);
      let last = body;
      while (next) {
        last = (await getJson(`${server.url}/api/sync/todos?since=0&snapshot=${next}`)).body;
        seen.push(...last.changes.map((change: any) => change.id));
        next = last.next;
      }
      assert.deepEqual(seen, ['o1', 'o2', 'o3', 'o4', 'o5']);
      assert.ok(last.version > 0);
    });
  });
}
