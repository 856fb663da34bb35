/**
 * ChangeHub: the one in-process fan-out point between the change log and
 * every live connection (SSE streams and WebSockets of both message families),
 * whatever transport.
 *
 * The hub reads the log once per wake-up and hands the same batch to every
 * subscriber. A batch holds the entity changes of a range of versions and,
 * when field-level sync is on and someone listens for it, the field changes
 * of the same range (field versions are log versions: a field write is a row
 * write). The JSON of a batch is encoded once per distinct filter (family,
 * entities, read scope), not once per client. Each subscriber keeps its own
 * cursor: one that falls behind (it joined with an old cursor, or the hub
 * skipped it) is caught up from the log before it goes live again, so no
 * change is lost or repeated.
 */
import type { LiveScope } from './access.js';
import { badRequest } from './errors.js';
import { BATCH_PROTOCOL, type Change, type FieldChange, PROTOCOL_PARAM, type Row } from './protocol.js';
import type { FieldStore, PrunedHorizon, Store } from './store.js';
import { tracedSync } from './tracing.js';

/** The two message families live delivery speaks: entity `change` and field-level `field_change`. */
export type Family = 'change' | 'field_change';

/** Both families' changes of one range of log versions. */
export interface LivePage {
  changes: Change[];
  /** Field changes of the same range; null when they were not read. */
  fieldChanges: FieldChange[] | null;
  /** Cursor after this page: every change of either family up to it is included. */
  version: number;
  hasMore: boolean;
}

/** Where a hub reads from and what it is woken by. */
export interface ChangeSource {
  currentVersion(): Promise<number>;
  /** Changes with `version > since` (about `limit` of them); field changes too when `withFields`. */
  read(since: number, limit: number, withFields: boolean): Promise<LivePage>;
  /** Call `onChange` after any committed write; returns a stop function. */
  watch(onChange: () => void): () => void;
  /** Entities whose must-refetch horizon is above `since`, with it (Store.prunedAbove). */
  prunedAbove(since: number): Promise<PrunedHorizon[]>;
  /** A new horizon above every cursor handed out (Store.raiseHorizon). */
  raiseHorizon(entities: readonly string[]): Promise<number>;
}

/**
 * The change log of a store (and its field bookkeeping) as a hub source. The
 * two reads are cut at the lower of their cursors, so a page holds every
 * change of both families up to its version and nothing beyond it.
 */
export function storeSource(store: Store, fields: FieldStore | null = null): ChangeSource {
  return {
    currentVersion: () => store.currentVersion(),
    watch: (onChange) => store.watch(onChange),
    prunedAbove: (since) => store.prunedAbove(since),
    raiseHorizon: (entities) => store.raiseHorizon(entities),
    async read(since, limit, withFields) {
      const page = await store.readLog(since, limit);
      if (!fields || !withFields) return { ...page, fieldChanges: null };
      const fieldPage = await fields.readChanges(since, limit * 16);
      const version = Math.min(page.version, fieldPage.version);
      return {
        changes: version < page.version ? page.changes.filter((change) => change.version <= version) : page.changes,
        fieldChanges: fieldPage.changes.filter((change) => change.version <= version),
        version,
        hasMore: page.hasMore || fieldPage.hasMore || version < page.version,
      };
    },
  };
}

/**
 * Live HTML: a change with its fragment for one read scope (`dom_id`, and
 * `html` unless rendering failed; a delete's only from `renderDeleted`).
 */
export interface Fragments {
  /** The entity has a renderer. */
  has(entity: string): boolean;
  render(change: Change, scope: string | null): Promise<Change>;
}

/** One change of a batch as its own message: its JSON and the cursor once it is delivered. */
export interface EachChange {
  json: string;
  /** Every change of the filter up to here has been sent: the change's version (one less when the next shares it), the batch's for the last. */
  version: number;
}

/**
 * How a transport turns a batch into what it sends, for one kind of client.
 * A framing is encoded once per batch and filter, however many connections
 * use it; `key` tells framings apart in the batch's cache. `batch` framings
 * get the batch message (our protocol); `each` framings get every change on
 * its own (@compat the original crate's clients, which read one `change` per
 * message: connections that declare no protocol, see {@link declaredFraming}).
 */
