/**
 * Request and reply over a WebSocket: each request carries a fresh `ref`
 * that the server echoes in its reply. No reply in time, or a socket that
 * closes, settles with null: the caller retries as after a network failure.
 */
import { SyncHttpError } from './http.js';

/** The pending requests of one socket at a time; replies later than `timeoutMs` count as lost. */
export function rpc<Request extends object, Reply extends { type: string }>(timeoutMs = 15_000) {
  const pending = new Map<unknown, (reply: Reply | null) => void>();
  let ref = 0;
  return {
    /**
     * Send `message` on `socket` (the browser's WebSocket, or `ws` in Node) and await its reply: null when
     * none came in time or the socket went away; an `error` reply rejects with a `SyncHttpError` (status 0).
     */
    request(socket: { url: string; send(data: string): void }, message: Request): Promise<Reply | null> {
      const id = ++ref;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => pending.get(id)?.(null), timeoutMs);
        pending.set(id, (reply) => {
          clearTimeout(timer);
          pending.delete(id);
          if (reply?.type === 'error')
            reject(new SyncHttpError(socket.url, 0, { error: reply as unknown as { code: string; message: string } }));
          else resolve(reply);
        });
        socket.send(JSON.stringify({ ...message, ref: id }));
      });
    },
    /** Hand over a received message: the reply to a pending request settles it, anything else is ignored. */
    settle(message: Reply): void {
      pending.get((message as { ref?: unknown }).ref)?.(message);
    },
    /** The socket is gone: every pending request settles with null. */
    close(): void {
      for (const settle of pending.values()) settle(null);
    },
  };
}

/** A push's results: from the socket's `push_ack` when it went out on a socket (`reply` not null), else from `post` (HTTP). */
export async function pushResults<R>(
  reply: Promise<{ type: string; results?: R[] } | null> | null,
  post: () => Promise<{ results: R[] }>,
): Promise<R[]> {
  const answer = reply ? await reply : await post();
  if (answer?.results) return answer.results;
  throw new Error('no reply');
}
