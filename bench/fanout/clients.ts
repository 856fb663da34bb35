/**
 * Client process: holds a share of the benchmark's WebSocket or SSE
 * connections and timestamps every live message on the shared monotonic
 * clock the moment it is read from the socket.
 *
 * Clients find the write's marker in the message (`"seq":N` for latency,
 * the batch's `"version":N` for throughput) without a full JSON parse: the
 * same code runs against our server and the raw floors, and what we time is
 * the server's delivery, not this process's JSON parser (the browser's apply
 * cost is benchmark 6).
 */
import http from 'node:http';
import WebSocket from 'ws';
import { now, sleep } from '../lib/clock.js';
import { emit, serve } from '../lib/proc.js';

type Kind = 'ws' | 'sse';

const EMPTY = Buffer.alloc(0);
const BLANK_LINE = Buffer.from('\n\n');
const DATA_FIELD = Buffer.from('data: ');

interface ConnectArgs {
  kind: Kind;
  url: string;
  count: number;
  /** rhtmx: subscribe to `items` after the hello; raw: ready as soon as it is open. */
  protocol: 'rhtmx' | 'raw';
  /** Offer permessage-deflate as browsers do (default true). */
  deflate?: boolean;
  /**
   * Act as an htmx page that refetches its list on each change: a live
   * message starts a GET of this URL (keep-alive, one socket per page), and
   * the page counts as updated when the answer has been read.
   */
  refetch?: string;
}

interface Connection {
  close(): void;
}

const connections: Connection[] = [];
/** Latency mode: receive times per write seq. */
let arrivals = new Map<number, number[]>();
/** Throughput mode: the version every client must reach, and when each did. */
let target = Number.POSITIVE_INFINITY;
let reached: number[] = [];
/** Bumped by each throughput run so a connection reports reaching each target once. */
let generation = 0;
let bytesReceived = 0;
/** Connections dropped as slow consumers and resumed (throughput mode). */
let reconnects = 0;

function numberAfter(text: string, needle: string, from = 0): number {
  const at = text.indexOf(needle, from);
  if (at < 0) return -1;
  let value = 0;
  for (let i = at + needle.length; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 48 || code > 57) break;
    value = value * 10 + (code - 48);
  }
  return value;
}

/**
 * Returns a per-connection message handler (one message = one live batch).
 * Only the head of a message is decoded: the markers sit in its first bytes
 * (`version` right after `type`; `seq` in the first row of a one-row batch).
 */
function receiver(refetch?: string): (message: Buffer | string) => void {
  let doneIn = -1;
  const agent = refetch ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : null;
  const record = (seq: number, t: number) => {
    let times = arrivals.get(seq);
    if (!times) {
      times = [];
      arrivals.set(seq, times);
    }
    times.push(t);
    if (times.length === connections.length) emit('all', { seq });
  };
  return (message) => {
    const t = now();
    bytesReceived += message.length;
    const text = typeof message === 'string' ? message.slice(0, 1024) : message.toString('latin1', 0, 1024);
    if (target !== Number.POSITIVE_INFINITY) {
      if (doneIn === generation) return;
      if (numberAfter(text.slice(0, 80), '"version":') >= target) {
        doneIn = generation;
        reached.push(t);
        if (reached.length === connections.length) emit('reached', { count: reached.length });
      }
      return;
    }
    const seq = numberAfter(text, '"seq":');
    if (seq < 0) return;
    if (!refetch || !agent) return record(seq, t);
    http
      .get(refetch, { agent }, (response) => {
        response.on('data', () => {});
        response.on('end', () => record(seq, now()));
      })
      .on('error', () => emit('closed', { code: -1 }));
  };
}

