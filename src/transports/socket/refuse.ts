/**
 * The one way the engine refuses a WebSocket upgrade on the raw socket (ws's
 * `abortHandshake` plays the same part): the refusal's HTTP status and JSON
 * body, then the socket is closed. It never throws: the client may already
 * have reset the connection, and a refusal must not become a crash.
 */
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { SyncError } from '../../core/errors.js';

/** Swallow socket errors (ECONNRESET, EPIPE) on a socket we are done with or not yet handed to ws. */
export const absorbErrors = (socket: Duplex): void => {
  if (!socket.listeners('error').includes(ignore)) socket.on('error', ignore);
};
const ignore = () => {};

export function refuseUpgrade(socket: Duplex, error: SyncError): void {
  absorbErrors(socket);
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(error.toBody());
  socket.end(
    `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\n` +
      'Content-Type: application/json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
  );
  // A client that never reads the answer must not keep the socket open.
  setTimeout(() => socket.destroy(), 5_000).unref();
}
