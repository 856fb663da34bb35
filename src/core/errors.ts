import { type ErrorBody, ErrorCode } from './protocol.js';

/**
 * Every refusal the engine makes. It carries the HTTP status and a stable
 * code so transports can turn it into a 4xx JSON body or a WebSocket `error`
 * message without guessing.
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
}

/** 400 Bad Request. */
export const badRequest = (message: string, details?: unknown) => new SyncError(ErrorCode.BadRequest, message, 400, details);

/** Wraps anything thrown into a SyncError, hiding internals (SQL text) from clients. */
export function toSyncError(error: unknown): SyncError {
  if (error instanceof SyncError) return error;
  return new SyncError(ErrorCode.Internal, 'internal error', 500);
}
