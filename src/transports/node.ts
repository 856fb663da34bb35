/**
 * Bridges Node's `IncomingMessage`/`ServerResponse` and Web `Request`/
 * `Response`, streaming both ways with backpressure (SSE depends on it).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { claimNodeEventStream } from './sse.js';

/** Build a Web Request from a Node request. The body stays a stream: the engine enforces its size limit. */
export function toWebRequest(req: IncomingMessage, res?: ServerResponse): Request {
  const host = req.headers.host ?? 'localhost';
  const protocol = (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  // Express and Fastify may have rewritten req.url when mounted; originalUrl keeps the full path.
  const path = (req as { originalUrl?: string }).originalUrl ?? req.url ?? '/';
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) headers.append(name, item);
    else headers.set(name, value);
  }
  const controller = new AbortController();
  // 'close' on the response fires when the client goes away (SSE ends there).
  (res ?? req).once('close', () => controller.abort());
  const method = req.method ?? 'GET';
  const init: RequestInit & { duplex?: 'half' } = { method, headers, signal: controller.signal };
  if (method !== 'GET' && method !== 'HEAD') {
    init.body = Readable.toWeb(req) as unknown as ReadableStream<Uint8Array>;
    init.duplex = 'half';
  }
  return new Request(`${protocol}://${host}${path}`, init);
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
  res.writeHead(response.status, headers);
  if (!response.body || method === 'HEAD') {
    res.end();
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
        await new Promise<void>((resolve) => {
          const resume = () => {
            res.off('drain', resume);
            res.off('close', resume);
            resolve();
          };
          res.once('drain', resume);
          res.once('close', resume);
        });
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
