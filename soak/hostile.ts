/**
 * The hostile participant: for the whole chaos phase it attacks the live demo
 * nodes over loopback sockets (127.0.0.1 only), at a bounded rate, the way a
 * broken or malicious client would, and counts what the server answered:
 *
 * - raw TCP (node:net): malformed HTTP requests and WebSocket upgrades (bad
 *   Host such as `x:99999`, `a b`, `[`; no Sec-WebSocket-Key; a bad version;
 *   a bad request line; oversized headers; broken chunked and short bodies;
 *   garbage bytes), each either read to its answer or reset (RST, through
 *   `socket.resetAndDestroy()`) at a random point: inside the request, right
 *   after its last header byte while the server is still answering, at the
 *   first byte of the answer, or a few milliseconds later;
 * - one real WebSocket (`ws`) on `/api/sync/ws` that subscribes, stops
 *   reading (the socket is paused, with short reading windows so the server's
 *   close frame and pings are seen) and sends the most expensive request it
 *   may, `{"type":"sync","entity":"todos","since":0,"limit":10000}`, as fast as
 *   the server takes it; when the server closes it (4008 too many bytes
 *   queued, 4029 over the cost limit, or anything else: every code is
 *   counted) it reconnects after a short pause;
 * - Server-Sent Events (`GET /api/sync/events`): one stream at a time opened
 *   and no longer read, and requests abandoned midway (destroyed right after
 *   the request, or after the answer's headers).
 *
 * Bounds: at most `rawPerSecond` raw connections a second (`rawConcurrency`
 * at once, each given up after 3 s); at most two sockets that do not read at
 * a time (the WebSocket and the SSE stream); a WebSocket sends at most
 * `WS_BURST` messages every `WS_TICK_MS` and never queues more than
 * `WS_CLIENT_QUEUE` bytes. Everything stops when the run's signal aborts.
 *
 * It also measures what a normal client pays meanwhile: an HTTP pull
 * (`GET /api/sync/todos?since=<recent version>`) every `probeEveryMs`, first
 * for `quietMs` before any hostile traffic (the same devices, browsers and
 * kills running), then while the hostile traffic runs. The report gives both
 * samples and their ratio; nothing is asserted on it.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { connect, type Socket } from 'node:net';
import WebSocket from 'ws';
import type { ServerNode } from './nodes.js';
import { type Random, sleep } from './random.js';

export interface HostileOptions {
  /** Raw TCP connections started per second, at most. */
  rawPerSecond: number;
  /** Raw TCP connections open at once, at most. */
  rawConcurrency: number;
  /** Length of the quiet latency sample taken before the hostile traffic starts. */
  quietMs: number;
  /** Pause between two latency probes. */
  probeEveryMs: number;
}

export const DEFAULT_HOSTILE: HostileOptions = {
  rawPerSecond: 40,
  rawConcurrency: 12,
  quietMs: 5_000,
  probeEveryMs: 100,
};

/** The request the flooding WebSocket repeats: a full pull from 0, the largest page anyone may ask for. */
// The demo's maxPullLimit (examples/todo/server.ts): the most expensive page it allows.
export const EXPENSIVE_REQUEST = JSON.stringify({ type: 'sync', entity: 'todos', since: 0, limit: 2000 });
const WS_PATH = '/api/sync/ws';
const SSE_PATH = '/api/sync/events';
/** A raw connection is given up (destroyed) after this. */
const RAW_TIMEOUT_MS = 3_000;
/** After the first byte of an answer, how long a raw connection keeps reading before it goes. */
const RAW_LINGER_MS = 300;
/** The flooding WebSocket: a burst every tick, and never more than this queued on our side. */
const WS_TICK_MS = 20;
const WS_BURST = 5;
const WS_CLIENT_QUEUE = 256 * 1024;
/** The flooding WebSocket stops reading for this long (ms, uniform), then reads for `WS_READ_MS`. */
const WS_STALL_MS: [number, number] = [2_000, 8_000];
const WS_READ_MS = 400;
/** A flooding WebSocket the server never closes is closed by us after this long (ms, uniform). */
const WS_LIFETIME_MS: [number, number] = [15_000, 40_000];
/** A non-reading SSE stream is held this long (ms, uniform). */
const SSE_STALL_MS: [number, number] = [3_000, 12_000];
const PROBE_TIMEOUT_MS = 10_000;
/** Probes of a node that (re)started less than this ago are left out of both samples: a cold process is slow either way. */
const PROBE_WARM_MS = 2_000;

