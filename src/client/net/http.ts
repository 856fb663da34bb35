/** HTTP requests to the sync routes, and the one error class every refusal becomes (HTTP or WebSocket). */
import type { ErrorBody } from '../../core/protocol.js';

/**
 * Codes that refuse the request itself (retrying cannot help); everything
 * else, and any answer without our JSON error body (a proxy's 404), is
 * retried. A bare 413 is a refusal too: the batch is split until it fits.
 */
const REFUSED = /^(413|bad_request|bad_json|unknown_entity|unknown_column|payload_too_large|json_too_deep|unknown_message)$/;

/**
 * The server said no: an HTTP answer outside 2xx, or a WebSocket `error`
 * reply (`status` 0). Network failures reject with the platform's own errors
 * (TypeError, a timeout) instead. `name` stays `Error`, as before in `rhtmx:sync:error`.
 */
export class SyncHttpError extends Error {
  /** The error body's code (`bad_cursor`, `not_found`...), else the status as text. */
  declare readonly code: string;
  declare readonly status: number;
  declare readonly url: string;
  declare readonly body: ErrorBody | null;

  constructor(url: string, status: number, body: ErrorBody | null) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.url = url;
    this.status = status;
    this.body = body;
    this.code = body?.error?.code ?? String(status);
  }

  /** The error of a non-2xx response, with its JSON error body when it has one. */
  static async fromResponse(response: Response): Promise<SyncHttpError> {
    return new SyncHttpError(response.url, response.status, await response.json().catch(() => null));
  }

  /**
   * The server refused the request itself (a client bug), or a write rule
   * refused one of its changes (a 403 naming the change in `details`): sending
   * it again cannot succeed. A 403 without that (a refused session) is retried.
   */
  get refused(): boolean {
    const details = this.body?.error?.details as { mutation_id?: unknown } | undefined;
    return REFUSED.test(this.code) || (this.code === 'forbidden' && details?.mutation_id !== undefined);
  }
}

/** JSON over HTTP below one base URL: GET without `body`, POST with it. Rejects with a `SyncHttpError` for non-2xx answers. */
export interface Http {
  <T>(path: string, body?: object): Promise<T>;
  /**
   * A streamed GET (docs/protocol.md, "Streamed pull"): each JSON line in
   * turn, or the one JSON body of a server that does not stream. An error
   * line rejects with a `SyncHttpError` (status 0). `signal` ends it.
   * Absent: one page per request.
   */
  lines?<T>(path: string, signal: AbortSignal): AsyncGenerator<T>;
}

/** A request that hangs (a half-open connection), or a stream silent this long, fails. */
const DEADLINE_MS = 60_000;

/**
 * An `Http` for the routes under `base`, over `fetcher` (the soak's network)
 * or the page's current `fetch`.
 */
export const http = (base: string, fetcher?: typeof fetch): Http => {
  /** The answer, and `touch`, which restarts its deadline (`done` clears it). */
  const send = async (path: string, body?: object, outer?: AbortSignal) => {
    const stop = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const touch = () => {
      clearTimeout(timer);
      timer = setTimeout(() => stop.abort(new DOMException('no answer', 'TimeoutError')), DEADLINE_MS);
    };
    const done = () => clearTimeout(timer);
    outer?.addEventListener('abort', () => stop.abort(outer.reason));
    touch();
    try {
      const response = await (fetcher ?? fetch)(base + path, {
        cache: 'no-store',
        signal: stop.signal,
        ...(body && { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
      });
      if (!response.ok) throw await SyncHttpError.fromResponse(response);
      return { response, touch, done, signal: stop.signal };
    } catch (error) {
      done();
      throw error;
    }
  };
  return Object.assign(
    async <T>(path: string, body?: object): Promise<T> => {
      const { response, done } = await send(path, body);
      try {
        return (await response.json()) as T;
      } finally {
        done();
      }
    },
    {
      async *lines<T>(path: string, outer: AbortSignal): AsyncGenerator<T> {
        const { response, touch, done, signal } = await send(path, undefined, outer);
        try {
          if (!/ndjson/.test(response.headers.get('content-type') ?? '')) return yield (await response.json()) as T;
          const reader = (response.body as ReadableStream).pipeThrough(new TextDecoderStream()).getReader();
          // Node 20's fetch leaves a read pending for good when a complete body is aborted: cancel the reader too.
          signal.addEventListener('abort', () => void reader.cancel().catch(() => {}));
          // A line's pieces until its newline comes (joined once: a page is megabytes in many chunks).
          const parts: string[] = [];
          for (;;) {
            const { done: ended, value } = await reader.read();
            if (signal.aborted) throw signal.reason;
            if (ended) return;
            touch();
            let start = 0;
            for (let end = value.indexOf('\n'); end >= 0; start = end + 1, end = value.indexOf('\n', start)) {
              parts.push(value.slice(start, end));
              const line = JSON.parse(parts.join('')) as T & Partial<ErrorBody>;
              parts.length = 0;
              if (line.error) throw new SyncHttpError(response.url, 0, line as ErrorBody);
              yield line as T;
            }
            parts.push(value.slice(start));
          }
        } finally {
          done();
        }
      },
    },
  );
};
