/**
 * Bridges Node's `IncomingMessage`/`ServerResponse` and Web `Request`/
 * `Response`, streaming both ways with backpressure (SSE depends on it).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { badRequest, SyncError, toSyncError } from '../core/errors.js';
import { ErrorCode } from '../core/protocol.js';
import type { RequestHead } from './gate.js';
import { absorbErrors, refuseUpgrade } from './socket/refuse.js';
import { claimNodeEventStream, drained } from './sse.js';

/** A `Host` header: a reg-name, IPv4 or bracketed IPv6 address, and an optional port 0–65535. */
const HOST = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::(\d{1,5}))?$/;

/** The request's Host, checked: a malformed one is a 400, never a URL error from deep inside. */
export function requestHost(value: string | undefined): string {
  // HTTP/1.1 requires a Host (RFC 9112 §3.2): without one, a 400 like any other malformed request.
  if (value === undefined || value === '') throw badRequest('missing Host header');
  const match = HOST.exec(value);
  if (!match || (match[2] !== undefined && Number(match[2]) > 65_535)) throw badRequest('malformed Host header');
  return value;
}

const LOOPBACK_ADDRESS = /^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

/** What the Web Request cannot say about the connection it came on: its address, the Node stream of its body, its socket. */
interface Bridged {
  loopback: boolean;
  body?: IncomingMessage;
  socket?: Duplex;
}
const connections = new WeakMap<object, Bridged>();

/** Record the local address a Web Request arrived on (adapters whose framework built the Request). */
export function noteConnection(request: object, localAddress: string | undefined, bridged: Omit<Bridged, 'loopback'> = {}): void {
  connections.set(request, { loopback: localAddress !== undefined && LOOPBACK_ADDRESS.test(localAddress), ...bridged });
}

/**
 * Whether the client that sent `request` is gone: its signal aborted, or, for
 * a request bridged from node:http (which carries no signal: an AbortSignal
 * and the one undici's Request derives from it were most of an idle event
 * stream's memory), its socket closed.
 */
export function abandoned(request: Request): boolean {
  const socket = connections.get(request)?.socket;
  return request.signal.aborted || (socket !== undefined && (socket.destroyed || !socket.writable));
}

/** Whether a request bridged from node:http arrived over a loopback address (false when unknown). */
export function arrivedOverLoopback(request: object): boolean {
  return connections.get(request)?.loopback ?? false;
}

/**
 * The body of a request bridged from node:http, as chunks read straight from
 * its Node stream (the Web Request carries none: a web stream around it cost
 * more than the rest of a one-change push). Leaving the loop early leaves the
 * rest unread: the answer then closes the connection. Undefined for other requests.
 */
export function nodeBody(request: Request): AsyncIterable<Uint8Array> | undefined {
  return connections.get(request)?.body?.iterator({ destroyOnReturn: false });
}

export const tooLarge = (maxBytes: number) => new SyncError(ErrorCode.TooLarge, `request body exceeds ${maxBytes} bytes`, 413);

/**
 * Build a Web Request from a Node request. Its body stays in the Node stream,
 * read by `readBody` (`nodeBody`) under the engine's size limit. Throws a 400
 * SyncError for a malformed Host.
 */
export function toWebRequest(req: IncomingMessage): Request {
  const url = requestUrl(req);
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) headers.append(name, item);
    else headers.set(name, value);
  }
  const method = req.method ?? 'GET';
  let request: Request;
  try {
    request = new Request(url, { method, headers });
  } catch {
    throw badRequest('malformed request target');
  }
  // No signal: the client leaving is `abandoned()` (its socket), and an event stream ends on the response's 'close'.
  noteConnection(request, req.socket?.localAddress, {
    body: method === 'GET' || method === 'HEAD' ? undefined : req,
    socket: req.socket ?? undefined,
  });
  return request;
}

/** Bodies of the engine's own whole (not streamed) responses, written by the Node bridge without reading them back. */
const wholeBodies = new WeakMap<Response, string | Uint8Array>();

/** Note that `response`'s body is `body`, whole: the Node bridge then sends it as it is. */
export function wholeBody(response: Response, body: string | Uint8Array): Response {
  wholeBodies.set(response, body);
  return response;
}

/** The full URL of a Node request; a 400 SyncError for a malformed Host. */
function requestUrl(req: IncomingMessage): string {
  const host = requestHost(req.headers.host);
  const protocol = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  // Express and Fastify may have rewritten req.url when mounted; originalUrl keeps the full path.
  const path = (req as { originalUrl?: string }).originalUrl ?? req.url ?? '/';
  return `${protocol}://${host}${path.startsWith('/') ? path : `/${path}`}`;
}

/**
 * What the gate's host and origin checks read of a Node request, without a
 * Web Request: an upgrade with no authorize hook needs nothing more, and a
 * Request (its Headers, its URL) was most of what a handshake left to collect.
 */
