import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { postJson, type TestServer, waitFor } from './helpers.js';
import { STORES } from './stores.js';

/**
 * A reader that stops reading must not make the server buffer without bound,
 * and must not lose anything: past half of maxBufferedBytes it is sent no more
 * live batches (it lags), and once it reads again the hub catches it up from
 * the log, sending only the newest version of each row it missed, then hands
 * it back to live delivery. No reconnect (docs/protocol.md, "Slow consumers").
 */
for (const store of STORES)
  describe(`slow consumers lag instead of being dropped [${store.name}]`, () => {
    let server: TestServer;
    before(async () => {
      server = await store.start({ limits: { maxBufferedBytes: 256 * 1024, maxBodyBytes: 4 * 1024 * 1024 } });
    });
    after(() => server.close());

    const ROWS = 50;
    /** Write the same rows `rounds` times with big titles, each round one push: far more than any socket buffer. */
    async function flood(prefix: string, rounds: number) {
      for (let round = 0; round < rounds; round++) {
        const reply = await postJson(`${server.url}/api/sync/todos`, {
          changes: Array.from({ length: ROWS }, (_, index) => ({
            id: `${prefix}-${index}`,
            action: round === 0 ? 'create' : 'update',
            data: { title: `${round}:${'x'.repeat(4000)}`, done: false },
          })),
        });
        assert.equal(reply.status, 200);
      }
    }

    /** The newest title per row of these changes, and how many changes they were. */
    const latest = (changes: Array<{ id: string; action: string; data: { title: string } | null }>, prefix: string) => {
      const titles = new Map<string, string>();
      for (const change of changes)
        if (change.id.startsWith(`${prefix}-`) && change.data) titles.set(change.id, change.data.title.split(':')[0] as string);
      return titles;
    };

    test('a WebSocket that stops reading lags, then gets the newest version of each row it missed and live changes again', async () => {
      const socket = new WebSocket(`${server.wsUrl}?protocol=2`, { perMessageDeflate: false });
      const received: any[] = [];
      socket.on('message', (data) => received.push(JSON.parse(String(data))));
      let closedWith = 0;
      socket.on('close', (code) => {
        closedWith = code;
      });
      await new Promise((resolve) => socket.once('open', resolve));
      socket.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], ref: 1 }));
      await waitFor(() => received.some((m) => m.type === 'subscribed'), 5000, 'subscribed');
      const laggedBefore = (await server.engine.metrics()).laggedConsumers;
      // Stop reading from the TCP socket: the kernel buffers fill, then the server's own queue.
      const tcp = (socket as unknown as { _socket: Socket })._socket;
      tcp.pause();
      const rounds = 60; // ~12 MB of changes, far past the 256 KiB bound plus loopback buffers
      await flood('ws', rounds);
      assert.ok((await server.engine.metrics()).laggedConsumers > laggedBefore, 'the socket lagged');
      tcp.resume();
      const changes = () => received.filter((m) => m.type === 'change').flatMap((m) => m.changes);
      const newest = String(rounds - 1);
      await waitFor(
        () => {
          const titles = latest(changes(), 'ws');
          return titles.size === ROWS && [...titles.values()].every((round) => round === newest);
        },
        20_000,
        'every row at its newest version',
      ).catch((error) => {
        throw new Error(`${error.message}: ${latest(changes(), 'ws').size} rows, closed ${closedWith}`);
      });
      // Not every version went out: what it missed came compacted, not queued.
      assert.ok(changes().length < ROWS * rounds, `${changes().length} changes for ${ROWS * rounds} writes`);
      // Back to live: a new write arrives on the same socket.
      await postJson(`${server.url}/api/sync/todos`, {
        changes: [{ id: 'after-lag', action: 'create', data: { title: 'live', done: false } }],
      });
      await waitFor(() => changes().some((change) => change.id === 'after-lag'), 5000, 'a live change after the lag');
      assert.equal(closedWith, 0, 'never closed');
      socket.close();
    });

    test('an SSE stream that stops reading lags, then catches up on the same stream', async () => {
      const response = await fetch(`${server.url}/api/sync/events?entities=todos`);
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      await reader.read(); // the opening comment
      const rounds = 60;
      const laggedBefore = (await server.engine.metrics()).laggedConsumers;
      // Do not read while the server produces far more than the bound.
      await flood('sse', rounds);
      assert.ok((await server.engine.metrics()).laggedConsumers > laggedBefore, 'the stream lagged');
      const decoder = new TextDecoder();
      let text = '';
      const events = () =>
        text
          .split('\n\n')
          .slice(0, -1) // the last piece may be an event still arriving
          .map((event) => event.split('\n').find((line) => line.startsWith('data: ')))
          .filter((line): line is string => line !== undefined)
          .map((line) => JSON.parse(line.slice(6)));
      const newest = String(rounds - 1);
      const done = () => {
        const titles = latest(events(), 'sse');
        return titles.size === ROWS && [...titles.values()].every((round) => round === newest);
      };
      while (!done()) {
        const { value, done: ended } = await reader.read();
        assert.ok(!ended, 'the stream stays open');
        text += decoder.decode(value, { stream: true });
      }
      assert.ok(events().length < ROWS * rounds, `${events().length} changes for ${ROWS * rounds} writes`);
      assert.equal(server.engine.connections().live, 1, 'still the one stream');
      await reader.cancel();
    });
  });
