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
export type Http = <T>(path: string, body?: object) => Promise<T>;

/**
 * An `Http` for the routes under `base`, over `fetcher` (the soak's network)
 * or the page's current `fetch`. A request that hangs (a half-open
 * connection) fails after a minute, where `AbortSignal.timeout` exists.
 */
export const http =
  (base: string, fetcher?: typeof fetch): Http =>
  async <T>(path: string, body?: object): Promise<T> => {
    const response = await (fetcher ?? fetch)(base + path, {
      cache: 'no-store',
      signal: AbortSignal.timeout?.(60_000),
      ...(body && { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
    });
    if (!response.ok) throw await SyncHttpError.fromResponse(response);
    return response.json() as Promise<T>;
  };