/** How one latency sample went, ms. */
export interface LatencySample {
  /** Probes answered 200 (the figures are theirs). */
  n: number;
  /** Probes left out: their node had started less than 2 s before. */
  cold: number;
  /** Probes that failed (node down, killed mid-request, timeout, another status). */
  failed: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface HostileReport {
  /** Seconds the hostile traffic ran (the quiet sample not included). */
  activeS: number;
  raw: {
    /** Raw connections attempted. */
    connections: number;
    /** Connections refused (node down). */
    refused: number;
    /** Connections we reset (RST), in all. */
    resets: number;
    /** …of which right after the request's last byte, before any answer arrived. */
    resetsAfterRequest: number;
    /** First status line of each answer seen (`none`: no answer before the socket ended). */
    statuses: Record<string, number>;
    /** Per case (what was sent), how it ended: a status, or what happened to the socket. */
    cases: Record<string, Record<string, number>>;
  };
  ws: {
    /** Handshakes attempted / completed. */
    attempts: number;
    opened: number;
    /** Why a handshake failed. */
    refused: Record<string, number>;
    /** Expensive requests sent, and their bytes. */
    sent: number;
    bytesSent: number;
    /** Messages read in the reading windows, by type (`error:<code>` for errors). */
    received: Record<string, number>;
    bytesReceived: number;
    /** Closes we did not start while the node stayed up, by code. */
    closeCodes: Record<string, number>;
    /** Sockets that ended because their node was killed (or crashed) meanwhile. */
    diedWithNode: number;
    /** The reason the server gave with each code (first seen). */
    closeReasons: Record<string, string>;
    /** Sockets we closed ourselves (the server had not after the lifetime, or the run ended). */
    closedByUs: number;
    errors: Record<string, number>;
  };
  sse: {
    /** Streams opened and then not read. */
    stalled: number;
    /** Requests abandoned midway. */
    abandoned: number;
    statuses: Record<string, number>;
    /** Stalled streams the server had ended when we looked again, its node still up. */
    endedByServer: number;
    /** Stalled streams that ended because their node was killed (or crashed) meanwhile. */
    diedWithNode: number;
    bytesRead: number;
    errors: Record<string, number>;
  };
  /** A normal client's pull while the hostile traffic runs, against the quiet sample before it. */
  pull: { quiet: LatencySample; hostile: LatencySample; ratioP50: number | null; ratioP99: number | null };
}

type ResetMode = 'read' | 'inside-request' | 'after-request' | 'at-answer' | 'after-delay';
const RESET_MODES: Array<[ResetMode, number]> = [
  ['read', 0.35],
  ['inside-request', 0.2],
  ['after-request', 0.2],
  ['at-answer', 0.15],
  ['after-delay', 0.1],
];

/** Host header values that are not a host (null: no Host header at all). */
const BAD_HOSTS: Array<string | null> = ['x:99999', 'a b', '[', '[::1', 'x:', ':80', 'x:-1', '%zz', '', null, 'a'.repeat(3000)];

interface RawCase {
  name: string;
  bytes: (random: Random) => Buffer;
}

const wsKey = () => randomBytes(16).toString('base64');
const hostLine = (host: string | null) => (host === null ? '' : `Host: ${host}\r\n`);
const text = (value: string) => Buffer.from(value, 'latin1');

function rawCases(port: number): RawCase[] {
  const host = `127.0.0.1:${port}`;
  const upgrade = (headers: string, path = WS_PATH) =>
    text(`GET ${path} HTTP/1.1\r\n${headers}Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n`);
  const cases: RawCase[] = [];
  for (const bad of BAD_HOSTS) {
    const label = bad === null ? 'no Host' : `Host ${JSON.stringify(bad.length > 20 ? `${bad.slice(0, 8)}…(${bad.length})` : bad)}`;
    cases.push(
      { name: `pull, ${label}`, bytes: () => text(`GET /api/sync/todos?since=0 HTTP/1.1\r\n${hostLine(bad)}Connection: close\r\n\r\n`) },
      {
        name: `upgrade, ${label}`,
        bytes: () => upgrade(`${hostLine(bad)}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${wsKey()}\r\n`),
      },
      {
        name: `events, ${label}`,
        bytes: () => text(`GET ${SSE_PATH} HTTP/1.1\r\n${hostLine(bad)}Accept: text/event-stream\r\nConnection: close\r\n\r\n`),
      },
    );
  }
  cases.push(
    { name: 'upgrade, no Sec-WebSocket-Key', bytes: () => upgrade(`Host: ${host}\r\nSec-WebSocket-Version: 13\r\n`) },
    {
      name: 'upgrade, bad Sec-WebSocket-Key',
      bytes: () => upgrade(`Host: ${host}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n`),
    },
    {
      name: 'upgrade, version 99',
      bytes: () => upgrade(`Host: ${host}\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: ${wsKey()}\r\n`),
    },
    {
      name: 'upgrade, unknown path',
      bytes: () => upgrade(`Host: ${host}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${wsKey()}\r\n`, '/api/sync/nope'),
    },
    {
      // A valid handshake followed at once by frames that are not frames (unmasked, reserved opcodes).
      name: 'upgrade, then garbage frames',
      bytes: (random) =>
        Buffer.concat([
          upgrade(`Host: ${host}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${wsKey()}\r\n`),
          randomBytes(random.int(1, 512)),
        ]),
    },
    { name: 'garbage bytes', bytes: (random) => randomBytes(random.int(1, 2048)) },
    { name: 'bad request line', bytes: () => text('GET /api/sync/todos HTTP/9.9\r\n\r\n') },
    { name: 'request line only spaces', bytes: () => text('   \r\n\r\n') },
    { name: 'header without colon', bytes: () => text(`GET /api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nno colon here\r\n\r\n`) },
    {
      name: 'headers over 16 KiB',
      bytes: () => text(`GET /api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nX-Big: ${'b'.repeat(20_000)}\r\nConnection: close\r\n\r\n`),
    },
    {
      name: 'push, bad chunk size',
      bytes: () =>
        text(
          `POST /api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
        ),
    },
    {
      name: 'push, body shorter than Content-Length',
      bytes: () =>
        text(
          `POST /api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{"changes":[`,
        ),
    },
    {
      name: 'push, Content-Length and chunked',
      bytes: () =>
        text(
          `POST /api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n`,
        ),
    },
    {
      name: 'pull, bad since and limit',
      bytes: () => text(`GET /api/sync/todos?since=-1&limit=x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    },
    { name: 'pull, malformed path', bytes: () => text(`GET /api/sync/%E0%A4%A HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`) },
    {
      name: 'pull, absolute-form target',
      bytes: () => text(`GET http://[/api/sync/todos HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    },
  );
  return cases;
}

const count = (map: Record<string, number>, key: string, by = 1) => {
  map[key] = (map[key] ?? 0) + by;
};
/** An error message short enough to be a counter's key. */
const short = (error: unknown) => {
  const code = (error as { code?: string }).code;
  const message = (error as Error).message ?? String(error);
  return (code ? `${code}: ${message}` : message).replace(/127\.0\.0\.1:\d+/g, 'node').slice(0, 100);
};
const statusOf = (head: string): string | null => /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? null;

export class Hostile {
  private readonly stats: HostileReport;
  private readonly quiet: number[] = [];
  private readonly loud: number[] = [];
  private quietFailed = 0;
  private loudFailed = 0;
  private quietCold = 0;
  private loudCold = 0;
  private phase: 'quiet' | 'hostile' = 'quiet';
  private activeSince = 0;
  private activeUntil = 0;
  /** Every socket still open, destroyed by `dispose`. */
  private readonly open = new Set<{ destroy(): void }>();
  private readonly cases = new Map<number, RawCase[]>();

  constructor(
    private readonly nodes: readonly ServerNode[],
    private readonly random: Random,
    private readonly options: HostileOptions = DEFAULT_HOSTILE,
  ) {
    this.stats = {
      activeS: 0,
      raw: { connections: 0, refused: 0, resets: 0, resetsAfterRequest: 0, statuses: {}, cases: {} },
      ws: {
        attempts: 0,
        opened: 0,
        refused: {},
        sent: 0,
        bytesSent: 0,
        received: {},
        bytesReceived: 0,
        closeCodes: {},
        closeReasons: {},
        diedWithNode: 0,
        closedByUs: 0,
        errors: {},
      },
      sse: { stalled: 0, abandoned: 0, statuses: {}, endedByServer: 0, diedWithNode: 0, bytesRead: 0, errors: {} },
      pull: { quiet: sample([], 0, 0), hostile: sample([], 0, 0), ratioP50: null, ratioP99: null },
    };
  }

  /** The quiet sample, then the hostile traffic (and the probes) until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const probes = this.probe(signal);
    await sleep(this.options.quietMs, signal);
    if (!signal.aborted) {
      this.phase = 'hostile';
      this.activeSince = Date.now();
      await Promise.all([this.rawLoop(signal), this.wsLoop(signal), this.sseLoop(signal)]);
      this.activeUntil = Date.now();
    }
    await probes;
  }

  /** Destroy whatever is still open (the run's `finally`). */
  dispose(): void {
    for (const socket of this.open) socket.destroy();
    this.open.clear();
  }

  report(): HostileReport {
    const quiet = sample(this.quiet, this.quietFailed, this.quietCold);
    const hostile = sample(this.loud, this.loudFailed, this.loudCold);
    const ratio = (a: number, b: number, n: number, m: number) => (n > 0 && m > 0 && b > 0 ? Math.round((a / b) * 100) / 100 : null);
    return {
      ...this.stats,
      activeS: this.activeSince ? Math.round(((this.activeUntil || Date.now()) - this.activeSince) / 100) / 10 : 0,
      pull: {
        quiet,
        hostile,
        ratioP50: ratio(hostile.p50, quiet.p50, hostile.n, quiet.n),
        ratioP99: ratio(hostile.p99, quiet.p99, hostile.n, quiet.n),
      },
    };
  }

  /** A node that is up right now (the kills take them down), or null. */
  private target(): ServerNode | null {
    const up = this.nodes.filter((node) => node.up);
    return this.random.pick(up) ?? null;
  }

  // ---- a normal client's pull latency ----

  private async probe(signal: AbortSignal): Promise<void> {
    const cursor = { version: 0 };
    while (!signal.aborted) {
      const node = this.target();
      if (node) await this.probeOnce(node, cursor);
      await sleep(this.options.probeEveryMs, signal);
    }
  }

  /** One pull from a recent cursor, as a client that is up to date makes it; timed into the current phase's sample. */
  private async probeOnce(node: ServerNode, cursor: { version: number }): Promise<void> {
    const phase = this.phase;
    const warm = Date.now() - node.startedAt >= PROBE_WARM_MS;
    const started = performance.now();
    let ms: number;
    try {
      const response = await fetch(`${node.url}/api/sync/todos?since=${Math.max(0, cursor.version - 5)}`, {
        signal: AbortSignal.timeout(PROBE_TIMEOUT_MS),
      });
      const body = (await response.json()) as { version?: number };
      if (response.status !== 200) throw new Error(`status ${response.status}`);
      ms = Math.round((performance.now() - started) * 10) / 10;
      if (typeof body.version === 'number') cursor.version = Math.max(cursor.version, body.version);
    } catch {
      if (phase === 'quiet') this.quietFailed++;
      else this.loudFailed++;
      return;
    }
    // A probe that straddled the start of the hostile traffic counts in neither sample.
    if (phase !== this.phase) return;
    if (!warm) {
      if (phase === 'quiet') this.quietCold++;
      else this.loudCold++;
    } else (phase === 'quiet' ? this.quiet : this.loud).push(ms);
  }

  // ---- raw TCP ----

  private async rawLoop(signal: AbortSignal): Promise<void> {
    const running = new Set<Promise<void>>();
    const interval = 1000 / this.options.rawPerSecond;
    while (!signal.aborted) {
      if (running.size < this.options.rawConcurrency) {
        const node = this.target();
        if (node) {
          const attempt: Promise<void> = this.rawOnce(node).finally(() => running.delete(attempt));
          running.add(attempt);
        }
      }
      await sleep(interval, signal);
    }
    await Promise.all(running);
  }

  private casesFor(port: number): RawCase[] {
    let cases = this.cases.get(port);
    if (!cases) {
      cases = rawCases(port);
      this.cases.set(port, cases);
    }
    return cases;
  }

  private resetMode(): ResetMode {
    let roll = this.random.next();
    for (const [mode, share] of RESET_MODES) {
      roll -= share;
      if (roll < 0) return mode;
    }
    return 'read';
  }

  /** One raw connection: send one case's bytes, then read the answer or reset the socket. */
  private rawOnce(node: ServerNode): Promise<void> {
    const rawCase = this.random.pick(this.casesFor(node.port)) as RawCase;
    const bytes = rawCase.bytes(this.random);
    const mode = this.resetMode();
    const cut = mode === 'inside-request' ? this.random.int(0, Math.max(0, bytes.length - 1)) : bytes.length;
    const delay = this.random.int(0, 30);
    const stats = this.stats.raw;
    stats.connections++;
    const outcomes = stats.cases[rawCase.name] ?? {};
    stats.cases[rawCase.name] = outcomes;
    return new Promise((resolve) => {
      const socket: Socket = connect({ host: '127.0.0.1', port: node.port });
      this.open.add(socket);
      let head = '';
      let answered = false;
      let done = false;
      const timers: NodeJS.Timeout[] = [];
      const finish = (outcome: string) => {
        if (done) return;
        done = true;
        for (const timer of timers) clearTimeout(timer);
        count(outcomes, outcome);
        if (!answered) count(stats.statuses, 'none');
        this.open.delete(socket);
        if (!socket.destroyed) socket.destroy();
        resolve();
      };
      const answer = () => {
        const status = statusOf(head);
        return status ? `status ${status}` : head ? 'answer not HTTP' : 'no answer';
      };
      const reset = (when: string) => {
        if (done) return;
        stats.resets++;
        // resetAndDestroy needs a connected TCP handle; before that it is a plain destroy.
        if (socket.readyState === 'open') socket.resetAndDestroy();
        else socket.destroy();
        finish(head ? `${answer()}, then reset by us` : `reset by us ${when}`);
      };
      socket.setNoDelay(true);
      socket.on('error', (error: NodeJS.ErrnoException) => {
        if (error.code === 'ECONNREFUSED') {
          stats.refused++;
          finish('refused (node down)');
        } else finish(head ? `${answer()}, then ${error.code ?? 'error'}` : `${error.code ?? short(error)} before an answer`);
      });
      socket.on('data', (chunk: Buffer) => {
        if (!answered) {
          answered = true;
          head = chunk.subarray(0, 64).toString('latin1');
          count(stats.statuses, statusOf(head) ?? 'not HTTP');
          if (mode === 'at-answer') return reset('at the answer');
          timers.push(setTimeout(() => finish(answer()), RAW_LINGER_MS));
        }
      });
      socket.on('end', () => finish(head ? answer() : 'closed without an answer'));
      socket.on('close', () => finish(head ? answer() : 'closed without an answer'));
      timers.push(setTimeout(() => finish(head ? answer() : `no answer in ${RAW_TIMEOUT_MS / 1000} s`), RAW_TIMEOUT_MS));
      socket.once('connect', () => {
        if (mode === 'inside-request') {
          socket.write(bytes.subarray(0, cut), () => reset(`inside the request (${cut}/${bytes.length} bytes)`));
          return;
        }
        socket.write(bytes, () => {
          if (mode === 'after-request') {
            if (!answered) stats.resetsAfterRequest++;
            reset('right after the request');
          } else if (mode === 'after-delay') timers.push(setTimeout(() => reset(`${delay} ms after the request`), delay));
        });
      });
    });
  }

  // ---- the flooding WebSocket ----

  private async wsLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const node = this.target();
      if (node) await this.wsSession(node, signal);
      await sleep(this.random.int(300, 1_500), signal);
    }
  }

  private wsSession(node: ServerNode, signal: AbortSignal): Promise<void> {
    const stats = this.stats.ws;
    stats.attempts++;
    return new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${node.port}${WS_PATH}`, { handshakeTimeout: 5_000 });
      const starts = node.starts;
      const handle = { destroy: () => ws.terminate() };
      this.open.add(handle);
      let opened = false;
      let closingByUs = false;
      let sender: NodeJS.Timeout | undefined;
      let cycle: NodeJS.Timeout | undefined;
      let lifetime: NodeJS.Timeout | undefined;
      let killer: NodeJS.Timeout | undefined;
      const bytes = Buffer.byteLength(EXPENSIVE_REQUEST);

      const closeOurselves = () => {
        if (closingByUs || ws.readyState === WebSocket.CLOSED) return;
        closingByUs = true;
        if (ws.readyState === WebSocket.CONNECTING) return ws.terminate();
        ws.resume();
        ws.close(1000, 'hostile done');
        killer = setTimeout(() => ws.terminate(), 2_000);
      };
      const onAbort = () => closeOurselves();
      signal.addEventListener('abort', onAbort, { once: true });

      // Stop reading for a while, then read for a moment (close frames and pings are only seen then), again and again.
      const stall = () => {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.pause();
        cycle = setTimeout(
          () => {
            if (ws.readyState !== WebSocket.OPEN) return;
            ws.resume();
            cycle = setTimeout(stall, WS_READ_MS);
          },
          this.random.int(WS_STALL_MS[0], WS_STALL_MS[1]),
        );
      };

      ws.on('open', () => {
        opened = true;
        stats.opened++;
        // Subscribed, so the server also has live changes to queue for us (its slow-consumer limit counts those).
        ws.send(JSON.stringify({ type: 'subscribe', entities: ['todos'] }));
        stall();
        sender = setInterval(() => {
          for (let index = 0; index < WS_BURST; index++) {
            if (ws.readyState !== WebSocket.OPEN || closingByUs || ws.bufferedAmount > WS_CLIENT_QUEUE) return;
            ws.send(EXPENSIVE_REQUEST);
            stats.sent++;
            stats.bytesSent += bytes;
          }
        }, WS_TICK_MS);
        lifetime = setTimeout(
          () => {
            // Look once more before closing: the server may have closed meanwhile.
            ws.resume();
            setTimeout(closeOurselves, WS_READ_MS);
          },
          this.random.int(WS_LIFETIME_MS[0], WS_LIFETIME_MS[1]),
        );
      });
      ws.on('message', (data: Buffer) => {
        stats.bytesReceived += data.length;
        const head = data.subarray(0, 160).toString('utf8');
        const type = /"type":"([a-z_]+)"/.exec(head)?.[1] ?? 'unparsed';
        const code = type === 'error' ? /"code":"([a-z_]+)"/.exec(head)?.[1] : undefined;
        count(stats.received, code ? `error:${code}` : type);
      });
      ws.on('error', (error) => {
        const message = short(error);
        if (!opened) count(stats.refused, message);
        else count(stats.errors, message);
      });
      ws.on('close', (code, reason) => {
        clearInterval(sender);
        clearTimeout(cycle);
        clearTimeout(lifetime);
        clearTimeout(killer);
        signal.removeEventListener('abort', onAbort);
        this.open.delete(handle);
        if (opened) {
          if (closingByUs && (code === 1000 || code === 1005 || code === 1006)) stats.closedByUs++;
          else if (!node.up || node.starts !== starts) stats.diedWithNode++;
          else {
            count(stats.closeCodes, String(code));
            if (!(String(code) in stats.closeReasons)) stats.closeReasons[String(code)] = reason.toString('utf8').slice(0, 100);
          }
        }
        resolve();
      });
    });
  }

  // ---- Server-Sent Events ----

  private async sseLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const node = this.target();
      if (node) await this.sseStall(node, signal);
      for (let index = this.random.int(2, 4); index > 0 && !signal.aborted; index--) {
        const other = this.target();
        if (other) await this.sseAbandon(other);
        await sleep(this.random.int(100, 400), signal);
      }
      await sleep(this.random.int(200, 800), signal);
    }
  }

  /** Open a stream, stop reading it for a while, then look whether the server ended it. */
  private sseStall(node: ServerNode, signal: AbortSignal): Promise<void> {
    const stats = this.stats.sse;
    const starts = node.starts;
    return new Promise((resolve) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const request = http.get({
        host: '127.0.0.1',
        port: node.port,
        path: SSE_PATH,
        agent: false,
        headers: { accept: 'text/event-stream' },
        timeout: 5_000,
      });
      const handle = { destroy: () => request.destroy() };
      this.open.add(handle);
      const done = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        this.open.delete(handle);
        request.destroy();
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      request.on('timeout', () => {
        count(stats.errors, 'no answer in 5 s');
        done();
      });
      request.on('error', (error) => {
        if (!settled) count(stats.errors, short(error));
        done();
      });
      request.on('response', (response) => {
        count(stats.statuses, String(response.statusCode));
        request.setTimeout(0);
        stats.stalled++;
        let ended = false;
        response.on('data', (chunk: Buffer) => {
          stats.bytesRead += chunk.length;
        });
        response.on('end', () => {
          ended = true;
        });
        response.on('error', () => {
          ended = true;
        });
        // Stop reading: what the server writes now piles up in its queue and in the socket buffers.
        response.pause();
        response.socket.pause();
        timer = setTimeout(
          () => {
            response.socket.resume();
            response.resume();
            timer = setTimeout(() => {
              // Still open: the server kept the stream for us all along.
              if (ended || response.complete) {
                if (!node.up || node.starts !== starts) stats.diedWithNode++;
                else stats.endedByServer++;
              }
              done();
            }, 500);
          },
          this.random.int(SSE_STALL_MS[0], SSE_STALL_MS[1]),
        );
      });
    });
  }

