/**
 * FieldSync: the original crate's `window.RHTMXFieldSync`, composed on top of the
 * entity client (`window.rhtmxSync`) that the same bundle starts.
 *
 * - Values: field edits are written into the entity client's IndexedDB rows,
 *   so lists, `get`/`all` and `rhtmx:<entity>:changed` see them at once;
 *   server values come back through the entity connection (field writes are
 *   logged as ordinary row changes), and pending field edits are re-applied
 *   whenever a newer server row lands (see outbox.ts).
 * - Network: only the entity leader tab talks to the server. It learns it
 *   leads, and whether the entity connection is live, from
 *   `rhtmx:connection:state`; its field socket lives while that connection
 *   does. Other tabs write the shared field outbox and nudge the leader over
 *   `BroadcastChannel('rhtmx-field')`, which also carries row changes and
 *   conflict events to every tab.
 */

import { type FieldAction, type FieldPushResult, type LatestFieldsResponse, ROW_FIELD } from '../../core/protocol.js';
import { type ChangedDetail, changeEvents, dispatch, type RowChange } from '../events.js';
import { tabChannel } from '../leader.js';
import { openDb } from '../local/idb.js';
import type { StoredRow } from '../local/replica.js';
import { META } from '../local/store.js';
import { http, type SyncHttpError } from '../net/http.js';
import { pushResults } from '../net/rpc.js';
import type { ConnectionStateDetail, SyncClient } from '../sync-client.js';
import type { FieldConflictDetail, FieldOutboxOptions, StoredFieldChange } from './outbox.js';
import { FIELD_OUTBOX, FIELD_SEEN, fieldFlusher, overlay, pendingFields, record, writeRow } from './outbox.js';
import { fieldSocket } from './socket.js';

export type { FieldConflictDetail } from './outbox.js';

/** Options of `createFieldSync` (the script tag's `data-*` attributes). */
export interface FieldSyncOptions {
  /** The entity client this one writes through (`window.rhtmxSync`). */
  sync: SyncClient;
  /** Base URL of the field routes, e.g. `https://app.example/api/field-sync`. */
  baseUrl: string;
  /** Entities whose rows may have pending field edits (`data-sync-entities`); others are added as they are edited. */
  entities?: string[];
  /** `data-field-strategy`: used in conflict events only when the server did not say (HTTP-only clients). */
  strategy?: string;
  /** `data-use-websocket`; default true. False: pushes over HTTP POST. */
  useWebSocket?: boolean;
  /** IndexedDB database name; must be the entity client's. Default `rhtmx-sync`. */
  dbName?: string;
}

/** A field edit waiting for the server (what `pending()` returns): the stored change, its id as `mutation_id`. */
export type PendingFieldChange = Omit<StoredFieldChange, 'id'> & {
  /** Per-client field mutation id (its own sequence, separate from entity pushes). */
  mutation_id: number;
};

/** The `window.RHTMXFieldSync` API. */
export interface FieldSync {
  /** Resolves once the entity client is ready and the field outbox is open. */
  readonly ready: Promise<void>;
  /** Set one field of a row locally at once and queue it for the server; resolves once durable in IndexedDB. */
  recordFieldChange(entity: string, id: string | number, field: string, value: unknown): Promise<PendingFieldChange>;
  /** Delete a row locally at once and queue the delete (`{field: '*', action: 'delete'}`). */
  deleteRow(entity: string, id: string | number): Promise<PendingFieldChange>;
  /** Every field of one row as the server has it now, with versions (null: the row never existed). */
  latest(entity: string, id: string | number): Promise<LatestFieldsResponse | null>;
  /** Field edits not yet answered by the server, oldest first. */
  pending(): Promise<PendingFieldChange[]>;
}

/** Conflict reasons start with the strategy that decided them. */
const STRATEGY = /^(last-write-wins|keep-both|server-wins):/;

const publicChange = ({ id, ...rest }: StoredFieldChange): PendingFieldChange => ({ mutation_id: id, ...rest });

