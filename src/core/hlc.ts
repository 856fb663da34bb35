/**
 * Hybrid logical clock packed into one JavaScript number:
 * `wallMilliseconds * 4096 + counter`. Comparable with `<`, exact below 2^53
 * until the year 2248, and cheap to store in an INTEGER column.
 *
 * Why: last-write-wins on raw client wall clocks silently drops writes when a
 * clock is skewed. The server keeps one HLC, folds in what clients send, and
 * never accepts a client timestamp from the future (beyond `maxDriftMs`).
 */
export const HLC_COUNTER_SPAN = 4096;

/** Pack wall-clock milliseconds and a counter. */
export const packHlc = (wallMs: number, counter = 0): number => wallMs * HLC_COUNTER_SPAN + counter;
/** Wall-clock milliseconds of a packed HLC. */
export const hlcWallMs = (hlc: number): number => Math.floor(hlc / HLC_COUNTER_SPAN);

export class HybridClock {
  private last = 0;

  constructor(
    private readonly wallClock: () => number = Date.now,
    /** How far ahead of the server's clock a client timestamp may be before it is clamped. */
    readonly maxDriftMs = 1_000,
  ) {}

  /** A fresh timestamp, strictly greater than every one issued or received before. */
  now(): number {
    const physical = packHlc(this.wallClock());
    this.last = Math.max(physical, this.last + 1);
    return this.last;
  }

  /**
   * Fold a remote timestamp in and return the value to order the remote event
   * by: the remote time clamped to `now + maxDrift`, so a client whose clock
   * runs ahead cannot win every conflict for hours.
   */
  receive(remote: number): number {
    const ceiling = packHlc(this.wallClock() + this.maxDriftMs);
    const clamped = Math.min(remote, ceiling);
    this.last = Math.max(this.last, clamped);
    return clamped;
  }
}

/**
 * Convert what a client sent as `timestamp` into an HLC number: packed HLC
 * numbers pass through, epoch milliseconds and ISO strings (the original crate's shape)
 * become HLCs with counter 0. Returns null for anything unusable.
 */
export function parseClientTimestamp(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) return null;
    // Below 1e14 it can only be epoch ms (1e14 ms is year 5138); above, a packed HLC.
    return value < 1e14 ? packHlc(Math.floor(value)) : Math.floor(value);
  }
  if (typeof value === 'string') {
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : packHlc(ms);
  }
  return null;
}
