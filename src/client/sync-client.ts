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
import type { ChangeAction, Row, SchemaResponse } from '../core/protocol.js';
import { changeEvents, dispatch, type RowChange } from './events.js';
import { electLeader, tabChannel } from './leader.js';
import { openDb } from './local/idb.js';
import type { Cursor, OutboxEntry, StoredRow } from './local/replica.js';
import { clientIdIn, cursorKey, liveApplier, publicRow, pullEntity } from './local/replica.js';
import { META, OUTBOX } from './local/store.js';
import { type Connection, type ConnectionState, connect } from './net/connection.js';
import { http, type SyncHttpError } from './net/http.js';
import { mapRequest, offlineHtmx } from './offline-htmx.js';
import { isStorageError } from './queue/flusher.js';
import { type ConflictDetail, enqueue, type LocalChange, outboxFlusher, sender } from './queue/outbox.js';
import { registerWorker } from './service-worker.js';

export type { ChangedDetail } from './events.js';
export type { OutboxEntry, ProgressDetail } from './local/replica.js';
export type { ConnectionState } from './net/connection.js';
export type { ConflictDetail, LocalChange } from './queue/outbox.js';

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
  const server = http(base);
  const log = (...args: unknown[]) => {
    if (options.debug) console.log('[rhtmx-sync]', ...args);
  };
  let leader = false;
  let withLocks = true;
  let state: ConnectionState = 'connecting';
  let connection: Connection | undefined;
  let isReady = false;
  let resolveReady!: () => void;
  const ready = new Promise<void>((resolve) => {
    resolveReady = resolve;
  });

  const fire = changeEvents();
  const post = tabChannel<TabMessage>('rhtmx-sync', (message) => {
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
    const cursors = await db.read([META], (tx) => Promise.all(entities.map((entity) => tx.get<Cursor>(META, cursorKey(entity)))));
    if (cursors.every((cursor) => cursor && !cursor.n)) markReady();
  };

  /** Server changes apply after the answer of a push in flight (the push gate, flusher.ts). */
  const replica = { db, idle: () => flush.idle(), changed };
  const pull = (entity: string) => pullEntity(replica, server, entity, (detail) => emit('rhtmx:sync:progress', detail));

  /**
   * `GET /schema` (entity discovery, integer keys, offline htmx), fetched once per page and kept in
   * IndexedDB: a page reopened offline still knows the routes and column types. Retried after a failure.
   */
  let schema: Promise<SchemaResponse> | null = null;
  const getSchema = (): Promise<SchemaResponse> =>
    (schema ??= server<SchemaResponse>('/schema').then(
      (fresh) => {
        db.write([META], (tx) => tx.put(META, fresh, 'schema')).catch(log);
        return fresh;
      },
      async (error) => {
        // The stored copy is not kept: the next call asks the server again.
        schema = null;
        return (await db.read([META], (tx) => tx.get<SchemaResponse>(META, 'schema'))) ?? Promise.reject(error);
      },
    ));

  const flush = outboxFlusher({
    db,
    send: sender(server, (message) => connection?.request(message) ?? null),
    async integerKey(entity) {
      const info = (await getSchema()).entities.find((candidate) => candidate.name === entity);
      return info?.columns.find((column) => column.name === info.primaryKey)?.type === 'integer';
    },
    changed,
    conflict: (detail: ConflictDetail) => emit('rhtmx:sync:conflict', detail),
    refetch: () => connection?.restart(),
    online: () => navigator.onLine,
    error: (error) => fail('push', error),
    log,
  });

  /** Live batches; a failed one reconnects, and the catch-up pull brings it again. */
  const live = liveApplier(replica, entities, (error) => {
    fail('live', error);
    connection?.restart();
  });

  /** Leader: pull everything (on every connect), then live changes resume from the lowest cursor. */
  const catchUp = async (): Promise<number> => {
    live.resume();
    // Stored for offline htmx in a page reopened offline.
    getSchema().catch(log);
    const cursors = await Promise.all(
      [...entities].map((entity) =>
        pull(entity).catch((error: SyncHttpError) => {
          // Storage failures (QuotaExceededError...) reach the app; network ones only retry.
          if (isStorageError(error)) fail('pull', error, entity);
          if (error.code !== 'unknown_entity') throw error;
          // A misconfigured entity must not stall the others: report it and stop syncing it.
          fail('pull', error, entity);
          entities.splice(entities.indexOf(entity), 1);
          return Infinity;
        }),
      ),
    );
    markReady();
    post({ r: 1 });
    return Math.min(...cursors.filter(Number.isFinite));
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
      onChange: live.apply,
      onState: setState,
    });
  };

  const started = (async () => {
    if (!entities.length) {
      entities.push(...(await getSchema()).entities.map((entity) => entity.name));
    }
    await db.write([...entities, META], clientIdIn);
    // Best effort: without it the browser may evict the outbox under storage pressure.
    navigator.storage?.persist?.().then((granted) => log('persistent storage', granted));
    withLocks = Boolean(navigator.locks);
    electLeader(becomeLeader);
    // The leader answers with its connection state and `r` once caught up.
    post({ w: entities });
  })();
  started.catch((error) => fail('storage', error));

  /** One row (`key`) or all rows of a store; undefined for a store that does not exist (unknown entities create none). */
  const read = async <T>(store: string, key?: string): Promise<T | undefined> => {
    await started;
    if (await db.has(store)) return db.read([store], (tx) => (key === undefined ? tx.all(store) : tx.get(store, key)) as Promise<T>);
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
    get: async (entity, id) => publicRow(await read<StoredRow>(entity, String(id))),
    all: async (entity) => ((await read<StoredRow[]>(entity)) ?? []).map(publicRow) as Row[],
    pending: async () => (await read<OutboxEntry[]>(OUTBOX)) ?? [],
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
