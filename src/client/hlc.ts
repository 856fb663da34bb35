/**
 * Client-side hybrid logical clock and random ids.
 *
 * Timestamps use the server's packing (`wallMs * 4096 + counter`, see
 * core/hlc.ts; restated because the client shares only protocol.ts) so they
 * order correctly against server writes: every local timestamp is strictly
 * greater than every one issued or observed before, even if the wall clock
 * steps back.
 */
let last = 0;

/** A fresh timestamp, strictly greater than any issued or observed in this tab. */
export const hlcNow = (): number => (last = Math.max(Date.now() * 4096, last + 1));

/** Fold in a timestamp seen on a server change, so our next write orders after it. */
export const hlcObserve = (remote: unknown): void => {
  if (typeof remote === 'number' && remote > last) last = remote;
};

/**
 * A random RFC 4122 v4 UUID. `crypto.randomUUID` exists only in secure
 * contexts; `getRandomValues` exists everywhere.
 */
export const uuid = (): string =>
  '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
    (+c ^ (crypto.getRandomValues(new Uint8Array(1))[0]! & (15 >> (+c / 4)))).toString(16),
  );
