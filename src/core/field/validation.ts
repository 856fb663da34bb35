/**
 * Validation of field pushes. Structural mistakes (unknown field, the primary
 * key, a malformed change) and values their column cannot hold (text for an
 * integer, an object for text, NUL: core/values.ts decides, as for entity
 * pushes) refuse the whole push with a 4xx before anything is written: they
 * are client bugs, and the client's flusher sends the changes of a refused
 * push one by one, so one bad edit never wedges its queue. What the database
 * refuses (NOT NULL, UNIQUE, CHECK) rejects only that change.
 */
import type { SyncLimits } from '../config.js';
import { badRequest, SyncError } from '../errors.js';
import { parseClientTimestamp } from '../hlc.js';
import { type ColumnSchema, ErrorCode, type FieldAction, ROW_FIELD } from '../protocol.js';
import type { FieldTarget, FieldValue, FieldWrite } from '../store.js';
import { decidedValue, isPlainObject, normaliseId, pushEnvelope } from '../validation.js';
import { columnValue, ValueError } from '../values.js';

/** Columns field sync can address: their names are spliced into JSON paths inside the capture trigger. */
export const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export interface ValidatedFieldPush {
  clientId: string | null;
  fresh: boolean;
  retry: number | null;
  changes: FieldWrite[];
}

/** The columns of a table that field sync may write: all but the primary key, with plain names. */
export function fieldColumns(columns: readonly ColumnSchema[]): ColumnSchema[] {
  return columns.filter((column) => !column.primaryKey && FIELD_NAME.test(column.name));
}

/** Validate `POST /api/field-sync/:entity` bodies (and `push_fields`, rewritten to this shape). */
export function validateFieldPush(body: unknown, target: FieldTarget, limits: Pick<SyncLimits, 'maxPushChanges'>): ValidatedFieldPush {
  const { clientId, fresh, retry, changes: raw } = pushEnvelope(body, limits);
  let lastMutation = -1;
  const changes = raw.map((raw, index) => {
    const change = validateFieldChange(raw, `changes[${index}]`, target);
    if (change.mutationId !== null) {
      if (clientId === null) throw badRequest(`changes[${index}]: mutation_id needs a client_id`);
      // Equal ids are allowed: several fields edited as one mutation.
      if (change.mutationId < lastMutation) throw badRequest(`changes[${index}]: mutation_id must not decrease within a push`);
      lastMutation = change.mutationId;
    }
    return change;
  });
  return { clientId, fresh, retry, changes };
}

function optionalCount(value: unknown, what: string): number | null {
  if (value === undefined || value === null) return null;
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw badRequest(`${what} must be a non-negative integer`);
  return value as number;
}

function validateFieldChange(raw: unknown, where: string, target: FieldTarget): FieldWrite {
  if (!isPlainObject(raw)) throw badRequest(`${where} must be an object`);
  const { schema } = target;
  const entityId = normaliseId(raw.entity_id ?? raw.id, where);
  if (entityId === null || entityId.trim() === '') throw badRequest(`${where}: entity_id is required`);
  const action = raw.action ?? 'update';
  if (action !== 'update' && action !== 'delete') throw badRequest(`${where}: action must be "update" or "delete"`);
  if (typeof raw.field !== 'string' || raw.field === '') throw badRequest(`${where}: field must be a column name`);
  const field = raw.field;
  const mutationId = optionalCount(raw.mutation_id, `${where}: mutation_id`);
  const baseVersion = optionalCount(raw.base_version, `${where}: base_version`);
  let timestamp: number | null = null;
  if (raw.timestamp !== undefined && raw.timestamp !== null) {
    timestamp = parseClientTimestamp(raw.timestamp);
    if (timestamp === null) throw badRequest(`${where}: timestamp must be epoch ms, an HLC number or an ISO date`);
  }
  const base = { mutationId, entityId, field, action: action as FieldAction, timestamp, baseVersion };

  if (field === ROW_FIELD) {
    if (action !== 'delete') throw badRequest(`${where}: field "*" (the whole row) only takes action "delete"`);
    return { ...base, value: null, json: null, clientValue: null, invalid: null };
  }
  if (field === schema.primaryKey) {
    throw badRequest(`${where}: ${JSON.stringify(field)} is the primary key of ${schema.entity}; it cannot be changed field by field`);
  }
  const column = target.fields.find((candidate) => candidate.name === field);
  if (!column) {
    throw new SyncError(ErrorCode.UnknownColumn, `${where}: unknown field ${JSON.stringify(field.slice(0, 64))} for ${schema.entity}`, 400);
  }
  if (action === 'update' && !('value' in raw)) throw badRequest(`${where}: update needs a value`);
  // Deleting a single field clears it. NOT NULL is the database's to refuse (a rejected change).
  const clientValue = action === 'delete' ? null : raw.value;
  const json = decidedValue(column, clientValue, where);
  return { ...base, value: columnValue(column, json), json, clientValue, invalid: null };
}

type Coerced = { ok: true; value: FieldValue } | { ok: false; reason: string };

/**
 * A value (an app schema's output) as its column binds it, by the one value
 * semantics of core/values.ts, or why it cannot be stored.
 */
export function coerceFieldValue(column: ColumnSchema, value: unknown): Coerced {
  try {
    return { ok: true, value: columnValue(column, value) };
  } catch (error) {
    if (error instanceof ValueError) return { ok: false, reason: error.rule };
    throw error;
  }
}