export type Framing<T> =
  | { readonly key: string; batch(message: string, version: number): T }
  | { readonly key: string; each(changes: readonly EachChange[], family: Family): T };

/**
 * Which framing shape a socket or event stream asked for with `?protocol=`
 * (docs/protocol.md, "Live protocol"): `batch` for {@link BATCH_PROTOCOL},
 * `each` (the original crate's one change per message) when absent or `1`.
 */
export function declaredFraming(query: URLSearchParams): 'batch' | 'each' {
  const value = query.get(PROTOCOL_PARAM);
  if (value === null || value === '1') return 'each';
  if (value === String(BATCH_PROTOCOL)) return 'batch';
  throw badRequest(`${PROTOCOL_PARAM} must be 1 (one change per message) or ${BATCH_PROTOCOL} (batches)`);
}

/** A batch of consecutive log entries `(from, version]`. */
export class LiveBatch {
  private readonly encoded = new Map<string, string | null>();
  private readonly selected = new Map<string, readonly (Change | FieldChange)[]>();
  private readonly frames = new Map<string, unknown>();
  private rows: Map<string, Row | null> | null = null;

  constructor(
    /** Every change with a version in (from, version] is in `changes` (for all entities). */
    readonly from: number,
    readonly version: number,
    readonly changes: readonly Change[],
    /** The same range's field changes; null when not read (no field subscriber then). */
    readonly fieldChanges: readonly FieldChange[] | null = null,
  ) {}

  /**
   * Live HTML: give these filters' changes their fragments, rendered once per
   * change and read scope however many filters and connections share it.
   * Before any message of the batch is encoded.
   */
  async render(filters: readonly EntityFilter[], fragments: Fragments): Promise<void> {
    const cache = new Map<string, Promise<Change>>();
    await Promise.all(
      filters.map(async (filter) => {
        if (filter.family !== 'change') return;
        const changes = this.changesFor(filter) as readonly Change[];
        const rendered = changes.filter((change) => fragments.has(change.entity)).length;
        // A bulk write goes without HTML: one refetch of a page is cheaper than rendering and swapping every row.
        if (rendered === 0 || rendered > MAX_LIVE_FRAGMENTS) return;
        const decorated = changes.map((change) => {
          if (!fragments.has(change.entity)) return change;
          const scope = filter.scope?.keyFor(change.entity) ?? null;
          const key = `${change.entity}\u0000${change.id}\u0000${change.version}\u0000${change.action}\u0000${scope ?? ''}`;
          const fragment = cache.get(key) ?? fragments.render(change, scope);
          cache.set(key, fragment);
          return fragment;
        });
        this.selected.set(filter.key, await Promise.all(decorated));
      }),
    );
  }

  /**
   * The message for one filter, encoded once and shared by every subscriber
   * with that filter; null when nothing in it concerns them.
   */
  messageFor(filter: EntityFilter): string | null {
    const cached = this.encoded.get(filter.key);
    if (cached !== undefined) return cached;
    const changes = this.changesFor(filter);
    let text: string | null = null;
    if (changes.length > 0) {
      // LiveChangeMessage and FieldChangeMessage alike; `change` is the original crate's single-change field.
      const message: { type: Family; version: number; changes: readonly unknown[]; change?: unknown } = {
        type: filter.family,
        version: this.version,
        changes,
      };
      if (changes.length === 1) message.change = changes[0];
      text = JSON.stringify(message);
    }
    this.encoded.set(filter.key, text);
    return text;
  }

  /**
   * The batch for one filter in a transport's framing (SSE event bytes, a
   * WebSocket frame, or one of either per change), encoded once per framing
   * and filter however many connections send it; null when nothing in the
   * batch concerns the filter.
   */
  framed<T>(filter: EntityFilter, framing: Framing<T>): T | null {
    const key = `${framing.key}\u0000${filter.key}`;
    let frame = this.frames.get(key) as T | null | undefined;
    if (frame === undefined) {
      if ('batch' in framing) {
        const message = this.messageFor(filter);
        frame = message === null ? null : framing.batch(message, this.version);
      } else {
        const changes = this.changesFor(filter);
        frame = changes.length === 0 ? null : framing.each(this.eachOf(changes), filter.family);
      }
      this.frames.set(key, frame);
    }
    return frame;
  }