  /** Ask for a stream and go midway: right after the request, or once the answer's headers arrived. */
  private sseAbandon(node: ServerNode): Promise<void> {
    const stats = this.stats.sse;
    const afterHeaders = this.random.chance(0.6);
    const rst = this.random.chance(0.5);
    return new Promise((resolve) => {
      const socket = connect({ host: '127.0.0.1', port: node.port });
      this.open.add(socket);
      const timer = setTimeout(() => end(), RAW_TIMEOUT_MS);
      let finished = false;
      const end = () => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        this.open.delete(socket);
        if (!socket.destroyed) {
          if (rst && socket.readyState === 'open') socket.resetAndDestroy();
          else socket.destroy();
        }
        resolve();
      };
      socket.on('error', (error) => {
        count(stats.errors, short(error));
        end();
      });
      socket.on('close', end);
      let answered = false;
      socket.on('data', (chunk: Buffer) => {
        stats.bytesRead += chunk.length;
        if (answered) return;
        answered = true;
        count(stats.statuses, statusOf(chunk.subarray(0, 32).toString('latin1')) ?? 'not HTTP');
        if (afterHeaders) {
          stats.abandoned++;
          end();
        }
      });
      socket.once('connect', () => {
        socket.write(`GET ${SSE_PATH}?since=0 HTTP/1.1\r\nHost: 127.0.0.1:${node.port}\r\nAccept: text/event-stream\r\n\r\n`, () => {
          if (afterHeaders) return;
          stats.abandoned++;
          end();
        });
      });
    });
  }
}

function sample(values: number[], failed: number, cold: number): LatencySample {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { n: sorted.length, cold, failed, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0 };
}
