/**
 * Server-Sent Events: `GET /api/sync/events`.
 *
 * Each live batch is one event whose `id:` is the log version it brings the
 * client up to, so a reconnecting EventSource resumes exactly where it left
 * off with Last-Event-ID. A consumer that stops reading is not buffered
 * without bound: past `maxBufferedBytes` the stream ends and the client
 * reconnects and catches up from the log.
 */
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

export function openEventStream(options: EventStreamOptions): Response {
  const filter = new EntityFilter(new Set(options.entities), false, options.scope ?? undefined);
  let unsubscribe: (() => void) | null = null;
  let heartbeat: NodeJS.Timeout | null = null;
  let closed = false;

  const close = (controller?: ReadableStreamDefaultController<Uint8Array>) => {
    if (closed) return;
    closed = true;
    unsubscribe?.();
    if (heartbeat) clearInterval(heartbeat);
    try {
      controller?.close();
    } catch {
      // already closed by the consumer
    }
    options.onClose?.();
  };

  const stream = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        const send = (bytes: Uint8Array, live = false) => {
          if (closed) return;
          // desiredSize goes negative once more than maxBufferedBytes wait unread; only unpaced
          // live batches count (catch-up pages wait for room, heartbeats are tiny).
          if (live && (controller.desiredSize ?? 0) < 0) {
            close(controller);
            return;
          }
          controller.enqueue(bytes);
        };
        // `retry` makes EventSource reconnect quickly; the comment opens the stream through proxies.
        send(encoder.encode(`retry: 2000\n: connected version=${options.hub.currentVersion}\n\n`));
        unsubscribe = options.hub.subscribe(
          {
            filter,
            deliver(batch, _version, paced) {
              const frame = frameFor(batch, filter);
              if (frame) send(frame, !paced);
            },
            end: () => close(controller),
            drained: async () => {
              while (!closed && (controller.desiredSize ?? 0) < options.maxBufferedBytes / 2) {
                await new Promise((resolve) => setTimeout(resolve, 5));
              }
            },
          },
          options.since,
        );
        heartbeat = setInterval(() => {
          send(encoder.encode(': ping\n\n'));
          options.stillAuthorized?.().then(
            (ok) => ok || close(controller),
            () => close(controller),
          );
        }, options.heartbeatMs);
        heartbeat.unref();
        options.signal?.addEventListener('abort', () => close(controller), { once: true });
      },
      cancel() {
        close();
      },
    },
    { highWaterMark: options.maxBufferedBytes, size: (chunk) => chunk.byteLength },
  );

  return new Response(stream, {
    status: 200,
    headers: {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      // nginx and some other proxies buffer responses unless told not to.
      'x-accel-buffering': 'no',
    },
  });
}