  /** The changes of this batch one filter gets (its family, entities and read scope), computed once per filter. */
  private changesFor(filter: EntityFilter): readonly (Change | FieldChange)[] {
    const cached = this.selected.get(filter.key);
    if (cached) return cached;
    const wanted = <T extends { entity: string }>(list: readonly T[]) =>
      filter.all ? list : list.filter((change) => filter.entities.has(change.entity));
    const scope = filter.scope;
    let changes: readonly (Change | FieldChange)[];
    if (filter.family === 'field_change') {
      const fields = wanted(this.fieldChanges ?? []);
      changes = scope ? scope.applyFields(fields, (entity, id) => this.rowOf(entity, id)) : fields;
    } else {
      const entityChanges = wanted(this.changes);
      changes = scope ? entityChanges.map(scope.apply) : entityChanges;
    }
    this.selected.set(filter.key, changes);
    return changes;
  }

  /**
   * Each change with the cursor a client has once it is delivered. Changes
   * come in version order; one write's field changes share a version, so a
   * change followed by another of its version brings the client only to the
   * version before it.
   */
  private eachOf(changes: readonly (Change | FieldChange)[]): EachChange[] {
    return changes.map((change, index) => {
      const next = changes[index + 1];
      const version = next ? Math.min(change.version, next.version - 1) : this.version;
      return { json: JSON.stringify(change), version };
    });
  }

  /** A row as this batch's entity changes leave it (field changes are judged by it); undefined when not in the batch. */
  private rowOf(entity: string, id: string): Row | null | undefined {
    if (!this.rows) {
      this.rows = new Map();
      for (const change of this.changes) this.rows.set(`${change.entity}\u0000${change.id}`, change.data);
    }
    return this.rows.get(`${entity}\u0000${id}`);
  }
}

/**
 * Which family and entities a subscriber wants, and how a change looks to its
 * user when read scopes apply. `key` identifies equal filters: subscribers
 * with the same key share one encoding of each batch.
 */
export class EntityFilter {
  readonly key: string;
  constructor(
    readonly entities: ReadonlySet<string>,
    readonly all = false,
    /** Per-user view of changes (read scopes); absent when every user sees the same. */
    readonly scope?: LiveScope,
    readonly family: Family = 'change',
  ) {
    const entityKey = all ? '*' : [...entities].sort().join(',');
    this.key = `${family}|${entityKey}${scope ? `|${scope.key}` : ''}`;
  }
}

/**
 * How a batch reaches a subscriber: `live`, a page of the catch-up it asked
 * for (`replay`: it subscribed from an older cursor), or a page of the
 * catch-up the hub runs because it lagged (`lag`: a live batch it could not
 * take; only the newest version of each row of the page is sent).
 */
export type Delivery = 'live' | 'replay' | 'lag';

/**
 * A consumer's rule for refusing a live batch (`Subscriber.deliver`): with
 * `queued` bytes not yet taken, it is behind when they are over half of
 * `maxBufferedBytes` or `bytes` more would pass it. An empty queue always
 * takes the batch. Catch-up pages wait until `queued` is below half.
 */
export const behind = (queued: number, bytes: number, maxBufferedBytes: number): boolean =>
  queued > 0 && (queued > maxBufferedBytes / 2 || queued + bytes > maxBufferedBytes);

/** What a transport gives the hub for one connection. */
export interface Subscriber {
  filter: EntityFilter;
  /**
   * Deliver one batch; `version` is the cursor after it. Catch-up pages
   * (`replay`, `lag`) wait on `drained()` and so must not count as a
   * consumer falling behind. A live batch may be refused (false) when the
   * consumer is behind: its cursor stays, and once it has drained the hub
   * catches it up from the log and hands it back to live delivery, so a slow
   * consumer lags instead of being dropped.
   */
  deliver(batch: LiveBatch, version: number, delivery: Delivery): boolean;
  /** Called when the hub stops (engine closing): end the connection so servers can close. */
  end?(): void;
  /**
   * The rows the client holds of `entity` no longer match its table (its
   * schema changed): end the connection so the client reconnects and pulls,
   * which answers `reset: true` (WebSocket: close code 4205). Defaults to `end`.
   */
  refetch?(entity: string): void;
  /**
   * Resolves when the consumer can take more. Catch-up waits on it between
   * pages, so replaying a long log to one client is paced by that client
   * instead of piling up in memory (live batches are not paced: a live
   * consumer that falls behind is dropped and catches up this way).
   */
  drained?(): Promise<void>;
}

