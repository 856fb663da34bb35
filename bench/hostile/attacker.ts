/**
 * The hostile client process for the hostile benchmark.
 *
 * - One WebSocket to `/api/sync/ws` at a time that pauses its TCP socket the
 *   moment it opens (it never reads again: no replies, no close frame, no
 *   pings) and sends the most expensive request the protocol allows,
 *   `{"type":"sync","entity":"todos","since":0,"limit":10000}`:
 *   - `flood`: as fast as the socket takes it (kept below 1 MiB queued here,
 *     so this process does not buffer without bound);
 *   - `paced`: at the row budget (`wsRowsPerSecond` / 10,000 pages a second,
 *     after a burst of the same size), so the requests are allowed and
 *     actually answered until the replies pile up past `maxBufferedBytes`.
 *   A paused socket cannot see the server's close frame, so the orchestrator
 *   relays the server's own close (`serverClosed`, counted by code in the
 *   server process) and this client drops that socket and reconnects at once:
 *   the worst case for "one hostile socket". A close this side sees by itself
 *   (reset, error) also reconnects and is counted separately.
 * - Up to thousands of SSE streams to `/api/sync/events` that are opened and
 *   then never read (response and socket paused).
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { now } from '../lib/clock.js';
import { serve } from '../lib/proc.js';

const SYNC = JSON.stringify({ type: 'sync', entity: 'todos', since: 0, limit: 10_000 });
const CLIENT_QUEUE = 1024 * 1024;

/** What the attacker process reports (the suite reads it). */
export interface HostileStats {
  connections: number;
  opened: number;
  messages: number;
  /** Closes the server sent, by code (relayed from the server process). */
  serverCloses: Record<string, number>;
  /** Closes or errors this side saw without being told. */
  clientCloses: Record<string, number>;
  errors: Record<string, number>;
  ms: number;
}

let hostile: {
  stop: boolean;
  mode: 'flood' | 'paced';
  url: string;
  perSecond: number;
  current: Current | null;
  n: number;
  started: number;
  stats: HostileStats;
} | null = null;

interface Current {
  n: number;
  /** Drop this socket without counting it as a client-side close, and reconnect. */
  drop(): void;
}

const bump = (map: Record<string, number>, key: string) => {
  map[key] = (map[key] ?? 0) + 1;
};

function connect(): void {
  const h = hostile;
  if (!h || h.stop) return;
  const n = ++h.n;
  h.stats.connections++;
  const ws = new WebSocket(`${h.url}?n=${n}`, { handshakeTimeout: 5000 });
  let timer: ReturnType<typeof setInterval> | null = null;
  let done = false;
  const current: Current = {
    n,
    drop() {
      finish(null);
      ws.terminate();
    },
  };
  h.current = current;
  const finish = (key: string | null) => {
    if (done) return;
    done = true;
    if (timer) clearInterval(timer);
    if (key) bump(h.stats.clientCloses, key);
    if (h.current === current) {
      h.current = null;
      setImmediate(connect);
    }
  };
  ws.on('error', (error: Error & { code?: string }) => {
    bump(h.stats.errors, error.code ?? error.message.slice(0, 40));
  });
  ws.on('close', (code) => finish(String(code)));
  ws.on('open', () => {
    // Stop reading: from here on the server's replies, pings and close frame pile up unread.
    (ws as unknown as { _socket: Socket })._socket.pause();
    h.stats.opened++;
    const send = (count: number) => {
      for (let i = 0; i < count; i++) {
        if (done || h.stop || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > CLIENT_QUEUE) return;
        ws.send(SYNC);
        h.stats.messages++;
      }
    };
    if (h.mode === 'flood') {
      const loop = () => {
        if (done || h.stop || ws.readyState !== WebSocket.OPEN) return;
        send(256);
        setImmediate(loop);
      };
      loop();
    } else {
      // A burst as large as the budget's, then the budget's rate.
      send(h.perSecond);
      const every = 50;
      let owed = 0;
      timer = setInterval(() => {
        owed += (h.perSecond * every) / 1000;
        const whole = Math.floor(owed);
        owed -= whole;
        send(whole);
      }, every);
    }
  });
}

/** Open SSE streams that are never read. */
const stalled: Array<{ req: http.ClientRequest; socket: Socket | null }> = [];

serve({
  startHostile(args: { url: string; mode: 'flood' | 'paced'; perSecond?: number }) {
    if (hostile) throw new Error('hostile client already running');
    hostile = {
      stop: false,
      mode: args.mode,
      url: args.url,
      perSecond: args.perSecond ?? 20,
      current: null,
      n: 0,
      started: now(),
      stats: { connections: 0, opened: 0, messages: 0, serverCloses: {}, clientCloses: {}, errors: {}, ms: 0 },
    };
    connect();
    return null;
  },

  /** The server closed connection `n` with `code`: drop it (it would never see the close frame) and reconnect. */
  serverClosed(args: { n?: number; code: number }) {
    const h = hostile;
    if (!h || args.n === undefined) return null;
    bump(h.stats.serverCloses, String(args.code));
    if (h.current && h.current.n === args.n) h.current.drop();
    return null;
  },

  stopHostile() {
    const h = hostile;
    if (!h) return null;
    h.stop = true;
    h.current?.drop();
    h.current = null;
    hostile = null;
    h.stats.ms = now() - h.started;
    return h.stats;
  },

  /** Open `count` event streams (in waves of `wave`) and stop reading each as soon as its headers arrive. */
  async openStreams(args: { url: string; count: number; wave?: number }) {
    const wave = args.wave ?? 100;
    let failed = 0;
    for (let from = 0; from < args.count; from += wave) {
      await Promise.all(
        Array.from(
          { length: Math.min(wave, args.count - from) },
          () =>
            new Promise<void>((resolve) => {
              const entry: { req: http.ClientRequest; socket: Socket | null } = {
                req: null as unknown as http.ClientRequest,
                socket: null,
              };
              const req = http.get(args.url, { agent: false, headers: { accept: 'text/event-stream' } }, (res) => {
                if (res.statusCode !== 200) failed++;
                res.pause();
                res.socket.pause();
                entry.socket = res.socket;
                resolve();
              });
              entry.req = req;
              req.on('error', () => {
                failed++;
                resolve();
              });
              stalled.push(entry);
            }),
        ),
      );
    }
    return { opened: stalled.length - failed, failed };
  },

  closeStreams() {
    for (const entry of stalled.splice(0)) {
      entry.socket?.destroy();
      entry.req.destroy();
    }
    return null;
  },
});
