/**
 * Noticing committed writes to the log, by anyone: this connection, other
 * connections and other processes alike.
 *
 * The poll reads the log's AUTOINCREMENT counter (one row lookup) rather than
 * `PRAGMA data_version`: data_version changes only for other connections'
 * commits, so it would miss the app's own writes on the engine's connection.
 * The same tick runs `followSchema`: a cheap `PRAGMA schema_version` look
 * that re-introspects the synced tables only when some DDL happened (by
 * anyone, on any connection), see Catalog.refresh.
 */

/** Polls the log's version and calls every watcher when it moved. */
export class LogWatcher {
  private readonly watchers = new Set<() => void>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastSeen = -1;

  constructor(
    private readonly currentVersion: () => number,
    private readonly pollMs: number,
    /** Called first on every tick: follow DDL (it may move the version, which this tick then reports). */
    private readonly followSchema: () => void = () => {},
  ) {}

  /** Call `onChange` soon after any committed write to the log. Returns a stop function. */
  watch(onChange: () => void): () => void {
    this.watchers.add(onChange);
    if (!this.timer) {
      this.lastSeen = this.currentVersion();
      this.timer = setInterval(() => this.poll(), this.pollMs);
      this.timer.unref?.();
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0) this.close();
    };
  }

  private poll(): void {
    let latest: number;
    try {
      this.followSchema();
      latest = this.currentVersion();
    } catch {
      return; // database busy or closing: try again next tick
    }
    if (latest === this.lastSeen) return;
    this.lastSeen = latest;
    for (const watcher of this.watchers) watcher();
  }

  /** Stop polling and forget every watcher. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.watchers.clear();
  }
}
