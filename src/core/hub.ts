/**
 * ChangeHub: one in-process fan-out point between a change log and every
 * live connection (SSE streams and WebSockets), whatever transport. The
 * engine runs one over the entity change log (`change` messages) and field
 * sync runs one over field changes (`field_change` messages).
 *
 * The hub reads the log once per wake-up and hands the same batch to every
 * subscriber; the JSON of a batch is encoded once per distinct entity filter,
 * not once per client. Each subscriber keeps its own cursor: one that falls
 * behind (it joined with an old cursor, or the hub skipped it) is caught up
 * from the log before it goes live again, so no change is lost or repeated.
 */
import type { Change } from './protocol.js';
import type { Store } from './store.js';
import { tracedSync } from './tracing.js';

/** What a hub fans out: anything with an entity and a log version. */
export interface Versioned {
  entity: string;
  version: number;
}

/** Where a hub reads from and what it is woken by. */
export interface ChangeSource<T extends Versioned> {
  /** The `type` of the messages this hub sends (`change`, `field_change`). */
  messageType: string;
  currentVersion(): Promise<number>;
  /** Changes with `version > since`, at most `limit`, and the cursor after them. */
  read(since: number, limit: number): Promise<{ changes: T[]; version: number; hasMore: boolean }>;
  /** Call `onChange` after any committed write; returns a stop function. */
  watch(onChange: () => void): () => void;
}

/** The entity change log of a store as a hub source. */
export function storeSource(store: Store): ChangeSource<Change> {
  return {
    messageType: 'change',
    currentVersion: () => store.currentVersion(),
    read: (since, limit) => store.readLog(since, limit),
    watch: (onChange) => store.watch(onChange),
  };
}

/** A batch of consecutive log entries `(from, version]`. */
export class LiveBatch<T extends Versioned = Change> {
  private readonly encoded = new Map<string, string | null>();

  constructor(
    /** Every change with a version in (from, version] is in `changes` (for all entities). */
    readonly from: number,
    readonly version: number,
    readonly changes: readonly T[],
    readonly messageType = 'change',
  ) {}

  /**
   * The `change` message for one entity filter, encoded once and shared by
   * every subscriber with that filter; null when nothing in it concerns them.
   */
  messageFor(filter: EntityFilter): string | null {
    const cached = this.encoded.get(filter.key);
    if (cached !== undefined) return cached;
    let changes = filter.all ? this.changes : this.changes.filter((change) => filter.entities.has(change.entity));
    const scope = filter.scope;
    // Scopes exist only for entity changes (field sync refuses read-scoped entities).
    if (scope) changes = changes.map((change) => scope.apply(change as unknown as Change) as unknown as T);
    let text: string | null = null;
    if (changes.length > 0) {
      // The shape of LiveChangeMessage and FieldChangeMessage alike; `change` is the seed's single-change field.
      const message: { type: string; version: number; changes: readonly T[]; change?: T } = {
        type: this.messageType,
        version: this.version,
        changes,
      };
      if (changes.length === 1) message.change = changes[0];
      text = JSON.stringify(message);
    }
    this.encoded.set(filter.key, text);
    return text;
  }
}

/**
 * Which entities a subscriber wants, and how a change looks to its user when
 * read scopes apply. `key` identifies equal filters: subscribers with the same
 * key share one encoding of each batch.
 */
export class EntityFilter {
  readonly key: string;
  constructor(
    readonly entities: ReadonlySet<string>,
    readonly all = false,
    /** Per-user view of a change (read scopes); absent when every user sees the same. */
    readonly scope?: { key: string; apply: (change: Change) => Change },
  ) {
    const entityKey = all ? '*' : [...entities].sort().join(',');
    this.key = scope ? `${entityKey}|${scope.key}` : entityKey;
  }
}

/** What a transport gives the hub for one connection. */
export interface Subscriber<T extends Versioned = Change> {
  filter: EntityFilter;
  /**
   * Deliver one batch; `version` is the cursor after it. `paced` is true for
   * catch-up pages, which wait on `drained()` and so must not count as a
   * consumer falling behind.
   */
  deliver(batch: LiveBatch<T>, version: number, paced: boolean): void;
  /** Called when the hub stops (engine closing): end the connection so servers can close. */
  end?(): void;
  /**
   * Resolves when the consumer can take more. Catch-up waits on it between
   * pages, so replaying a long log to one client is paced by that client
   * instead of piling up in memory (live batches are not paced: a live
   * consumer that falls behind is dropped and catches up this way).
   */
  drained?(): Promise<void>;
}

interface SubscriberState<T extends Versioned> {
  subscriber: Subscriber<T>;
  cursor: number;
  catchingUp: boolean;
  closed: boolean;
}

/** How long writes arriving right after a fan-out are gathered before the next one, ms. */
const COALESCE_MS = 1;

export interface HubOptions {
  /** Log entries read per wake-up. */
  pageSize?: number;
  onError?: (error: unknown) => void;
  /** Called after each live batch reached every subscriber (metrics). */
  onPublished?: (changes: number, seconds: number) => void;
}

export class ChangeHub<T extends Versioned = Change> {
  private readonly subscribers = new Set<SubscriberState<T>>();
  private version = 0;
  private reading = false;
  private wakeAgain = false;
  /** When the last live batch finished going out (performance.now()). */
  private publishedAt = Number.NEGATIVE_INFINITY;
  /** Pending drain while writes are gathered into one batch. */
  private gathering: ReturnType<typeof setTimeout> | null = null;
  private stopWatching: (() => void) | null = null;
  /** Set by stop(): a read still in flight then ends quietly (the store may be closing under it). */
  private stopped = false;
  private readonly pageSize: number;
  private readonly onError: (error: unknown) => void;
  private readonly onPublished: (changes: number, seconds: number) => void;
  /** Resolvers waiting for the hub to reach a version (tests and push acks). */
  private waiters: Array<{ version: number; resolve: () => void }> = [];