/** Start field sync next to a running entity client; returns the `window.RHTMXFieldSync` API. */
export function createFieldSync(options: FieldSyncOptions): FieldSync {
  const base = options.baseUrl.replace(/\/+$/, '');
  const { sync } = options;
  const db = openDb(options.dbName ?? 'rhtmx-sync');
  const server = http(base);
  const log = (...args: unknown[]) => sync.log('field', ...args);
  const path = (...parts: string[]) => parts.map((part) => `/${encodeURIComponent(part)}`).join('');
  let leader = false;
  const watched = new Set<string>();

  const fire = changeEvents();
  // Its own channel: `f` here asks the leader to flush the field outbox, not the entity one.
  const post = tabChannel<{ c?: RowChange[]; e?: [string, unknown]; f?: 1 }>('rhtmx-field', (message) => {
    if (message.c) fire(message.c);
    if (message.e) dispatch(...message.e);
    if (message.f && leader) void flush();
  });
  const changed = (rows: RowChange[]) => {
    if (!rows.length) return;
    fire(rows);
    post({ c: rows });
  };
  const emit = (name: string, detail: unknown) => {
    dispatch(name, detail);
    post({ e: [name, detail] });
  };
  const fail = (error: unknown, entity?: string) => {
    log(error);
    const { name, message } = error as Error;
    emit('rhtmx:sync:error', { op: 'field', entity, name, message });
  };

  const socket = fieldSocket(`${base.replace(/^http/, 'ws')}/ws`, () => void flush());

  const send: FieldOutboxOptions['send'] = (entity, id, changes, as) =>
    pushResults<FieldPushResult>(socket.request({ type: 'push_fields', entity, entity_id: id, ...as, fields: changes }), () =>
      server(path(entity), { ...as, changes }),
    );

  /** A row's fields as the server has them now: on the socket when it answers, else over HTTP; null when not found. */
  const latest = async (entity: string, id: string | number): Promise<LatestFieldsResponse | null> => {
    try {
      const reply = await socket.request({ type: 'latest', entity, entity_id: id })?.catch((error: SyncHttpError) => {
        if (error.code === 'not_found') throw error;
        return null;
      });
      return reply?.type === 'latest' ? reply : await server<LatestFieldsResponse>(path(entity, String(id), 'latest'));
    } catch (error) {
      if ((error as SyncHttpError).code === 'not_found') return null;
      throw error;
    }
  };

  const flush = fieldFlusher({
    db,
    send,
    latest,
    changed,
    conflict: (detail) =>
      emit('rhtmx:field:conflict', {
        ...detail,
        strategy: socket.strategy ?? STRATEGY.exec(detail.result.reason ?? '')?.[1] ?? options.strategy ?? '',
      } satisfies FieldConflictDetail),
    online: () => navigator.onLine,
    error: fail,
    log,
  });

  // The entity leader dispatches its own state with `leader: true`; followers get `leader: false` copies.
  document.addEventListener('rhtmx:connection:state', (event) => {
    const { state, leader: leads } = (event as CustomEvent<ConnectionStateDetail>).detail;
    if (!leads) return;
    leader = true;
    if (state !== 'websocket' && state !== 'sse') socket.close();
    else if (options.useWebSocket !== false) socket.open();
    else void flush();
  });

  /** Re-apply pending field edits of these rows (all rows with some when `ids` is absent) over the stored rows. */
  const rebase = async (entity: string, ids?: string[]) => {
    const rows = await db.write([entity, FIELD_OUTBOX], async (tx) => {
      const pending = await pendingFields(tx, entity);
      const touched: RowChange[] = [];
      for (const id of new Set(pending.map((change) => change.entity_id))) {
        if (ids && !ids.includes(id)) continue;
        const row = await tx.get<StoredRow>(entity, id);
        touched.push(...writeRow(tx, entity, id, row, overlay(row, id, pending)));
      }
      return touched;
    });
    changed(rows);
  };

  /** Follow the entity client's row changes of `entity`: a newer server row must not hide a pending edit. */
  const watch = (entity: string) => {
    if (watched.has(entity)) return;
    watched.add(entity);
    document.addEventListener(`rhtmx:${entity}:changed`, (event) => {
      rebase(entity, (event as CustomEvent<ChangedDetail>).detail.ids).catch((error) => fail(error, entity));
    });
  };

  const started = (async () => {
    const queue = await db.write([META, FIELD_OUTBOX, FIELD_SEEN], async (tx) => {
      return tx.all<StoredFieldChange>(FIELD_OUTBOX);
    });
    for (const entity of options.entities ?? []) watch(entity);
    // Rows may have been replaced while no field client ran (a page with client.js only).
    for (const entity of new Set(queue.map((change) => change.entity))) {
      watch(entity);
      await rebase(entity);
    }
  })();
  started.catch(fail);

  const submit = async (entity: string, id: string | number, field: string, action: FieldAction, value?: unknown) => {
    if (!field) throw new TypeError('field must be a column name');
    await started;
    watch(entity);
    try {
      const [change, rows] = await record(db, entity, String(id), field, action, value);
      changed(rows);
      if (leader) void flush();
      else post({ f: 1 });
      return publicChange(change);
    } catch (error) {
      fail(error, entity);
      throw error;
    }
  };

  return {
    ready: Promise.all([sync.ready, started]).then(() => {}),
    recordFieldChange: (entity, id, field, value) => submit(entity, id, field === ROW_FIELD ? '' : field, 'update', value),
    deleteRow: (entity, id) => submit(entity, id, ROW_FIELD, 'delete'),
    latest,
    async pending() {
      await started;
      return (await db.read([FIELD_OUTBOX], (tx) => tx.all<StoredFieldChange>(FIELD_OUTBOX))).map(publicChange);
    },
  };
}
