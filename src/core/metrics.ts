/**
 * In-process counters the engine keeps for `engine.metrics()` and the
 * Prometheus endpoint. Plain numbers, no dependency: exporters read them.
 */
import type { PushResult } from './protocol.js';

/** Upper bounds (seconds) of the fan-out time histogram. */
export const FANOUT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] as const;

export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly buckets: readonly number[]) {
    this.counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let index = 0; index < this.buckets.length; index++) {
      if (value <= (this.buckets[index] as number)) this.counts[index] = (this.counts[index] as number) + 1;
    }
  }

  /** Approximate quantile from the buckets (upper bound of the bucket holding it). */
  quantile(q: number): number | null {
    if (this.count === 0) return null;
    const target = q * this.count;
    for (let index = 0; index < this.buckets.length; index++) {
      if ((this.counts[index] as number) >= target) return this.buckets[index] as number;
    }
    return Number.POSITIVE_INFINITY;
  }
}

export class SyncMetrics {
  readonly pushOutcomes = { applied: 0, duplicate: 0, conflict: 0, rejected: 0 };
  /** Changes read from the log and handed to live connections. */
  changesFannedOut = 0;
  /** Time to hand one batch to every live connection (encode + socket writes). */
  readonly fanoutSeconds = new Histogram(FANOUT_BUCKETS);
  /** One-second buckets of fanned-out changes over the last 10 s, for a rate without a scraper. */
  private readonly recent: Array<{ second: number; changes: number }> = [];
  /** Exporters that want every observation (the Prometheus histogram). */
  readonly fanoutListeners = new Set<(changes: number, seconds: number) => void>();

  recordPush(results: readonly PushResult[]): void {
    for (const result of results) {
      if (result.duplicate) this.pushOutcomes.duplicate++;
      else this.pushOutcomes[result.status]++;
    }
  }

  recordFanout(changes: number, seconds: number): void {
    this.changesFannedOut += changes;
    this.fanoutSeconds.observe(seconds);
    for (const listener of this.fanoutListeners) listener(changes, seconds);
    const second = Math.floor(Date.now() / 1000);
    const last = this.recent.at(-1);
    if (last && last.second === second) last.changes += changes;
    else this.recent.push({ second, changes });
    while (this.recent.length > 0 && (this.recent[0] as { second: number }).second < second - 10) this.recent.shift();
  }

  /** Changes per second over the last 10 seconds. */
  changesPerSecond(): number {
    const since = Math.floor(Date.now() / 1000) - 10;
    return this.recent.filter((bucket) => bucket.second > since).reduce((sum, bucket) => sum + bucket.changes, 0) / 10;
  }
}

/** What `engine.metrics()` returns. */
export interface MetricsSnapshot {
  connections: { websocket: number; sse: number };
  changesFannedOut: number;
  changesPerSecond: number;
  pushOutcomes: SyncMetrics['pushOutcomes'];
  fanout: { count: number; sumSeconds: number; p50Seconds: number | null; p99Seconds: number | null };
  /** Rows in the change log. */
  logSize: number;
  /** Newest version in the database and newest version this node has fanned out. */
  latestVersion: number;
  fannedOutVersion: number;
  /** How many versions this node is behind the database. */
  lag: number;
  /** Times a live connection fell behind and was caught up from the log instead of being sent more (docs/protocol.md, "Slow consumers"). */
  laggedConsumers: number;
}