export function requestHead(req: IncomingMessage): RequestHead {
  const url = requestUrl(req);
  try {
    new URL(url);
  } catch {
    throw badRequest('malformed request target');
  }
  const head: RequestHead = {
    url,
    headers: {
      get(name) {
        const value = req.headers[name.toLowerCase()];
        return value === undefined ? null : Array.isArray(value) ? value.join(', ') : value;
      },
    },
  };
  noteConnection(head, req.socket?.localAddress);
  return head;
}

/** Write a Web Response to a Node response, respecting backpressure for streams. */
export async function sendWebResponse(res: ServerResponse, response: Response, req?: IncomingMessage): Promise<void> {
  const method = req?.method ?? 'GET';
  const headers: Record<string, string | string[]> = {};
  response.headers.forEach((value, name) => {
    headers[name] = value;
  });
  // A refused body (too large) was not read to its end: the connection cannot be reused safely.
  if (req && !req.complete && method !== 'GET' && method !== 'HEAD') headers.connection = 'close';
  const setCookies = response.headers.getSetCookie?.();
  if (setCookies && setCookies.length > 0) headers['set-cookie'] = setCookies;
  // The engine's own whole body, unread: sent as it is, with its length (no chunked framing around one chunk).
  const whole = response.bodyUsed ? undefined : wholeBodies.get(response);
  if (whole !== undefined) headers['content-length'] = String(typeof whole === 'string' ? Buffer.byteLength(whole) : whole.byteLength);
  res.writeHead(response.status, headers);
  if (!response.body || method === 'HEAD') {
    res.end();
    return;
  }
  if (whole !== undefined) {
    res.end(whole);
    return;
  }
  const streaming = (response.headers.get('content-type') ?? '').startsWith('text/event-stream');
  if (streaming) {
    res.flushHeaders();
    // The engine's own event streams write straight to the socket.
    if (claimNodeEventStream(response, res)) return;
  }
  const reader = response.body.getReader();
  const onClose = () => void reader.cancel().catch(() => {});
  res.once('close', onClose);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (!res.write(value)) {
        // Wait for the socket to drain; meanwhile the stream's own queue fills and bounds memory.
        await drained(res);
        if (res.destroyed) break;
      }
    }
  } catch {
    // The client went away mid-stream; nothing to report to it.
  } finally {
    res.off('close', onClose);
    if (!res.writableEnded) res.end();
  }
}

/** What the Node bridge needs of the engine: which paths are its, and its Web-standard answer. */
export interface WebHandler {
  matches(pathname: string): boolean;
  handle(request: Request): Promise<Response | null>;
}

/** node:http handler: answers and resolves true for the handler's paths, resolves false for others. */
export function nodeHandler(web: WebHandler): (req: IncomingMessage, res: ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    const path = ((req as { originalUrl?: string }).originalUrl ?? req.url ?? '/').split('?')[0] ?? '/';
    if (!web.matches(path)) return false;
    let request: Request;
    try {
      request = toWebRequest(req);
    } catch (error) {
      // A malformed Host or target: a 400 with a message, never a stack trace.
      await sendWebResponse(res, toSyncError(error).toResponse(), req);
      return true;
    }
    const response = await web.handle(request);
    if (response) await sendWebResponse(res, response, req);
    return response !== null;
  };
}

/** Whatever takes over an upgrade once the engine is running. */
export interface UpgradeTarget {
  owns(request: IncomingMessage): boolean;
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void;
}

/**
 * Take over an upgrade for the engine's paths; returns false for other paths.
 * Whatever the request and whenever the client resets, the answer is a 4xx/5xx
 * on the socket or a WebSocket: nothing here throws.
 */
export function routeUpgrade(
  matches: (pathname: string) => boolean,
  target: () => Promise<UpgradeTarget>,
  onError: (error: unknown) => void,
): (request: IncomingMessage, socket: Duplex, head: Buffer) => boolean {
  return (request, socket, head) => {
    const path = (request.url ?? '').split('?')[0] ?? '';
    if (!matches(path)) return false;
    // Node stops listening for errors on an upgraded socket: a reset before we answer must not crash.
    absorbErrors(socket);
    target()
      .then(
        (endpoint) => {
          if (endpoint.owns(request)) endpoint.handleUpgrade(request, socket, head);
          else refuseUpgrade(socket, new SyncError(ErrorCode.NotFound, `no WebSocket at ${path.slice(0, 100)}`, 404));
        },
        (error: unknown) =>
          refuseUpgrade(socket, error instanceof SyncError ? error : new SyncError(ErrorCode.Unavailable, 'sync engine unavailable', 503)),
      )
      .catch((error: unknown) => {
        onError(error);
        refuseUpgrade(socket, toSyncError(error));
      });
    return true;
  };
}
