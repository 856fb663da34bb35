import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { CLOSE_SLOW_CONSUMER } from '../src/core/protocol.js';
import { postJson, startServer, type TestServer, waitFor } from './helpers.js';

/**
 * A reader that stops reading must not make the server buffer without bound:
 * past maxBufferedBytes it is dropped and told (WebSocket close code 4008, or
 * the SSE stream ending) to reconnect and catch up by pull.
 */
describe('slow consumers are bounded', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer({ limits: { maxBufferedBytes: 256 * 1024, maxBodyBytes: 4 * 1024 * 1024 } });
  });
  after(() => server.close());

  /** Push enough big rows to overflow any socket buffer. */
  async function flood(rounds: number) {
    for (let round = 0; round < rounds; round++) {
      await postJson(`${server.url}/api/sync/todos`, {
        changes: Array.from({ length: 50 }, (_, index) => ({
          id: `flood-${round}-${index}`,
          action: 'create',
          data: { title: 'x'.repeat(4000), done: false },
        })),
      });
    }
  }

  test('a WebSocket that stops reading is closed with 4008, and a fresh one catches up', async () => {
    const socket = new WebSocket(server.wsUrl, { perMessageDeflate: false });
    await new Promise((resolve) => socket.once('open', resolve));
    socket.send(JSON.stringify({ type: 'subscribe', entities: ['todos'] }));
    await new Promise((resolve) => socket.once('message', resolve));
    const closed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
    // Stop reading from the TCP socket: the kernel buffers fill, then the server's own queue grows.
    const tcp = (socket as unknown as { _socket: Socket })._socket;
    tcp.pause();
    const since = await server.engine.currentVersion();
    await flood(60); // ~12 MB of changes, far past the 256 KiB limit plus loopback buffers
    tcp.resume();
    assert.equal(await closed, CLOSE_SLOW_CONSUMER);
    // The client reconnects and catches up from the log: nothing was lost.
    const fresh = new WebSocket(server.wsUrl);
    const received: any[] = [];
    fresh.on('message', (data) => received.push(JSON.parse(String(data))));
    await new Promise((resolve) => fresh.once('open', resolve));
    fresh.send(JSON.stringify({ type: 'subscribe', entities: ['todos'], since }));
    const total = (await server.engine.currentVersion()) - since;
    const count = () => received.filter((m) => m.type === 'change').flatMap((m) => m.changes).length;
    await waitFor(() => count() >= total, 10_000, 'catch-up').catch((error) => {
      throw new Error(`${error.message}: ${count()} of ${total}, ${JSON.stringify(received.filter((m) => m.type !== 'change'))}`);
    });
    fresh.close();
  });

  test('an SSE stream that stops reading is ended instead of buffering', async () => {
    const response = await fetch(`${server.url}/api/sync/events`);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the opening comment
    // Do not read while the server produces far more than the limit.
    await flood(60);
    await waitFor(() => server.engine.connections().live === 0, 10_000, 'the slow stream to be dropped');
    await reader.cancel();
  });
});