  constructor(
    private readonly source: ChangeSource<T>,
    options: HubOptions = {},
  ) {
    this.pageSize = options.pageSize ?? 1000;
    this.onError = options.onError ?? (() => {});
    this.onPublished = options.onPublished ?? (() => {});
  }

  /** Start following the log from its current end. */
  async start(): Promise<void> {
    this.version = await this.source.currentVersion();
    this.stopWatching = this.source.watch(() => this.wake());
  }

  /** The highest version fanned out so far. */
  get currentVersion(): number {
    return this.version;
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /**
   * Register a live consumer. With `since`, it first receives every change
   * after that version from the log, then goes live without a gap.
   */
  subscribe(subscriber: Subscriber<T>, since?: number): () => void {
    const state: SubscriberState<T> = { subscriber, cursor: since ?? this.version, catchingUp: false, closed: false };
    this.subscribers.add(state);
    if (state.cursor < this.version) void this.catchUp(state);
    return () => {
      state.closed = true;
      this.subscribers.delete(state);
    };
  }

  /** Something was written: read the log and fan out. Safe to call often. */
  wake(): void {
    if (this.stopped) return;
    if (this.reading) {
      this.wakeAgain = true;
      return;
    }
    if (this.gathering) return;
    // A write landing within COALESCE_MS of the last fan-out waits for the rest of that window, so a
    // stream of small transactions costs one send per client per window, not one per row. A write
    // after a quiet moment goes out at once.
    const wait = this.publishedAt + COALESCE_MS - performance.now();
    if (wait > 0) {
      this.gathering = setTimeout(() => {
        this.gathering = null;
        void this.drain();
      }, wait);
      return;
    }
    void this.drain();
  }

  /** Resolves once the hub has fanned out everything up to `version`. */
  reached(version: number): Promise<void> {
    if (this.version >= version) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ version, resolve }));
  }

  private async drain(): Promise<void> {
    this.reading = true;
    try {
      do {
        this.wakeAgain = false;
        const page = await this.source.read(this.version, this.pageSize);
        if (this.stopped) return;
        if (page.version > this.version) {
          const batch = new LiveBatch(this.version, page.version, page.changes, this.source.messageType);
          this.version = page.version;
          const started = performance.now();
          tracedSync('fanout', { type: this.source.messageType, changes: batch.changes.length, subscribers: this.subscribers.size }, () =>
            this.publish(batch),
          );
          this.publishedAt = performance.now();
          this.onPublished(batch.changes.length, (this.publishedAt - started) / 1000);
          if (page.hasMore) this.wakeAgain = true;
        }
      } while (this.wakeAgain && !this.stopped);
    } catch (error) {
      if (!this.stopped) this.onError(error);
    } finally {
      this.reading = false;
      this.releaseWaiters();
    }
  }

  private releaseWaiters(): void {
    if (this.waiters.length === 0) return;
    const due = this.waiters.filter((waiter) => waiter.version <= this.version);
    this.waiters = this.waiters.filter((waiter) => waiter.version > this.version);
    for (const waiter of due) waiter.resolve();
  }

  private publish(batch: LiveBatch<T>): void {
    for (const state of this.subscribers) {
      if (state.catchingUp) continue; // the catch-up loop reads this range from the log
      if (state.cursor < batch.from) {
        void this.catchUp(state);
        continue;
      }
      if (state.cursor >= batch.version) continue;
      state.cursor = batch.version;
      this.safeDeliver(state, batch);
    }
  }

  private safeDeliver(state: SubscriberState<T>, batch: LiveBatch<T>, paced = false): void {
    try {
      state.subscriber.deliver(batch, batch.version, paced);
    } catch (error) {
      this.onError(error);
    }
  }

  /** Read the subscriber's missing range from the log, then hand it back to live delivery. */
  private async catchUp(state: SubscriberState<T>): Promise<void> {
    if (state.catchingUp) return;
    state.catchingUp = true;
    try {
      // Loop until the cursor meets the hub's: the check and the switch back to
      // live happen in one tick, so no batch published meanwhile is skipped.
      while (!state.closed && state.cursor < this.version) {
        const page = await this.source.read(state.cursor, this.pageSize);
        if (state.closed) return;
        // Never run past what the hub itself has published: live delivery resumes there.
        const upTo = Math.min(page.version, this.version);
        const changes = page.changes.filter((change) => change.version <= upTo);
        if (upTo <= state.cursor) break;
        const batch = new LiveBatch(state.cursor, upTo, changes, this.source.messageType);
        state.cursor = upTo;
        this.safeDeliver(state, batch, true);
        await state.subscriber.drained?.();
      }
    } catch (error) {
      if (!state.closed) this.onError(error);
    } finally {
      state.catchingUp = false;
    }
  }

  stop(): void {
    if (this.gathering) clearTimeout(this.gathering);
    this.gathering = null;
    this.stopWatching?.();
    this.stopWatching = null;
    for (const state of this.subscribers) {
      state.closed = true;
      state.subscriber.end?.();
    }
    this.subscribers.clear();
    for (const waiter of this.waiters) waiter.resolve();
    this.waiters = [];
  }
}