interface SubscriberState {
  subscriber: Subscriber;
  cursor: number;
  /** The cursor it joined with: below a must-refetch horizon, what it holds may be gone from the log. */
  joined: number;
  catchingUp: boolean;
  closed: boolean;
}

/** Live HTML: a batch with more changes of rendered entities than this (for one filter) goes without HTML. */
export const MAX_LIVE_FRAGMENTS = 100;

/** How long writes arriving right after a fan-out are gathered before the next one, ms. */
const COALESCE_MS = 1;

/** How often the live read checks that no entry it had yet to read was pruned meanwhile, ms. */
const PRUNE_CHECK_MS = 250;

export interface HubOptions {
  /** Log entries read per wake-up. */
  pageSize?: number;
  onError?: (error: unknown) => void;
  /** Called after each live batch reached every subscriber (metrics). */
  onPublished?: (changes: number, seconds: number) => void;
  /** Live HTML renderers (entities with `render`); live batches only, catch-up sends rows alone. */
  fragments?: Fragments;
}

export class ChangeHub {
  private readonly subscribers = new Set<SubscriberState>();
  /** Subscribers of field changes: the hub reads them only while someone listens. */
  private fieldSubscribers = 0;
  /** Times a subscriber lagged (refused a live batch) and was caught up from the log instead of being dropped. */
  lagged = 0;
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
  private readonly fragments: Fragments | null;
  /** Resolvers waiting for the hub to reach a version (tests and push acks). */
  private waiters: Array<{ version: number; resolve: () => void }> = [];
  /** The last prune check: when, and the hub's version then. */
  private pruneCheck = { at: Number.NEGATIVE_INFINITY, version: 0 };
  /** The versions the hub had read by recent moments (epoch ms), oldest first, for the prune check. */
  private readBy: Array<{ at: number; version: number }> = [];
  private pruneTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly source: ChangeSource,
    options: HubOptions = {},
  ) {
    this.pageSize = options.pageSize ?? 1000;
    this.onError = options.onError ?? (() => {});
    this.onPublished = options.onPublished ?? (() => {});
    this.fragments = options.fragments ?? null;
  }

  /** Start following the log from its current end. */
  async start(): Promise<void> {
    this.version = await this.source.currentVersion();
    this.pruneCheck = { at: performance.now(), version: this.version };
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
  subscribe(subscriber: Subscriber, since?: number): () => void {
    const cursor = since ?? this.version;
    const state: SubscriberState = { subscriber, cursor, joined: cursor, catchingUp: false, closed: false };
    this.subscribers.add(state);
    const fields = subscriber.filter.family === 'field_change';
    if (fields) this.fieldSubscribers++;
    if (state.cursor < this.version) void this.catchUp(state);
    return () => {
      if (state.closed) return;
      state.closed = true;
      if (fields) this.fieldSubscribers--;
      this.subscribers.delete(state);
    };
  }

  /**
   * Tell every subscriber of `entity` to refetch it (`Subscriber.refetch`):
   * its schema changed and the store raised its must-refetch horizon first.
   * Returns how many were told.
   */
  refetch(entity: string, horizon = Number.POSITIVE_INFINITY): number {
    let told = 0;
    for (const state of [...this.subscribers]) {
      if (state.joined < horizon && this.tellRefetch(state, entity)) told++;
    }
    return told;
  }

  /** Tell one subscriber to refetch `entity` when it follows it; returns whether it was told. */
  private tellRefetch(state: SubscriberState, entity: string): boolean {
    const { subscriber } = state;
    if (state.closed || (!subscriber.filter.all && !subscriber.filter.entities.has(entity))) return false;
    try {
      if (subscriber.refetch) subscriber.refetch(entity);
      else subscriber.end?.();
    } catch (error) {
      this.onError(error);
    }
    return true;
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
        await this.checkPruned();
        if (this.subscribers.size === 0) {
          // Nobody listens: move to the head without reading what nobody would get (a bulk load by
          // another process costs no log read). Whoever subscribed meanwhile catches up from the log.
          const head = await this.source.currentVersion();
          if (this.stopped) return;
          if (head > this.version) this.advance(head);
          for (const state of this.subscribers) if (state.cursor < this.version) void this.catchUp(state);
          continue;
        }
        const page = await this.source.read(this.version, this.pageSize, this.fieldSubscribers > 0);
        if (this.stopped) return;
        if (page.version > this.version) {
          const batch = new LiveBatch(this.version, page.version, page.changes, page.fieldChanges);
          // Rendered before the hub moves on: whoever subscribes meanwhile still gets this batch.
          await this.renderFor(batch);
          if (this.stopped) return;
          this.advance(page.version);
          const started = performance.now();
          tracedSync(
            'fanout',
            {
              type: batch.fieldChanges ? 'change,field_change' : 'change',
              changes: batch.changes.length,
              subscribers: this.subscribers.size,
            },
            () => this.publish(batch),
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

  /** The hub has read up to `version`: keep a minute of which version it had read by when, one entry per 100 ms at most. */
  private advance(version: number): void {
    this.version = version;
    const at = Date.now();
    const last = this.readBy.at(-1);
    if (last && at - last.at < 100) last.version = version;
    else this.readBy.push({ at, version });
    while ((this.readBy[0]?.at ?? at) < at - 60_000) this.readBy.shift();
  }

  /**
   * `cleanup` (on any node) may prune a delete the hub has not read yet: its
   * subscribers would never get it. So now and then the hub asks which
   * entities' horizon passed its version at the previous check. When the hub
   * has read past that horizon (its subscribers' cursors too), it first
   * raises the horizon above every cursor; then the subscribers that joined
   * below it are told to refetch, and their pull is a reset. A schema change
   * raises the horizon too, and is caught the same way.
   */
  private async checkPruned(): Promise<void> {
    const now = performance.now();
    if (now - this.pruneCheck.at < PRUNE_CHECK_MS) {
      // Checked at the latest a moment after this read.
      this.pruneTimer ??= setTimeout(() => {
        this.pruneTimer = null;
        this.wake();
      }, PRUNE_CHECK_MS);
      return;
    }
    const since = this.pruneCheck.version;
    this.pruneCheck = { at: now, version: this.version };
    for (const { entity, horizon, raised, prunedAt } of await this.source.prunedAbove(since)) {
      // Read past it before the cleanup ran (with PRUNE_CHECK_MS of slack for other nodes' clocks): nothing was missed.
      if (!raised && this.versionReadBy(prunedAt - PRUNE_CHECK_MS) >= horizon) continue;
      // A raised horizon was above every cursor when it was set. Past a pruned delete's, the hub may have
      // sent batches without it and cursors moved beyond it: a reset needs a horizon above them.
      const above = raised || horizon > this.version ? horizon : await this.source.raiseHorizon([entity]);
      this.pruneCheck.version = Math.max(this.pruneCheck.version, above);
      this.refetch(entity, above);
    }
  }

  /** The version the hub had read by `at` (epoch ms), from its recent history; 0 when older than it. */
  private versionReadBy(at: number): number {
    let version = 0;
    for (const entry of this.readBy) {
      if (entry.at > at) break;
      version = entry.version;
    }
    return version;
  }

  private releaseWaiters(): void {
    if (this.waiters.length === 0) return;
    const due = this.waiters.filter((waiter) => waiter.version <= this.version);
    this.waiters = this.waiters.filter((waiter) => waiter.version > this.version);
    for (const waiter of due) waiter.resolve();
  }

  /** Live HTML for the filters of the subscribers this batch goes to live, when any entity in it has a renderer. */
  private async renderFor(batch: LiveBatch): Promise<void> {
    const fragments = this.fragments;
    if (!fragments || !batch.changes.some((change) => fragments.has(change.entity))) return;
    const filters = new Map<string, EntityFilter>();
    for (const state of this.subscribers) {
      const { filter } = state.subscriber;
      if (!state.catchingUp) filters.set(filter.key, filter);
    }
    try {
      await batch.render([...filters.values()], fragments);
    } catch (error) {
      // The batch goes out without HTML rather than not at all (pages refetch).
      this.onError(error);
    }
  }

  private publish(batch: LiveBatch): void {
    for (const state of this.subscribers) {
      if (state.catchingUp) continue; // the catch-up loop reads this range from the log
      // Behind, or a field subscriber that joined while a batch without field changes was being read.
      if (state.cursor < batch.from || (batch.fieldChanges === null && state.subscriber.filter.family === 'field_change')) {
        void this.catchUp(state);
        continue;
      }
      if (state.cursor >= batch.version) continue;
      // Behind: it keeps its cursor, and catches up from the log once it has room.
      if (this.safeDeliver(state, batch, 'live')) state.cursor = batch.version;
      else void this.catchUp(state, true);
    }
  }

  /** Whether the subscriber took the batch (one that throws counts as taken: it is not retried). */
  private safeDeliver(state: SubscriberState, batch: LiveBatch, delivery: Delivery): boolean {
    try {
      return state.subscriber.deliver(batch, batch.version, delivery);
    } catch (error) {
      this.onError(error);
      return true;
    }
  }

  /**
   * Read the subscriber's missing range from the log, then hand it back to
   * live delivery. `lagged`: it refused a live batch; it is first waited for
   * until it has room, and is sent only the newest version of each row of a
   * page (what its replica must end up with).
   */
  private async catchUp(state: SubscriberState, lagged = false): Promise<void> {
    if (state.catchingUp) return;
    state.catchingUp = true;
    try {
      if (lagged) {
        this.lagged++;
        await state.subscriber.drained?.();
        if (state.closed) return;
      }
      // A cursor below an entity's horizon cannot be served from the log: that entity must be pulled
      // again, and replaying the rest of the log to a subscriber told so would only be thrown away.
      const stale = (await this.source.prunedAbove(state.cursor)).filter(({ entity }) => this.tellRefetch(state, entity));
      if (stale.length > 0) return;
      // Loop until the cursor meets the hub's: the check and the switch back to
      // live happen in one tick, so no batch published meanwhile is skipped.
      while (!state.closed && state.cursor < this.version) {
        const page = await this.source.read(state.cursor, this.pageSize, state.subscriber.filter.family === 'field_change');
        if (state.closed) return;
        // Never run past what the hub itself has published: live delivery resumes there.
        const upTo = Math.min(page.version, this.version);
        if (upTo <= state.cursor) break;
        const changes = page.changes.filter((change) => change.version <= upTo);
        const fieldChanges = page.fieldChanges?.filter((change) => change.version <= upTo) ?? null;
        const batch = lagged
          ? new LiveBatch(state.cursor, upTo, newestOf(changes, rowKey), fieldChanges && newestOf(fieldChanges, fieldKey))
          : new LiveBatch(state.cursor, upTo, changes, fieldChanges);
        state.cursor = upTo;
        this.safeDeliver(state, batch, lagged ? 'lag' : 'replay');
        await state.subscriber.drained?.();
      }
    } catch (error) {
      if (!state.closed) this.onError(error);
    } finally {
      state.catchingUp = false;
    }
  }

  stop(): void {
    if (this.pruneTimer) clearTimeout(this.pruneTimer);
    this.pruneTimer = null;
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

/** The newest entry of each key, in log order (a page of a lagging subscriber's catch-up). */
function newestOf<T>(entries: T[], key: (entry: T) => string): T[] {
  const newest = new Map<string, number>();
  for (const [index, entry] of entries.entries()) newest.set(key(entry), index);
  return newest.size === entries.length ? entries : entries.filter((entry, index) => newest.get(key(entry)) === index);
}

const rowKey = (change: Change): string => `${change.entity}\u0000${change.id}`;
const fieldKey = (change: FieldChange): string => `${change.entity}\u0000${change.entity_id}\u0000${change.field}`;
