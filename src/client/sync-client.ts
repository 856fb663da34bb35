/**
 * SyncClient: composes the replica, the outbox, the connection and the
 * leader election into the `window.rhtmxSync` API.
 *
 * Only the leader tab talks to the server. Every tab writes IndexedDB
 * directly (pushes, manual pulls) and tells the others over the tab channel:
 * `c` rows changed, `e` an event to re-dispatch, `f` please flush the
 * outbox, `w` entities a tab wants synced, `r` the leader finished a
 * catch-up, `l` a tab just became the leader (followers answer with `w`).
 */
import type { ChangeAction, LiveChangeMessage, Row, SchemaResponse } from '../core/protocol.js';
import { type Connection, type ConnectionState, connect, fetchJson, type HttpError } from './connection.js';
import { changeEvents, dispatch, type RowChange } from './events.js';
import { uuid } from './hlc.js';
import { META, OUTBOX, openDb, req } from './idb.js';
import { electLeader, tabChannel } from './leader.js';
import { mapRequest, offlineHtmx } from './offline-htmx.js';
import { type ConflictDetail, enqueue, type LocalChange, outboxFlusher, sender } from './outbox.js';
import { serverChangesMayApply } from './push-gate.js';
import { applyServer, type Cursor, cursorKey, type OutboxEntry, publicRow, pullEntity, type StoredRow } from './replica.js';
import { registerWorker } from './service-worker.js';

export type { ConnectionState } from './connection.js';
export type { ChangedDetail } from './events.js';
export type { ConflictDetail, LocalChange } from './outbox.js';
export type { OutboxEntry, ProgressDetail } from './replica.js';

/** Options of `createSyncClient` (the script tag's `data-*` attributes). */
export interface SyncClientOptions {
  /** Base URL of the sync routes, e.g. `https://app.example/api/sync`. */
  baseUrl: string;
  /** Entities to sync (`data-sync-entities`); empty or absent: every entity the server publishes. */
  entities?: string[];
  /** `data-conflict-strategy`: informational; the server's per-entity strategy decides. */
  conflictStrategy?: string;
  /** `data-use-websocket`; default true. False: SSE for live changes, HTTP for pushes. */
  useWebSocket?: boolean;
  /** `data-debug`: log to the console. */
  debug?: boolean;
  /** IndexedDB database name; default `rhtmx-sync`. */
  dbName?: string;
  /** `data-service-worker`: register `<baseUrl>/sw.js` (scope `/`) so the app's pages and scripts open offline. */
  serviceWorker?: boolean;
}

/** Detail of `rhtmx:offline:queued`: an htmx request became an outbox change; `count` changes wait in the outbox. */
export interface QueuedDetail {
  count: number;
  entity: string;
  id: string;
  action: ChangeAction;
}

/** Detail of `rhtmx:connection:state`. */
export interface ConnectionStateDetail {
  state: ConnectionState;
  /** Whether this tab holds the connection. */
  leader: boolean;
}

/** Detail of `rhtmx:sync:error`. */
export interface SyncErrorDetail {
  /** What failed: `push`, `pull`, `live` or `storage`. */
  op: string;
  entity?: string;
  /** The error's name, e.g. `QuotaExceededError`. */
  name: string;
  message: string;
}

/** The `window.rhtmxSync` API. */
export interface SyncClient {
  /** Resolves once the initial pull is done (or, offline, once a complete local copy is known). */
  readonly ready: Promise<void>;
  /** Pull one entity now (HTTP), in any tab. */
  syncEntity(entity: string): Promise<void>;
  /** Apply a change locally at once and queue it for the server; resolves once it is durable in IndexedDB. */
  push(entity: string, change: LocalChange): Promise<OutboxEntry>;
  get(entity: string, id: string | number): Promise<Row | undefined>;
  all(entity: string): Promise<Row[]>;
  /** Mutations not yet answered by the server, oldest first. */
  pending(): Promise<OutboxEntry[]>;
  /** Console logging when `debug` is on (`data-debug="true"`). */
  log(...args: unknown[]): void;
  /** Listen to an `rhtmx:*` event (the prefix may be omitted); returns a function that removes the listener. */
  on(event: string, listener: (event: CustomEvent) => void): () => void;
  /** Current connection state and leadership of this tab. */
  state(): ConnectionStateDetail;
}

/** Messages between tabs (kept terse: they are posted for every batch). */
interface TabMessage {
  c?: RowChange[];
  e?: [name: string, detail: unknown];
  f?: 1;
  w?: string[];
  r?: 1;
  l?: 1;
}

const STATE_EVENT = 'rhtmx:connection:state';

