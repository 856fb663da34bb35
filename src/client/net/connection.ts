/**
 * The leader tab's server connection: WebSocket first, SSE when the
 * WebSocket cannot open, and an HTTP catch-up pull on every (re)connect
 * before live delivery starts, so nothing that happened while disconnected
 * is missed. Reconnects back off exponentially with full jitter, so a server
 * restart is not followed by every client reconnecting in the same second.
 */
import type { BATCH_QUERY, ClientMessage, LiveChangeMessage, ServerMessage } from '../../core/protocol.js';
import { rpc } from './rpc.js';

/** What `rhtmx:connection:state` reports. */
export type ConnectionState = 'connecting' | 'websocket' | 'sse' | 'offline';

/** Full jitter: uniform in [0, min(30 s, 0.5 s × 2^attempt)). */
export const backoff = (attempt: number): number => Math.random() * Math.min(30_000, 500 * 2 ** attempt);

/** App-level ping interval; a socket silent for `DEAD_MS` is given up and replaced. */
const PING_MS = 20_000;
const DEAD_MS = 50_000;

/** What the connection needs from the client. */
export interface ConnectionOptions {
  /** Sync base URL, e.g. `https://app.example/api/sync`. */
  base: string;
  useWebSocket: boolean;
  entities(): string[];
  /** Pull every entity over HTTP; resolves with the lowest cursor to resume live delivery from. */
  catchUp(): Promise<number>;
  onChange(message: LiveChangeMessage): void;
  onState(state: ConnectionState): void;
}

/** The leader's handle on its server connection. */
export interface Connection {
  /** Send a request on the subscribed WebSocket and await its reply (see rpc.ts). Null when no socket is live. */
  request(message: ClientMessage): Promise<ServerMessage | null> | null;
  /** Drop the connection and connect again now (entities changed, back online). */
  restart(): void;
}

/** Connect now and keep reconnecting (and following `online`/`offline`) for the tab's life. */
export function connect(options: ConnectionOptions): Connection {
  let socket: WebSocket | null = null;
  let source: EventSource | null = null;
  /** The socket is subscribed: requests may use it. */
  let live = false;
  let useWebSocket = options.useWebSocket;
  let attempt = 0;
  /** Bumped on every (re)connect, so late callbacks of an abandoned attempt do nothing. */
  let generation = 0;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let pingTimer: ReturnType<typeof setInterval> | undefined;
  const calls = rpc<ClientMessage, ServerMessage>();

  const drop = () => {
    generation++;
    clearTimeout(retryTimer);
    clearInterval(pingTimer);
    // Late events of the old socket or stream find `generation` moved on and do nothing.
    socket?.close();
    source?.close();
    socket = source = null;
    live = false;
    calls.close();
  };

  const retry = () => {
    drop();
    options.onState('offline');
    retryTimer = setTimeout(start, backoff(attempt++));
  };

  const start = () => {
    drop();
    // The `online` event restarts us.
    if (!navigator.onLine) return options.onState('offline');
    options.onState('connecting');
    const current = generation;
    if (useWebSocket) openSocket(current);
    else void openEvents(current);
  };

  const openSocket = (current: number) => {
    // The batch protocol's declaration (core/protocol.ts BATCH_QUERY, checked by type: a value import would pull
    // protocol.ts's other constants into the bundle). Without it the server sends one change per message.
    const ws = new WebSocket(`${options.base.replace(/^http/, 'ws')}/ws?${'protocol=2' satisfies typeof BATCH_QUERY}`);
    socket = ws;
    let opened = false;
    let heard = Date.now();
    const fail = () => {
      // Refused, blocked or swallowed before it ever opened: try SSE next time.
      if (!opened) useWebSocket = false;
      retry();
    };
    ws.onopen = async () => {
      opened = true;
      try {
        const since = await options.catchUp();
        if (current === generation) ws.send(JSON.stringify({ type: 'subscribe', entities: options.entities(), since }));
      } catch {
        if (current === generation) retry();
      }
    };
    ws.onmessage = (event) => {
      // A socket we have let go of may still deliver: its batches must not move cursors any more.
      if (current !== generation) return;
      heard = Date.now();
      const message = JSON.parse(event.data) as ServerMessage;
      if (message.type === 'change') options.onChange(message);
      else if (message.type === 'subscribed') {
        live = true;
        attempt = 0;
        options.onState('websocket');
      } else calls.settle(message);
    };
    ws.onclose = () => {
      if (current === generation) fail();
    };
    pingTimer = setInterval(() => {
      // A half-open TCP connection never fires `close`: silence is the only sign.
      if (Date.now() - heard > DEAD_MS) fail();
      else if (opened) ws.send(JSON.stringify({ type: 'ping', t: Date.now() }));
    }, PING_MS);
  };

  const openEvents = async (current: number) => {
    let since: number;
    try {
      since = await options.catchUp();
    } catch {
      if (current === generation) retry();
      return;
    }
    if (current !== generation) return;
    const es = new EventSource(
      `${options.base}/events?${'protocol=2' satisfies typeof BATCH_QUERY}&entities=${encodeURIComponent(options.entities().join(','))}&since=${since}`,
    );
    source = es;
    let opened = false;
    es.onopen = () => {
      // EventSource reconnected by itself (resuming with Last-Event-ID); pull anyway in case the log was pruned.
      if (opened) options.catchUp().catch(() => {});
      opened = true;
      attempt = 0;
      options.onState('sse');
    };
    es.onmessage = (event) => {
      if (current === generation) options.onChange(JSON.parse(event.data) as LiveChangeMessage);
    };
    es.onerror = () => {
      if (current !== generation) return;
      if (es.readyState !== EventSource.CLOSED) return options.onState('connecting');
      // SSE never worked either: the next attempt tries the WebSocket again.
      if (!opened) useWebSocket = options.useWebSocket;
      retry();
    };
  };

  const online = () => {
    attempt = 0;
    start();
  };
  addEventListener('online', online);
  addEventListener('offline', () => {
    drop();
    options.onState('offline');
  });
  start();

  return {
    request: (message) => (live && socket ? calls.request(socket, message) : null),
    restart: online,
  };
}
