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
 *
 * A write by another process wakes the server at once: every commit (ours
 * or anyone's) writes the WAL file, so a watch on its directory (inotify,
 * FSEvents, ReadDirectoryChangesW: fs.watch) runs the same tick on the next
 * turn of the event loop, however many events one commit makes, and once
 * more 5 ms after the last of them (the event can come before the commit
 * shows in the WAL index, and nothing else would wake us for it). The poll
 * stays as the safety net: file events can be missed, coalesced or
 * unavailable (network file systems, no inotify watches left).
 */
import { type FSWatcher, watch } from 'node:fs';
import { basename, dirname } from 'node:path';

/** After the last WAL event of a burst, one more tick this much later, ms. */
const TRAILING_MS = 5;

/** Polls the log's version and calls every watcher when it moved. */
export class LogWatcher {
  private readonly watchers = new Set<() => void>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private files: FSWatcher | null = null;
  private soon: ReturnType<typeof setImmediate> | null = null;
  private trailing: ReturnType<typeof setTimeout> | undefined;
  private lastSeen = -1;

  constructor(
    private readonly currentVersion: () => number,
    private readonly pollMs: number,
    /** Called first on every tick: follow DDL (it may move the version, which this tick then reports). */
    private readonly followSchema: () => void = () => {},
    /** The WAL file whose changes run a tick at once (none: in-memory or rollback-journal databases). */
    private readonly walFile: string | null = null,
  ) {}

  /** Call `onChange` soon after any committed write to the log. Returns a stop function. */
  watch(onChange: () => void): () => void {
    this.watchers.add(onChange);
    if (!this.timer) {
      this.lastSeen = this.currentVersion();
      this.timer = setInterval(() => this.poll(), this.pollMs);
      this.timer.unref?.();
      this.watchFile();
    }
    return () => {
      this.watchers.delete(onChange);
      if (this.watchers.size === 0) this.close();
    };
  }

  /** Watch the WAL's directory (the file itself may not exist yet, and a checkpoint may recreate it). */
  private watchFile(): void {
    if (!this.walFile) return;
    const name = basename(this.walFile);
    try {
      this.files = watch(dirname(this.walFile), { persistent: false }, (_event, changed) => {
        if (changed !== null && changed !== name) return;
        this.soon ??= setImmediate(() => {
          this.soon = null;
          this.poll();
        });
        // The event comes with the commit's frames, a moment before the commit shows in the WAL index:
        // a tick right after the last event of a burst sees it, whichever the first tick missed.
        clearTimeout(this.trailing);
        this.trailing = setTimeout(() => this.poll(), TRAILING_MS);
        this.trailing.unref?.();
      });
      // No watch (limits, an unsupported file system): the poll alone notices writes.
      this.files.on('error', () => this.unwatchFile());
    } catch {
      this.files = null;
    }
  }

  private unwatchFile(): void {
    this.files?.close();
    this.files = null;
    if (this.soon) clearImmediate(this.soon);
    this.soon = null;
    clearTimeout(this.trailing);
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

  /** Stop polling and watching, and forget every watcher. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.unwatchFile();
    this.watchers.clear();
  }
}
