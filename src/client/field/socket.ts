/**
 * The leader tab's field WebSocket (`/api/field-sync/ws`): pushes
 * (`push_fields` → `push_ack`) and `latest`, each request awaiting its reply
 * by `ref`. It carries no live feed (values arrive through the entity
 * connection), so it is opened while the entity connection is live and
 * closed when that goes down; when it cannot open, requests go over HTTP.
 */

import type { FieldClientMessage, FieldServerMessage } from '../../core/protocol.js';
import { backoff } from '../connection.js';

/** How long a request waits for its reply before it counts as a network failure. */
const REPLY_MS = 15_000;
/** A socket that neither opens nor fails (a proxy swallowing it) is given up after this long. */
const OPEN_MS = 10_000;

/** The leader's handle on its field WebSocket. */
export interface FieldSocket {
  /** Open it (and keep reopening it with backoff) unless it is open already; `onReady` runs once it is usable. */
  open(): void;
  /** Close it and stop reopening. */
  close(): void;
  /** Send a request and await its reply (null: no reply, a network failure). Null when the socket is not open. */
  request(message: FieldClientMessage): Promise<FieldServerMessage | null> | null;
  /** The server's field merge strategy, from its `hello`. */
  strategy?: string;
}

/**
 * A field socket to `url`. `onReady` runs when it opens (the server said
 * `hello`) and when it goes away (requests fall back to HTTP): both are
 * moments to flush the field outbox.
 */
export function fieldSocket(url: string, onReady: () => void): FieldSocket {
  let ws: WebSocket | null = null;
  let live = false;
  let wanted = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let nextRef = 0;
  const waiting = new Map<number, (reply: FieldServerMessage | null) => void>();

  const drop = () => {
    clearTimeout(timer);
    const old = ws;
    ws = null;
    live = false;
    old?.close();
    for (const settle of waiting.values()) settle(null);
    waiting.clear();
  };

  const self: FieldSocket = {
    open() {
      wanted = true;
      if (ws) {
        if (live) onReady();
        return;
      }
      const socket = new WebSocket(url);
      ws = socket;
      timer = setTimeout(() => socket.close(), OPEN_MS);
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data) as FieldServerMessage;
        if (message.type === 'hello') {
          clearTimeout(timer);
          live = true;
          attempt = 0;
          self.strategy = message.strategy;
          onReady();
        } else if ('ref' in message) {
          waiting.get(message.ref as number)?.(message);
          waiting.delete(message.ref as number);
        }
      };
      socket.onclose = () => {
        if (socket !== ws) return;
        drop();
        if (wanted) timer = setTimeout(() => self.open(), backoff(attempt++));
        onReady();
      };
    },
    close() {
      wanted = false;
      drop();
    },
    request(message) {
      const socket = ws;
      if (!live || !socket) return null;
      const ref = ++nextRef;
      return new Promise((resolve) => {
        const timeout = setTimeout(() => {
          waiting.delete(ref);
          resolve(null);
        }, REPLY_MS);
        waiting.set(ref, (reply) => {
          clearTimeout(timeout);
          resolve(reply);
        });
        socket.send(JSON.stringify({ ...message, ref }));
      });
    },
  };
  return self;
}