/** Start syncing: open IndexedDB, join the leader election, and return the API (`window.rhtmxSync`). */
export function createSyncClient(options: SyncClientOptions): SyncClient {
  const base = options.baseUrl.replace(/\/+$/, '');
  const entities = [...(options.entities ?? [])];
  const db = openDb(options.dbName ?? 'rhtmx-sync');
  const fire = changeEvents();
  const log = (...args: unknown[]) => {
    if (options.debug) console.log('[rhtmx-sync]', ...args);
  };
  let clientId = '';
  let leader = false;
  let withLocks = true;
  let state: ConnectionState = 'connecting';
  let connection: Connection | undefined;
  let isReady = false;
  let resolveReady!: () => void;
  /** Live batches apply strictly in order; after a failed one, nothing more until the next catch-up. */
  let live = Promise.resolve();
  let failedLive = false;
  const ready = new Promise<void>((resolve) => {
    resolveReady = resolve;
  });

  const post = tabChannel<TabMessage>((message) => {
    if (message.c) fire(message.c);
    if (message.e) {
      dispatch(...message.e);
      if (message.e[0] === STATE_EVENT) state = (message.e[1] as ConnectionStateDetail).state;
    }
    if (message.r && !leader) void checkReady();
    // A new leader: tell it what this tab needs synced.
    if (message.l && !leader) post({ w: entities });
    if (!leader || !withLocks) return;
    if (message.f) void flush();
    if (message.w) {
      const added = message.w.filter((entity) => !entities.includes(entity));
      if (added.length) {
        entities.push(...added);
        connection?.restart();
      }
      post({ e: [STATE_EVENT, { state, leader: false }] });
      if (isReady) post({ r: 1 });
    }
  });

  /** Rows changed in this tab: fire here and in every other tab. */
  const changed = (rows: RowChange[]) => {
    if (!rows.length) return;
    fire(rows);
    post({ c: rows });
  };
  const emit = (name: string, detail: unknown) => {
    dispatch(name, detail);
    post({ e: [name, detail] });
  };
  const fail = (op: string, error: unknown, entity?: string) => {
    log(op, entity, error);
    const { name, message } = error as Error;
    emit('rhtmx:sync:error', { op, entity, name, message } satisfies SyncErrorDetail);
  };

  const markReady = () => {
    if (isReady) return;
    isReady = true;
    resolveReady();
    dispatch('rhtmx:sync:ready', { entities });
  };
  /** Ready without a pull: every entity has a complete local copy (a follower, or offline). */
  const checkReady = async () => {
    const cursors = await db.run([META], 'readonly', (tx) =>
      Promise.all(entities.map((entity) => req(tx.objectStore(META).get(cursorKey(entity))) as Promise<Cursor | undefined>)),
    );
    if (cursors.every((cursor) => cursor && !cursor.n)) markReady();
  };

  const pull = (entity: string) => pullEntity(db, base, entity, changed, (detail) => emit('rhtmx:sync:progress', detail));

  /**
   * `GET /schema` (entity discovery, integer keys, offline htmx), fetched once per page and kept in
   * IndexedDB: a page reopened offline still knows the routes and column types. Retried after a failure.
   */
  let schema: Promise<SchemaResponse> | null = null;
  const getSchema = (): Promise<SchemaResponse> =>
    (schema ??= fetchJson<SchemaResponse>(`${base}/schema`).then(
      (fresh) => {
        db.run([META], 'readwrite', (tx) => tx.objectStore(META).put(fresh, 'schema')).catch(log);
        return fresh;
      },
      async (error) => {
        // The stored copy is not kept: the next call asks the server again.
        schema = null;
        return (await db.run([META], 'readonly', (tx) => req(tx.objectStore(META).get('schema')))) ?? Promise.reject(error);
      },
    ));

  const flush = outboxFlusher({
    db,
    send: sender(
      base,
      () => clientId,
      (message) => connection?.request(message) ?? null,
    ),
    async integerKey(entity) {
      const info = (await getSchema()).entities.find((candidate) => candidate.name === entity);
      return info?.columns.find((column) => column.name === info.primaryKey)?.type === 'integer';
    },
    changed,
    conflict: (detail: ConflictDetail) => emit('rhtmx:sync:conflict', detail),
    error: (error) => fail('push', error),
    log,
  });

  /** Leader: pull everything (on every connect), then live changes resume from the lowest cursor. */
  const catchUp = async (): Promise<number> => {
    failedLive = false;
    // Stored for offline htmx in a page reopened offline.
    getSchema().catch(log);
    const cursors = await Promise.all(
      [...entities].map((entity) =>
        pull(entity).catch((error: HttpError) => {
          // Storage failures (QuotaExceededError...) reach the app; network ones only retry.
          if (error instanceof DOMException && error.name !== 'TimeoutError') fail('pull', error, entity);
          if (error.body?.error.code !== 'unknown_entity') throw error;
          // A misconfigured entity must not stall the others: report it and stop syncing it.
          fail('pull', error, entity);
          entities.splice(entities.indexOf(entity), 1);
          return Number.POSITIVE_INFINITY;
        }),
      ),
    );
    markReady();
    post({ r: 1 });
    return Math.min(...cursors.filter(Number.isFinite));
  };

  const onChange = (message: LiveChangeMessage) => {
    live = live.then(async () => {
      if (failedLive) return;
      // A push answer still on its way must not overwrite what this batch brings (see push-gate.ts).
      await serverChangesMayApply(db);
      const names = entities.filter((entity) => message.changes.some((change) => change.entity === entity));
      try {
        const rows = await db.run([...names, META, OUTBOX], 'readwrite', async (tx) => {
          const meta = tx.objectStore(META);
          const rows: RowChange[] = [];
          for (const entity of entities) {
            const cursor = (await req(meta.get(cursorKey(entity)))) as Cursor | undefined;
            // Not caught up yet (or mid-snapshot): the pull will bring these.
            if (!cursor || cursor.n) continue;
            if (names.includes(entity)) {
              const mine = message.changes.filter((change) => change.entity === entity);
              rows.push(...(await applyServer(tx, entity, mine, cursor.v)));
            }
            if (message.version > cursor.v) meta.put({ v: message.version }, cursorKey(entity));
          }
          return rows;
        });
        changed(rows);
      } catch (error) {
        // The cursor did not move: reconnecting pulls the lost batch again.
        failedLive = true;
        fail('live', error);
        connection?.restart();
      }
    });
  };

  const setState = (next: ConnectionState) => {
    state = next;
    dispatch(STATE_EVENT, { state, leader: true } satisfies ConnectionStateDetail);
    if (withLocks) post({ e: [STATE_EVENT, { state, leader: false }] });
    if (next === 'websocket' || next === 'sse') void flush();
    else if (next === 'offline' && !isReady) void checkReady();
  };

  const becomeLeader = () => {
    leader = true;
    log('leader');
    post({ l: 1 });
    connection = connect({
      base,
      useWebSocket: options.useWebSocket !== false,
      entities: () => entities,
      catchUp,
      onChange,
      onState: setState,
    });
  };

  const started = (async () => {
    if (!entities.length) {
      entities.push(...(await getSchema()).entities.map((entity) => entity.name));
    }
    clientId = await db.run([...entities, META], 'readwrite', async (tx) => {
      const meta = tx.objectStore(META);
      const id = ((await req(meta.get('cid'))) as string | undefined) ?? uuid();
      meta.put(id, 'cid');
      return id;
    });
    // Best effort: without it the browser may evict the outbox under storage pressure.
    navigator.storage?.persist?.().then((granted) => log('persistent storage', granted));
    withLocks = Boolean(navigator.locks);
    electLeader(becomeLeader);
    // The leader answers with its connection state and `r` once caught up.
    post({ w: entities });
  })();
  started.catch((error) => fail('storage', error));

  /** Run an operation on an entity store that exists; undefined (not a new store) for unknown entities. */
  const read = async <T>(entity: string, body: (store: IDBObjectStore) => IDBRequest<T>): Promise<T | undefined> => {
    await started;
    if (!(await db.has(entity))) return undefined;
    return db.run([entity], 'readonly', (tx) => req(body(tx.objectStore(entity))));
  };

  const api: SyncClient = {
    ready,
    async syncEntity(entity) {
      await started;
      await pull(entity);
    },
    async push(entity, change) {
      await started;
      try {
        const entry = await enqueue(db, entity, change);
        changed([[entity, entry.id, entry.action]]);
        if (leader) void flush();
        else post({ f: 1 });
        return entry;
      } catch (error) {
        fail('push', error, entity);
        throw error;
      }
    },
    get: async (entity, id) => publicRow((await read(entity, (store) => store.get(String(id)))) as StoredRow | undefined),
    all: async (entity) => ((await read(entity, (store) => store.getAll())) ?? []).map(publicRow) as Row[],
    pending: async () => (await read(OUTBOX, (store) => store.getAll())) ?? [],
    log,
    on(event, listener) {
      const type = event.startsWith('rhtmx:') ? event : `rhtmx:${event}`;
      document.addEventListener(type, listener as EventListener);
      return () => document.removeEventListener(type, listener as EventListener);
    },
    state: () => ({ state, leader }),
  };

  offlineHtmx(async (elt, method, url, fields) => {
    try {
      const mapped = mapRequest(await getSchema(), entities, elt, method, url, fields);
      if (!mapped) return false;
      const { entity, id, action } = await api.push(mapped.entity, mapped.change);
      // This tab only: the page that made the request shows what waits.
      dispatch('rhtmx:offline:queued', { count: (await api.pending()).length, entity, id, action } satisfies QueuedDetail);
      return true;
    } catch (error) {
      // No schema yet (first visit offline), storage full...: htmx's own error handling takes it.
      log('offline htmx', error);
      return false;
    }
  });
  if (options.serviceWorker) registerWorker(`${base}/sw.js`, log);
  return api;
}
