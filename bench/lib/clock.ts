/**
 * The one clock every benchmark reads, in every process.
 *
 * `process.hrtime` is CLOCK_MONOTONIC on Linux: one system-wide counter, so a
 * receive time taken in a client process and a commit time taken in the
 * server process are on the same timeline (no wall-clock steps, no per-process
 * origin). `checkClock` in proc.ts verifies that at the start of each run.
 */

/** Milliseconds on the machine-wide monotonic clock (fractional, ns resolution). */
export function now(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Sleep without holding the event loop. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
