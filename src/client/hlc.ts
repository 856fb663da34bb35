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
 * A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then random
 * bits, so rows created offline sort by creation time like ids the server
 * makes. `crypto.randomUUID` exists only in secure contexts;
 * `getRandomValues` exists everywhere.
 */
export const uuid = (): string =>
  `${Date.now().toString(16).padStart(12, '0')}7${[...crypto.getRandomValues(new Uint8Array(19))]
    // Nibble 3 of the random part is the variant (10xx).
    .map((byte, index) => (index === 3 ? 8 | (byte & 3) : byte & 15).toString(16))
    .join('')}`.replace(/(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
