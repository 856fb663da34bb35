/**
 * Wire vocabulary of field-level sync (`/api/field-sync/*`), shared by the
 * server and, later, the browser's field client.
 *
 * Like core/protocol.ts this file must stay dependency-free and free of Node
 * APIs so esbuild can inline it into the browser bundle.
 * docs/field-sync.md is the prose version of these types.
 */

/** What happened to a field. `delete` with field {@link ROW_FIELD} deletes the whole row. */
export type FieldAction = 'update' | 'delete';

/** The pseudo-field that stands for the whole row: `{field: '*', action: 'delete'}` deletes it. */
export const ROW_FIELD = '*';

/** One field's change as it travels to clients (pull pages and live `field_change` messages). */
export interface FieldChange {
  entity: string;
  /** The row's primary key, as a string. */
  entity_id: string;
  /** Column name, or `*` for a row delete. */
  field: string;
  /** The field's value after the change, as the row's JSON shows it; `null` for row deletes. */
  value: unknown;
  /** The change-log version of the write that last changed this field. */
  version: number;
  /** Hybrid logical clock timestamp of that write (see core/hlc.ts). */
  hlc: number;
  /** The client whose push wrote it; null for writes made by app code or raw SQL. */
  client_id: string | null;
  action: FieldAction;
}

/** `GET /api/field-sync/:entity?since=V` answer. */
export interface FieldPullResponse {
  entity: string;
  /** Cursor to continue from: every field change up to this version is included or superseded. */
  version: number;
  /** Oldest first; only each field's latest state (a field changed twice appears once). */
  changes: FieldChange[];
  /** More pages follow: pull again with `since=version`, or with `snapshot=next` during a snapshot. */
  has_more: boolean;
  /** `since=0`: `changes` is a snapshot of every field of every current row. */
  reset?: boolean;
  /** Snapshot pagination token: pass back as `?since=0&snapshot=<next>`. */
  next?: string;
}

/** One field change a client pushes. */
export interface FieldPushChange {
  /** Per-client increasing number (equal numbers group changes into one mutation); retries are applied once. */
  mutation_id?: number;
  entity_id: string | number;
  /** Column name, or `*` with action `delete` to delete the row. */
  field: string;
  /** New value; coerced to the column's type. Required for `update`. */
  value?: unknown;
  /** `update` (default) or `delete` (`*`: delete the row; a column: set it to NULL). */
  action?: FieldAction;
  /** When the client made the edit: a packed HLC number, epoch milliseconds or an ISO date. */
  timestamp?: number | string | null;
  /** The field's version the client last saw; enables conflict detection (server-wins, keep-both). */
  base_version?: number | null;
}

/** `POST /api/field-sync/:entity` body. */
export interface FieldPushRequest {
  client_id?: string;
  changes: FieldPushChange[];
}

export type FieldPushStatus = 'applied' | 'conflict' | 'rejected';

/** What happened to one pushed field change. */
export interface FieldPushResult {
  mutation_id?: number;
  entity_id: string;
  field: string;
  status: FieldPushStatus;
  /** The field's version now (applied: the write's version; conflict: the server's). */
  version?: number;
  /** The field's HLC now. */
  hlc?: number;
  /** Applied: the value stored (after coercion). */
  value?: unknown;
  /** Conflict: the value the server kept. */
  server_value?: unknown;
  /** Conflict: the value the client sent (keep-both: the app decides between the two). */
  client_value?: unknown;
  /** Why a change was a conflict or rejected. */
  reason?: string;
  /** This mutation id was applied before; nothing was written now. */
  duplicate?: boolean;
  /** Rejected by the entity's schema: what was wrong. */
  issues?: Array<{ message: string; path?: string }>;
}

/** `POST /api/field-sync/:entity` answer. */
export interface FieldPushResponse {
  entity: string;
  results: FieldPushResult[];
  /** How many results are `applied`. */
  applied: number;
  /** How many results are `conflict`. */
  conflicts: number;
  /** How many results are `rejected`. */
  rejected: number;
  /** Highest change-log version after the push. */
  version: number;
}

/** The current state of one field. */
export interface FieldState {
  value: unknown;
  version: number;
  hlc: number;
  client_id: string | null;
}

/** `GET /api/field-sync/:entity/:entity_id/latest` answer. */
export interface LatestFieldsResponse {
  entity: string;
  entity_id: string;
  /** The row was deleted (`fields` is then empty; `version`/`hlc` are the delete's). */
  deleted: boolean;
  /** Highest version among the row's fields. */
  version: number;
  /** Highest HLC among the row's fields. */
  hlc: number;
  fields: Record<string, FieldState>;
}

/** Live field changes: one batch, encoded once and shared by every subscriber with the same entities. */
export interface FieldChangeMessage {
  type: 'field_change';
  /** Every field change up to this version for the subscribed entities has been sent. */
  version: number;
  changes: FieldChange[];
  /** Present when the batch holds exactly one change (the seed's single-change shape). */
  change?: FieldChange;
}

type Ref = string | number;

/** One field of a `push_fields` message. */
export interface PushFieldsEntry {
  field: string;
  value?: unknown;
  action?: FieldAction;
  timestamp?: number | string | null;
  base_version?: number | null;
  mutation_id?: number;
}

/** Messages a client sends on `/api/field-sync/ws`. `ref` is echoed in the reply. */
export type FieldClientMessage =
  | { type: 'subscribe'; entities: string[]; since?: number; ref?: Ref }
  | { type: 'unsubscribe'; entities: string[]; ref?: Ref }
  | { type: 'sync'; entity: string; since?: number; limit?: number; snapshot?: string; ref?: Ref }
  | {
      type: 'push_fields';
      entity: string;
      entity_id: string | number;
      fields: PushFieldsEntry[];
      client_id?: string;
      /** Applies to every field that does not carry its own. */
      mutation_id?: number;
      ref?: Ref;
    }
  | { type: 'latest'; entity: string; entity_id: string | number; ref?: Ref }
  | { type: 'ping'; t?: number; ref?: Ref };

/** Messages the server sends on `/api/field-sync/ws`. */
export type FieldServerMessage =
  | { type: 'hello'; version: number; server_time: number; entities: string[]; strategy: string }
  | { type: 'subscribed'; entities: string[]; version: number; ref?: Ref }
  | { type: 'unsubscribed'; entities: string[]; ref?: Ref }
  | ({ type: 'sync'; ref?: Ref } & FieldPullResponse)
  | ({ type: 'latest'; ref?: Ref } & LatestFieldsResponse)
  | {
      type: 'push_ack';
      entity: string;
      entity_id: string;
      applied: number;
      conflicts: number;
      rejected: number;
      version: number;
      results: FieldPushResult[];
      ref?: Ref;
    }
  | FieldChangeMessage
  | { type: 'pong'; t?: number; server_time: number; ref?: Ref }
  | { type: 'error'; code: string; message: string; ref?: Ref };