function connectWs(args: ConnectArgs): Promise<Connection> {
  return new Promise((resolve, reject) => {
    const onLive = receiver(args.refetch);
    let ready = false;
    let closing = false;
    let socket: WebSocket;
    /** Highest batch version seen: where a dropped connection resumes. */
    let seen = 0;
    const connection = {
      close: () => {
        closing = true;
        socket.terminate();
      },
    };
    const open = (since?: number) => {
      let subscribed = false;
      socket = new WebSocket(args.url, { perMessageDeflate: args.deflate ?? true });
      socket.on('error', (error) => {
        if (!ready) reject(error);
      });
      socket.on('close', (code: number) => {
        if (!ready || closing) return;
        // A dropped client in a throughput run (4008 slow consumer, or 1006 when an overloaded machine
        // misses the heartbeat) does what our client does: reconnect and resume from its cursor (the hub
        // replays the log, paced). In a latency run a drop invalidates the run.
        if (target !== Number.POSITIVE_INFINITY) {
          reconnects++;
          setTimeout(() => open(seen), 50);
        } else emit('closed', { code });
      });
      socket.on('open', () => {
        if (args.protocol === 'raw' && !ready) {
          ready = true;
          resolve(connection);
        }
      });
      socket.on('message', (data: Buffer) => {
        // The server may start replaying a resumed cursor before its `subscribed` reply: those are live data too.
        if (args.protocol === 'rhtmx' && !subscribed && !data.toString('latin1', 0, 16).startsWith('{"type":"change"')) {
          const text = data.toString('utf8');
          if (text.startsWith('{"type":"hello"')) {
            socket.send(JSON.stringify({ type: 'subscribe', entities: ['items'], ref: 1, ...(since === undefined ? {} : { since }) }));
          } else if (text.startsWith('{"type":"subscribed"')) {
            subscribed = true;
            if (!ready) {
              ready = true;
              resolve(connection);
            }
          }
          return;
        }
        const version = numberAfter(data.toString('latin1', 0, 80), '"version":');
        if (version > seen) seen = version;
        onLive(data);
      });
    };
    open();
  });
}

function connectSse(args: ConnectArgs): Promise<Connection> {
  return new Promise((resolve, reject) => {
    const onLive = receiver();
    let ready = false;
    // One socket per stream, as separate browsers would have.
    const request = http.get(args.url, { agent: false, headers: { accept: 'text/event-stream' } }, (response) => {
      if (response.statusCode !== 200) {
        reject(new Error(`SSE status ${response.statusCode}`));
        response.resume();
        return;
      }
      // Events are framed on bytes (no decoding of whole batches): an event ends at a blank line.
      let pending: Buffer = EMPTY;
      let searchFrom = 0;
      response.on('data', (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        let end = pending.indexOf(BLANK_LINE, searchFrom);
        while (end >= 0) {
          const block = pending.subarray(0, end);
          pending = pending.subarray(end + 2);
          if (!ready) {
            ready = true;
            resolve(connection);
          } else {
            const data = block.indexOf(DATA_FIELD);
            if (data >= 0) onLive(block.subarray(data + DATA_FIELD.length));
          }
          end = pending.indexOf(BLANK_LINE);
        }
        searchFrom = Math.max(0, pending.length - 1);
      });
    });
    let closing = false;
    const connection = {
      close: () => {
        closing = true;
        request.destroy();
      },
    };
    request.on('error', (error) => {
      if (!ready) reject(error);
    });
    request.on('close', () => {
      if (ready && !closing) emit('closed', { code: 0 });
    });
  });
}

serve({
  /** Open `count` connections, at most 100 handshakes at a time (the server's accept backlog is finite). */
  async connect(args: ConnectArgs) {
    const start = now();
    let next = 0;
    const worker = async () => {
      while (next < args.count) {
        next++;
        for (let attempt = 0; ; attempt++) {
          try {
            connections.push(await (args.kind === 'ws' ? connectWs(args) : connectSse(args)));
            break;
          } catch (error) {
            if (attempt >= 5) throw error;
            await sleep(50 * (attempt + 1));
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(100, args.count) }, worker));
    return { connected: connections.length, ms: now() - start };
  },
  /** Latency mode (default): collect receive times by seq. */
  latencyMode() {
    target = Number.POSITIVE_INFINITY;
    arrivals = new Map();
    return null;
  },
  /** Throughput mode: each connection records when a batch at or past `version` arrives. */
  throughputMode(args: { version: number }) {
    target = args.version;
    generation++;
    reached = [];
    reconnects = 0;
    bytesReceived = 0;
    return null;
  },
  /** Receive times per seq (latency) or per connection (throughput), then forget them. */
  collect() {
    const result = { arrivals: Object.fromEntries(arrivals), reached, bytesReceived, reconnects, connections: connections.length };
    arrivals = new Map();
    reached = [];
    return result;
  },
  async close() {
    for (const connection of connections.splice(0)) connection.close();
    await sleep(100);
    return null;
  },
});
