/**
 * Validation of field pushes. Structural mistakes (unknown field, the primary
 * key, a malformed change) refuse the whole push with a 4xx before anything
 * is written: they are client bugs. A value that cannot be stored in its
 * column (text for an integer, null for NOT NULL) rejects only that change,
 * so one bad edit never wedges a client's queue.
 */
import type { SyncLimits } from '../config.js';
import { badRequest, SyncError } from '../errors.js';
import { parseClientTimestamp } from '../hlc.js';
import { type ColumnSchema, ErrorCode, type FieldAction, ROW_FIELD } from '../protocol.js';
import type { FieldTarget, FieldValue, FieldWrite } from '../store.js';
import { isPlainObject, normaliseId, pushEnvelope } from '../validation.js';

/** Columns field sync can address: their names are spliced into JSON paths inside the capture trigger. */
export const FIELD_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export interface ValidatedFieldPush {
  clientId: string | null;
  changes: FieldWrite[];
}

/** The columns of a table that field sync may write: all but the primary key, with plain names. */
export function fieldColumns(columns: readonly ColumnSchema[]): ColumnSchema[] {
  return columns.filter((column) => !column.primaryKey && FIELD_NAME.test(column.name));
}

/** Validate `POST /api/field-sync/:entity` bodies (and `push_fields`, rewritten to this shape). */
export function validateFieldPush(body: unknown, target: FieldTarget, limits: Pick<SyncLimits, 'maxPushChanges'>): ValidatedFieldPush {
  const { clientId, changes: raw } = pushEnvelope(body, limits);
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
  return { clientId, changes };
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
  // Deleting a single field clears it.
  const clientValue = action === 'delete' ? null : raw.value;
  const coerced = coerceFieldValue(column, clientValue);
  return {
    ...base,
    value: coerced.ok ? coerced.value : null,
    json: coerced.ok ? fieldJson(column, coerced.value) : null,
    clientValue,
    invalid: coerced.ok ? null : `${field}: ${coerced.reason}`,
  };
}

/** A coerced value as the row's JSON shows it: what clients read back, and what rules and schemas see. */
export function fieldJson(column: ColumnSchema, value: FieldValue): unknown {
  if (value === null) return null;
  if (value instanceof Uint8Array) return toHex(value);
  if (column.type === 'json' && typeof value === 'string') {
    try {
      return JSON.parse(value);
    } catch {
      return value;
    }
  }
  return value;
}

type Coerced = { ok: true; value: FieldValue } | { ok: false; reason: string };

const INTEGER_TEXT = /^\s*-?\d{1,16}\s*$/;
const NUMBER_TEXT = /^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;
const HEX = /^(?:[0-9a-fA-F]{2})*$/;

/**
 * Coerce a JSON value to what the column stores: form-ish strings become
 * numbers and booleans, numbers become text for text columns, objects become
 * JSON text. Anything that would change meaning is refused instead.
 */
export function coerceFieldValue(column: ColumnSchema, value: unknown): Coerced {
  if (value === null || value === undefined) {
    return column.nullable ? { ok: true, value: null } : { ok: false, reason: 'cannot be null' };
  }
  switch (column.type) {
    case 'integer': {
      if (typeof value === 'boolean') return { ok: true, value: value ? 1 : 0 };
      const number = typeof value === 'string' && INTEGER_TEXT.test(value) ? Number(value) : value;
      if (typeof number === 'number' && Number.isSafeInteger(number)) return { ok: true, value: number };
      return { ok: false, reason: 'must be an integer' };
    }
    case 'number': {
      if (typeof value === 'boolean') return { ok: true, value: value ? 1 : 0 };
      const number = typeof value === 'string' && NUMBER_TEXT.test(value) ? Number(value) : value;
      if (typeof number === 'number' && Number.isFinite(number)) return { ok: true, value: number };
      return { ok: false, reason: 'must be a finite number' };
    }
    case 'boolean': {
      if (typeof value === 'boolean') return { ok: true, value };
      if (value === 0 || value === 1) return { ok: true, value: value === 1 };
      if (typeof value === 'string') {
        const text = value.trim().toLowerCase();
        if (['true', '1', 'on', 'yes'].includes(text)) return { ok: true, value: true };
        if (['false', '0', 'off', 'no', ''].includes(text)) return { ok: true, value: false };
      }
      return { ok: false, reason: 'must be a boolean' };
    }
    case 'json':
      return { ok: true, value: JSON.stringify(value) };
    case 'blob':
      if (typeof value === 'string' && HEX.test(value)) return { ok: true, value: fromHex(value) };
      return { ok: false, reason: 'must be a hex string' };
    default: {
      if (typeof value === 'string') return { ok: true, value };
      if (typeof value === 'number')
        return Number.isFinite(value) ? { ok: true, value: String(value) } : { ok: false, reason: 'must be finite' };
      if (typeof value === 'boolean') return { ok: true, value: String(value) };
      return { ok: true, value: JSON.stringify(value) };
    }
  }
}

/** Upper-case hex of bytes, as SQLite's hex() and the row JSON show blobs. */
function toHex(bytes: Uint8Array): string {
  let text = '';
  for (const byte of bytes) text += byte.toString(16).padStart(2, '0');
  return text.toUpperCase();
}

function fromHex(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length / 2);
  for (let index = 0; index < bytes.length; index++) bytes[index] = Number.parseInt(text.slice(index * 2, index * 2 + 2), 16);
  return bytes;
}
