/**
 * FieldFeed: live fan-out of field changes to WebSocket subscribers.
 *
 * It wakes up on the store's change watch, the same signal that drives the
 * engine's ChangeHub (every committed log write, by anyone; field
 * bookkeeping commits in the same transaction as its log rows), and directly
 * after each field push. It reads the field changes once per wake-up
 * and hands the same encoded batch to every subscriber with the same entity
 * set. Each subscriber keeps its own cursor; one that joins with an old
 * cursor is caught up from the store before it goes live, with nothing
 * skipped or repeated (the same hand-over as the hub's).
 */
import type { EntityFilter } from '../core/hub.js';
import type { Store } from '../core/store.js';
import type { FieldChange, FieldChangeMessage } from './protocol.js';
import type { FieldStore } from './store.js';

/** A batch of field changes with versions in `(from, version]`, for every entity. */
class FieldBatch {
  private readonly encoded = new Map<string, string | null>();

  constructor(
    readonly from: number,
    readonly version: number,
    readonly changes: readonly FieldChange[],
  ) {}

  /** The `field_change` message for one entity set, encoded once; null when nothing concerns it. */
  messageFor(filter: EntityFilter): string | null {
    const cached = this.encoded.get(filter.key);
    if (cached !== undefined) return cached;
    const changes = this.changes.filter((change) => filter.entities.has(change.entity));
    let text: string | null = null;
    if (changes.length > 0) {
      const message: FieldChangeMessage = { type: 'field_change', version: this.version, changes };
      if (changes.length === 1) message.change = changes[0];
      text = JSON.stringify(message);
    }
    this.encoded.set(filter.key, text);
    return text;
  }
}

/** What a connection gives the feed. */
export interface FieldSubscriber {
  filter: EntityFilter;
  /**
   * Send one encoded `field_change` message. `live` batches count against the
   * slow-consumer limit; catch-up pages are paced by `drained` instead.
   */
  send(text: string, live: boolean): void;
  /** Resolves once the consumer has room for another catch-up page. */
  drained?(): Promise<void>;
}

interface SubscriberState {
  subscriber: FieldSubscriber;
  cursor: number;
  catchingUp: boolean;
  closed: boolean;
}

export class FieldFeed {
  private readonly subscribers = new Set<SubscriberState>();
  private version = 0;
  private reading = false;
  private wakeAgain = false;
  private stopWatching: (() => void) | null = null;
  /** Set by stop(): a read still in flight then ends quietly (the store may be closing under it). */
  private stopped = false;

  constructor(
    private readonly store: FieldStore,
    /** The engine's store: its `watch` reports every committed write. */
    private readonly changes: Pick<Store, 'watch'>,
    private readonly onError: (error: unknown) => void,
    private readonly pageSize = 1000,
  ) {}

  /** Start following field changes from the current end of the log. */
  async start(): Promise<void> {
    this.version = await this.store.currentVersion();
    // Not a hub subscriber: that would count as a live connection. The watch is the hub's own wake-up source.
    this.stopWatching = this.changes.watch(() => this.wake());
  }

  /** The highest version fanned out so far. */
  get currentVersion(): number {
    return this.version;
  }

  /**
   * Register a subscriber. With `since`, it first receives every field change
   * after that version, then live ones without a gap.
   */
  subscribe(subscriber: FieldSubscriber, since?: number): () => void {
    const state: SubscriberState = { subscriber, cursor: since ?? this.version, catchingUp: false, closed: false };
    this.subscribers.add(state);
    if (state.cursor < this.version) void this.catchUp(state);
    return () => {
      state.closed = true;
      this.subscribers.delete(state);
    };
  }

  /** Something was written: read the new field changes and fan them out. Safe to call often. */
  wake(): void {
    if (this.stopped) return;
    if (this.reading) {
      this.wakeAgain = true;
      return;
    }
    void this.drain();
  }

  private async drain(): Promise<void> {
    this.reading = true;
    try {
      do {
        this.wakeAgain = false;
        const page = await this.store.readChanges(this.version, this.pageSize);
        if (this.stopped) return;
        if (page.version > this.version) {
          const batch = new FieldBatch(this.version, page.version, page.changes);
          this.version = page.version;
          this.publish(batch);
          if (page.hasMore) this.wakeAgain = true;
        }
      } while (this.wakeAgain && !this.stopped);
    } catch (error) {
      if (!this.stopped) this.onError(error);
    } finally {
      this.reading = false;
    }
  }

  private publish(batch: FieldBatch): void {
    for (const state of this.subscribers) {
      if (state.catchingUp) continue; // its catch-up loop reads this range from the store
      if (state.cursor < batch.from) {
        void this.catchUp(state);
        continue;
      }
      if (state.cursor >= batch.version) continue;
      state.cursor = batch.version;
      this.deliver(state, batch, true);
    }
  }

  private deliver(state: SubscriberState, batch: FieldBatch, live: boolean): void {
    try {
      const text = batch.messageFor(state.subscriber.filter);
      if (text !== null) state.subscriber.send(text, live);
    } catch (error) {
      this.onError(error);
    }
  }

  /** Read the subscriber's missing range, then hand it back to live delivery. */
  private async catchUp(state: SubscriberState): Promise<void> {
    if (state.catchingUp) return;
    state.catchingUp = true;
    try {
      // The check and the switch back to live happen in one tick, so no batch published meanwhile is lost.
      while (!state.closed && state.cursor < this.version) {
        const page = await this.store.readChanges(state.cursor, this.pageSize);
        if (state.closed) return;
        // Never run past what live delivery has published: it resumes there. Field entries are the latest
        // state of each field, so one that moved past `upTo` arrives with the live batch that covers it.
        const upTo = Math.min(page.version, this.version);
        if (upTo <= state.cursor) break;
        const batch = new FieldBatch(
          state.cursor,
          upTo,
          page.changes.filter((change) => change.version <= upTo),
        );
        state.cursor = upTo;
        this.deliver(state, batch, false);
        // Paced by the consumer: a long catch-up never piles up in the socket's buffer.
        await state.subscriber.drained?.();
      }
    } catch (error) {
      if (!state.closed) this.onError(error);
    } finally {
      state.catchingUp = false;
    }
  }

  stop(): void {
    this.stopped = true;
    this.stopWatching?.();
    this.stopWatching = null;
    for (const state of this.subscribers) state.closed = true;
    this.subscribers.clear();
  }
}
