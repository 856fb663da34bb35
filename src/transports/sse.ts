/**
 * Server-Sent Events: `GET /api/sync/events`.
 *
 * Each live batch is one event whose `id:` is the log version it brings the
 * client up to, so a reconnecting EventSource resumes exactly where it left
 * off with Last-Event-ID. That is the batch protocol, which our client
 * declares with `?protocol=2`; a stream that declares nothing is a client of
 * the original crate and gets one `event: sync` per change instead, its data
 * the change itself, its `id:` the cursor after it (@compat). A consumer that stops reading is not buffered
 * without bound: past `maxBufferedBytes` the stream ends and the client
 * reconnects and catches up from the log.
 *
 * The stream writes to a sink. Web-standard adapters (Hono, `engine.fetch`)
 * get a ReadableStream body; the node:http path claims the stream and writes
 * straight to the socket, skipping a web stream per client (the fan-out hot
 * path: one shared frame, one `res.write` per client).
 */
import type { ServerResponse } from 'node:http';
import { type LiveScope, reauthorize } from '../core/access.js';
import type { Authorize, SyncUser } from '../core/config.js';
import {
  behind,
  type ChangeHub,
  type Delivery,
  declaredFraming,
  EntityFilter,
  type Framing,
  type LiveBatch,
  type Subscriber,
} from '../core/hub.js';
import type { LiveSession, LiveSessions } from '../core/sessions.js';

export interface EventStreamOptions {
  hub: ChangeHub;
  entities: string[];
  /** The user the stream opens as, and how a user's view of changes is scoped (null: everyone sees the same). */
  user: SyncUser | null;
  scopeFor: (user: SyncUser | null) => LiveScope | null;
  /** With an authorize hook, the opening request is re-checked on every rights re-check (see LiveSessions). */
  authorize?: Authorize;
  request?: Request;
  sessions: LiveSessions;
  since?: number;
  heartbeatMs: number;
  maxBufferedBytes: number;
  signal?: AbortSignal;
  /** Called once when the stream ends, for connection accounting. */
  onClose?: () => void;
}

/** Where a stream's bytes go. */
interface EventSink {
  write(bytes: Uint8Array): void;
  /** Bytes written but not yet taken by the client. */
  queued(): number;
  /** Resolves when the client has taken bytes (the socket drained), or the sink closed. */
  drain(): Promise<void>;
  end(): void;
}

const encoder = new TextEncoder();

/** The event-stream framings: one unnamed event per batch (`?protocol=2`), or one `event: sync` per change (@compat). */
const SSE_FRAMINGS = {
  batch: { key: 'sse', batch: (message, version) => encoder.encode(`id: ${version}\ndata: ${message}\n\n`) },
  each: {
    key: 'sse-each',
    each: (changes) => encoder.encode(changes.map(({ json, version }) => `id: ${version}\nevent: sync\ndata: ${json}\n\n`).join('')),
  },
} satisfies Record<'batch' | 'each', Framing<Uint8Array>>;

const PING = encoder.encode(': ping\n\n');

/**
 * One timer per heartbeat interval for every open stream, instead of one per
 * stream: a thousand idle streams cost one wake-up per interval.
 */
class Heartbeats {
  private readonly groups = new Map<number, { streams: Set<EventStreamSession>; timer: ReturnType<typeof setInterval> }>();

  add(ms: number, stream: EventStreamSession): () => void {
    let group = this.groups.get(ms);
    if (!group) {
      const streams = new Set<EventStreamSession>();
      const timer = setInterval(() => {
        for (const each of streams) each.ping();
      }, ms);
      timer.unref();
      group = { streams, timer };
      this.groups.set(ms, group);
    }
    group.streams.add(stream);
    return () => {
      const current = this.groups.get(ms);
      if (!current) return;
      current.streams.delete(stream);
      if (current.streams.size === 0) {
        clearInterval(current.timer);
        this.groups.delete(ms);
      }
    };
  }
}

const heartbeats = new Heartbeats();

/** One client's event stream: hub subscription (it is its own subscriber), heartbeats, rights re-checks, slow-consumer bound. */
class EventStreamSession implements LiveSession, Subscriber {
  readonly kind = 'sse';
  user: SyncUser | null;
  filter: EntityFilter;
  private sink: EventSink | null = null;
  private unsubscribe: (() => void) | null = null;
  private stopBeating: (() => void) | null = null;
  private forget: (() => void) | null = null;
  /** The log version the client has been sent up to (a re-scope continues from it). */
  private cursor = 0;
  private closed = false;

  constructor(
    private readonly options: EventStreamOptions,
    /** How live changes are framed: the protocol the stream's URL declared. */
    private readonly framing: Framing<Uint8Array>,
  ) {
    this.user = options.user;
    this.filter = this.filterFor(options.user);
  }

  private filterFor(user: SyncUser | null): EntityFilter {
    return new EntityFilter(new Set(this.options.entities), false, this.options.scopeFor(user) ?? undefined);
  }

