/**
 * The leader tab's field WebSocket (`/api/field-sync/ws`): pushes
 * (`push_fields` → `push_ack`) and `latest`, each request awaiting its reply
 * by `ref` (rpc.ts). It carries no live feed (values arrive through the
 * entity connection), so it is opened while the entity connection is live
 * and closed when that goes down; when it cannot open, requests go over HTTP.
 */
import type { FieldClientMessage, FieldServerMessage } from '../../core/protocol.js';
import { backoff } from '../net/connection.js';
import { rpc } from '../net/rpc.js';

/** A socket that neither opens nor fails (a proxy swallowing it) is given up after this long. */
const OPEN_MS = 10_000;

/**
 * A field socket to `url`. `onReady` runs when it opens (the server said
 * `hello`) and when it goes away (requests fall back to HTTP): both are
 * moments to flush the field outbox.
 */
export function fieldSocket(url: string, onReady: () => void) {
  let ws: WebSocket | null = null;
  let live = false;
  let wanted = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const calls = rpc<FieldClientMessage, FieldServerMessage>();

  const drop = () => {
    clearTimeout(timer);
    // Its `close` event comes later and finds `ws` moved on.
    ws?.close();
    ws = null;
    live = false;
    calls.close();
  };

  const self = {
    /** The server's field merge strategy, from its `hello`. */
    strategy: undefined as string | undefined,
    /** Open it (and keep reopening it with backoff) unless it is open already. */
    open(): void {
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
        if (message.type !== 'hello') return calls.settle(message);
        clearTimeout(timer);
        live = true;
        attempt = 0;
        self.strategy = message.strategy;
        onReady();
      };
      socket.onclose = () => {
        if (socket !== ws) return;
        drop();
        if (wanted) timer = setTimeout(() => self.open(), backoff(attempt++));
        onReady();
      };
    },
    /** Close it and stop reopening. */
    close(): void {
      wanted = false;
      drop();
    },
    /** Send a request and await its reply (see rpc.ts). Null when the socket is not open. */
    request: (message: FieldClientMessage): Promise<FieldServerMessage | null> | null => (live && ws ? calls.request(ws, message) : null),
  };
  return self;
}
