import { type ErrorBody, ErrorCode } from './protocol.js';

/**
 * Every refusal the engine makes, on every edge. It carries the HTTP status
 * and a stable code, and serializes itself: `toResponse()` is the HTTP answer
 * (its body, `toBody()`, also answers a refused upgrade), `toMessage()` the
 * `error` message of a socket. No transport words a refusal of its own.
 */
export class SyncError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly status = 400,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'SyncError';
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { error: { code: this.code, message: this.message } };
    if (this.details !== undefined) body.error.details = this.details;
    return body;
  }

  /** The HTTP answer: the status and the JSON body (Web `Response`, so any runtime serves it). */
  toResponse(): Response {
    return new Response(JSON.stringify(this.toBody()), {
      status: this.status,
      headers: { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' },
    });
  }

  /** The socket `error` message, echoing the request's `ref`; `details` as in the HTTP body. */
  toMessage(ref?: string | number): SocketErrorMessage {
    const message: SocketErrorMessage = { type: 'error', code: this.code, message: this.message };
    if (this.details !== undefined) message.details = this.details;
    if (ref !== undefined) message.ref = ref;
    return message;
  }
}

/** A refusal on a socket: the HTTP body's fields, flat, plus the request's `ref`. */
export interface SocketErrorMessage {
  type: 'error';
  code: ErrorCode;
  message: string;
  details?: unknown;
  ref?: string | number;
}

/** 400 Bad Request. */
export const badRequest = (message: string, details?: unknown) => new SyncError(ErrorCode.BadRequest, message, 400, details);

/** Wraps anything thrown into a SyncError, hiding internals (SQL text) from clients. */
export function toSyncError(error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError(ErrorCode.Internal, 'internal error', 500);
}