  /** Start streaming into `sink`. Called once, by whichever path claims the stream. */
  start(sink: EventSink): void {
    // A client that went away before the stream was claimed (abandoned mid-authorize) costs nothing more.
    if (this.closed || this.options.signal?.aborted) {
      this.close();
      sink.end();
      return;
    }
    this.sink = sink;
    const { options } = this;
    // `retry` makes EventSource reconnect quickly; the comment opens the stream through proxies.
    sink.write(encoder.encode(`retry: 2000\n: connected version=${options.hub.currentVersion}\n\n`));
    this.subscribe(options.since);
    this.stopBeating = heartbeats.add(options.heartbeatMs, this);
    this.forget = options.sessions.add(this);
    options.signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  private subscribe(since: number | undefined): void {
    this.unsubscribe?.();
    this.cursor = since ?? this.options.hub.currentVersion;
    this.unsubscribe = this.options.hub.subscribe(this, since);
  }

  /** Subscriber: a live batch or catch-up page for this stream's filter; a live one is refused while the stream is behind. */
  deliver(batch: LiveBatch, version: number, delivery: Delivery): boolean {
    const frame = batch.framed(this.filter, this.framing);
    if (frame && delivery === 'live' && behind(this.sink?.queued() ?? 0, frame.byteLength, this.options.maxBufferedBytes)) return false;
    this.cursor = version;
    if (frame) this.send(frame);
    return true;
  }

  /** Subscriber: the hub stops, or the rows the client holds no longer match (EventSource reconnects and pulls). */
  end(): void {
    this.close();
  }

  /** Subscriber: resolves once the client has taken enough for the next catch-up page. */
  async drained(): Promise<void> {
    while (!this.closed && this.sink && this.sink.queued() > this.options.maxBufferedBytes / 2) await this.sink.drain();
  }

  ping(): void {
    this.send(PING);
  }

  async recheck(): Promise<void> {
    const { authorize, request } = this.options;
    if (!authorize || !request || this.closed) return;
    let user: SyncUser | null;
    try {
      user = await reauthorize(authorize, request, this.user);
    } catch {
      // EventSource has no close codes: the stream ends, and the reconnect meets the refusal.
      this.close();
      return;
    }
    if (this.closed) return;
    const next = this.filterFor(user);
    this.user = user;
    if (next.key !== this.filter.key) {
      this.filter = next;
      this.subscribe(this.cursor);
    }
  }

  /** Write a frame; `deliver` refuses a live batch before it would take the queue past `maxBufferedBytes`. */
  private send(bytes: Uint8Array): void {
    if (this.closed || !this.sink) return;
    this.sink.write(bytes);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    this.stopBeating?.();
    this.forget?.();
    try {
      this.sink?.end();
    } catch {
      // already closed by the consumer
    }
    this.options.onClose?.();
  }
}

/** Set on event-stream responses so the node:http bridge can claim them (see `claimNodeEventStream`). */
const SESSION = Symbol('rhtmx.eventStream');

/**
 * The event stream for one request. A `?protocol=` it does not know is
 * refused (400) before the stream starts: `onClose` has then run, so the
 * caller's connection slot is given back.
 */
export function openEventStream(options: EventStreamOptions): Response {
  let framing: Framing<Uint8Array>;
  try {
    framing = SSE_FRAMINGS[declaredFraming(options.request ? new URL(options.request.url).searchParams : new URLSearchParams())];
  } catch (error) {
    options.onClose?.();
    throw error;
  }
  // The opening request is kept only to re-run authorize: a Web Request per open stream is memory for nothing otherwise.
  const session = new EventStreamSession(options.authorize ? options : { ...options, request: undefined }, framing);
  let claimed: 'web' | 'node' | null = null;
  let claimWeb: (() => void) | null = null;
  // Resolved by `pull`, which the stream calls when its reader has taken bytes.
  let drainWaiters: Array<() => void> = [];
  const wakeDrainWaiters = () => {
    const waiters = drainWaiters;
    drainWaiters = [];
    for (const resolve of waiters) resolve();
  };
  const stream = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        // Unless the node:http bridge claims the session in this turn, a web consumer reads it.
        return new Promise<void>((resolve) => {
          claimWeb = () => {
            if (!claimed) {
              claimed = 'web';
              session.start({
                write: (bytes) => controller.enqueue(bytes),
                queued: () => options.maxBufferedBytes - (controller.desiredSize ?? 0),
                drain: () => new Promise<void>((wake) => drainWaiters.push(wake)),
                end: () => {
                  wakeDrainWaiters();
                  controller.close();
                },
              });
            }
            resolve();
          };
          setImmediate(() => claimWeb?.());
        });
      },
      pull() {
        wakeDrainWaiters();
      },
      cancel() {
        wakeDrainWaiters();
        if (claimed === 'web') session.close();
      },
    },
    { highWaterMark: options.maxBufferedBytes, size: (chunk) => chunk.byteLength },
  );
  const response = new Response(stream, {
    status: 200,
    headers: {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      // nginx and some other proxies buffer responses unless told not to.
      'x-accel-buffering': 'no',
    },
  });
  (response as unknown as Record<symbol, unknown>)[SESSION] = {
    claim(): EventStreamSession | null {
      if (claimed) return null;
      claimed = 'node';
      return session;
    },
  };
  return response;
}

/**
 * If `response` is an engine event stream not yet read, stream it straight
 * into the node response and return true. Headers must already be written.
 */
export function claimNodeEventStream(response: Response, res: ServerResponse): boolean {
  const handle = (response as unknown as Record<symbol, { claim(): EventStreamSession | null } | undefined>)[SESSION];
  const session = handle?.claim();
  if (!session) return false;
  if (res.destroyed) session.close();
  else res.once('close', () => session.close());
  session.start(new NodeSink(res));
  return true;
}

/** A stream's bytes straight into a node:http response (methods, not closures per stream). */
class NodeSink implements EventSink {
  constructor(private readonly res: ServerResponse) {}
  write(bytes: Uint8Array): void {
    this.res.write(bytes);
  }
  queued(): number {
    return this.res.writableLength;
  }
  drain(): Promise<void> {
    return drained(this.res);
  }
  end(): void {
    this.res.end();
  }
}

/** Resolves once `res` has handed its queued bytes to the socket ('drain'), or is gone. */
export function drained(res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    if (res.destroyed || res.writableLength === 0) return resolve();
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
