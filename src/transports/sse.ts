/**
 * Server-Sent Events: `GET /api/sync/events`.
 *
 * Each live batch is one event whose `id:` is the log version it brings the
 * client up to, so a reconnecting EventSource resumes exactly where it left
 * off with Last-Event-ID. A consumer that stops reading is not buffered
 * without bound: past `maxBufferedBytes` the stream ends and the client
 * reconnects and catches up from the log.
 *
 * The stream writes to a sink. Web-standard adapters (Hono, `engine.fetch`)
 * get a ReadableStream body; the node:http path claims the stream and writes
 * straight to the socket, skipping a web stream per client (the fan-out hot
 * path: one shared frame, one `res.write` per client).
 */
import type { ServerResponse } from 'node:http';
import { type ChangeHub, EntityFilter, type LiveBatch } from '../core/hub.js';
import type { Change } from '../core/protocol.js';

export interface EventStreamOptions {
  hub: ChangeHub;
  entities: string[];
  /** The user's view of changes when read scopes apply. */
  scope?: { key: string; apply: (change: Change) => Change } | null;
  since?: number;
  heartbeatMs: number;
  maxBufferedBytes: number;
  signal?: AbortSignal;
  /** Called once when the stream ends, for connection accounting. */
  onClose?: () => void;
  /** Re-checked at every heartbeat: a stream whose session ended is closed. */
  stillAuthorized?: () => Promise<boolean>;
}

/** Where a stream's bytes go. */
interface EventSink {
  write(bytes: Uint8Array): void;
  /** Bytes written but not yet taken by the client. */
  queued(): number;
  end(): void;
}

const encoder = new TextEncoder();
/** Encoded SSE frames per batch and filter, so N clients cost one encode. */
const frameCache = new WeakMap<LiveBatch, Map<string, Uint8Array | null>>();

function frameFor(batch: LiveBatch, filter: EntityFilter): Uint8Array | null {
  let frames = frameCache.get(batch);
  if (!frames) {
    frames = new Map();
    frameCache.set(batch, frames);
  }
  let frame = frames.get(filter.key);
  if (frame === undefined) {
    const message = batch.messageFor(filter);
    frame = message === null ? null : encoder.encode(`id: ${batch.version}\ndata: ${message}\n\n`);
    frames.set(filter.key, frame);
  }
  return frame;
}

const PING = encoder.encode(': ping\n\n');

/** One client's event stream: hub subscription, heartbeats, slow-consumer bound. */
class EventStreamSession {
  private readonly filter: EntityFilter;
  private sink: EventSink | null = null;
  private unsubscribe: (() => void) | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly options: EventStreamOptions) {
    this.filter = new EntityFilter(new Set(options.entities), false, options.scope ?? undefined);
  }

  /** Start streaming into `sink`. Called once, by whichever path claims the stream. */
  start(sink: EventSink): void {
    if (this.closed) {
      sink.end();
      return;
    }
    this.sink = sink;
    const { options, filter } = this;
    // `retry` makes EventSource reconnect quickly; the comment opens the stream through proxies.
    sink.write(encoder.encode(`retry: 2000\n: connected version=${options.hub.currentVersion}\n\n`));
    this.unsubscribe = options.hub.subscribe(
      {
        filter,
        deliver: (batch, _version, paced) => {
          const frame = frameFor(batch, filter);
          if (frame) this.send(frame, !paced);
        },
        end: () => this.close(),
        drained: async () => {
          while (!this.closed && sink.queued() > options.maxBufferedBytes / 2) {
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        },
      },
      options.since,
    );
    this.heartbeat = setInterval(() => {
      this.send(PING);
      options.stillAuthorized?.().then(
        (ok) => ok || this.close(),
        () => this.close(),
      );
    }, options.heartbeatMs);
    this.heartbeat.unref();
    options.signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  /**
   * Only unpaced live batches count against the buffer limit: catch-up pages
   * wait for room, heartbeats are tiny.
   */
  private send(bytes: Uint8Array, live = false): void {
    const sink = this.sink;
    if (this.closed || !sink) return;
    if (live && sink.queued() > this.options.maxBufferedBytes) {
      this.close();
      return;
    }
    sink.write(bytes);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    if (this.heartbeat) clearInterval(this.heartbeat);
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

export function openEventStream(options: EventStreamOptions): Response {
  const session = new EventStreamSession(options);
  let claimed: 'web' | 'node' | null = null;
  let claimWeb: (() => void) | null = null;
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
                end: () => controller.close(),
              });
            }
            resolve();
          };
          setImmediate(() => claimWeb?.());
        });
      },
      cancel() {
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
  res.once('close', () => session.close());
  session.start({
    write: (bytes) => {
      res.write(bytes);
    },
    queued: () => res.writableLength,
    end: () => res.end(),
  });
  return true;
}
