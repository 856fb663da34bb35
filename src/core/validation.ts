/**
 * Input validation for every request shape. Everything coming from the
 * network passes through here before the store sees it; failures become
 * SyncErrors (4xx with a message), never exceptions from the database.
 */
import type { SyncLimits } from './config.js';
import { badRequest, SyncError } from './errors.js';
import { parseClientTimestamp } from './hlc.js';
import { type ChangeAction, type ColumnSchema, ErrorCode, type PushChange, type Row } from './protocol.js';
import type { TableSchema, ValidatedChange } from './store.js';
import { decideValue, stringProblem, ValueError } from './values.js';

const ACTIONS: ReadonlySet<string> = new Set(['create', 'update', 'delete']);
/** Client ids are opaque but bounded: letters, digits and a few separators. */
const CLIENT_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Parse JSON text with a depth limit, rejecting prototype-polluting keys. */
export function parseJson(text: string, limits: Pick<SyncLimits, 'maxJsonDepth'>): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SyncError(ErrorCode.BadJson, `invalid JSON: ${(error as Error).message}`, 400);
  }
  checkDepth(value, limits.maxJsonDepth);
  return value;
}

function checkDepth(value: unknown, maxDepth: number): void {
  // Iterative walk: a recursive one could overflow the stack on hostile input.
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop() as [unknown, number];
    if (node === null || typeof node !== 'object') continue;
    if (depth > maxDepth) {
      throw new SyncError(ErrorCode.TooDeep, `JSON nested deeper than ${maxDepth} levels`, 400);
    }
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
}

/** A non-negative safe integer from a query parameter, or the fallback when absent. */
export function parseCursor(raw: string | null, name: string, fallback: number): number {
  if (raw === null || raw === '') return fallback;
  if (!/^\d{1,16}$/.test(raw)) {
    throw new SyncError(ErrorCode.BadCursor, `${name} must be a non-negative integer, got ${JSON.stringify(raw.slice(0, 40))}`);
  }
  const value = Number(raw);
  if (!Number.isSafeInteger(value)) throw new SyncError(ErrorCode.BadCursor, `${name} is too large`);
  return value;
}

/** Pull page size: default when absent, refused when out of range. */
export function parseLimit(raw: string | null, limits: Pick<SyncLimits, 'defaultPullLimit' | 'maxPullLimit'>): number {
  const limit = parseCursor(raw, 'limit', limits.defaultPullLimit);
  if (limit < 1 || limit > limits.maxPullLimit) {
    throw badRequest(`limit must be between 1 and ${limits.maxPullLimit}`);
  }
  return limit;
}

export const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * The envelope every push shares, entity and field-level alike: a JSON object
 * with an optional bounded `client_id` and a bounded `changes` array.
 */
export function pushEnvelope(
  body: unknown,
  limits: Pick<SyncLimits, 'maxPushChanges'>,
): { clientId: string | null; fresh: boolean; retry: number | null; changes: unknown[] } {
  if (!isPlainObject(body)) throw badRequest('push body must be a JSON object');
  const clientId = body.client_id ?? null;
  if (clientId !== null && (typeof clientId !== 'string' || !CLIENT_ID.test(clientId))) {
    throw badRequest('client_id must be 1-128 characters of letters, digits, "_", ".", ":" or "-"');
  }
  if (body.fresh !== undefined && typeof body.fresh !== 'boolean') throw badRequest('fresh must be true or false');
  const retry = body.retry;
  if (retry !== undefined && retry !== true && !(typeof retry === 'number' && Number.isFinite(retry) && retry >= 0)) {
    throw badRequest('retry must be the milliseconds since the first of these mutations was sent (or true)');
  }
  if (!Array.isArray(body.changes)) throw badRequest('push body needs a "changes" array');
  if (body.changes.length > limits.maxPushChanges) {
    throw new SyncError(ErrorCode.TooLarge, `at most ${limits.maxPushChanges} changes per push`, 413);
  }
  // `true`: sent before, when unknown; as old as anything.
  return {
    clientId,
    fresh: body.fresh === true,
    retry: retry === undefined ? null : retry === true ? Number.MAX_SAFE_INTEGER : retry,
    changes: body.changes,
  };
}

export interface ValidatedPush {
  clientId: string | null;
  /** The client says the server has never answered this id, or that it sent some of these before (core/store.ts ClientRecord). */
  fresh: boolean;
  /** Ms since the first of these mutations was first sent, when some were sent before. */
  retry: number | null;
  changes: ValidatedChange[];
}

/**
 * Validate a push body against the table's real columns. The whole batch is
 * refused (nothing written) when any change is malformed: a malformed change
 * is a client bug, unlike a conflict, which is a per-change outcome.
 */
export function validatePush(body: unknown, schema: TableSchema, limits: Pick<SyncLimits, 'maxPushChanges'>): ValidatedPush {
  const envelope = pushEnvelope(body, limits);
  const clientId = envelope.clientId;
  let lastMutation = -1;
  const changes = envelope.changes.map((raw, index) => {
    const change = validateChange(raw, index, schema);
    if (change.mutationId !== null) {
      if (clientId === null) throw badRequest(`changes[${index}]: mutation_id needs a client_id`);
      if (change.mutationId <= lastMutation) {
        throw badRequest(`changes[${index}]: mutation_id must increase within a push`);
      }
      lastMutation = change.mutationId;
    }
    return change;
  });
  return { clientId, fresh: envelope.fresh, retry: envelope.retry, changes };
}

const columnMaps = new WeakMap<TableSchema, Map<string, ColumnSchema>>();
function columnsOf(schema: TableSchema): Map<string, ColumnSchema> {
  let columns = columnMaps.get(schema);
  if (!columns) {
    columns = new Map(schema.columns.map((column) => [column.name, column]));
    columnMaps.set(schema, columns);
  }
  return columns;
}

/**
 * Normalise a row id to the string form used in the change log: a string of
 * at most 256 characters, or a finite number. NUL and unpaired surrogates are
 * refused on every store (core/values.ts).
 */
export function normaliseId(raw: unknown, where: string): string | null {
  if (raw === null || raw === undefined || raw === '') return null;
  if (typeof raw === 'number' && Number.isFinite(raw)) return String(raw);
  if (typeof raw === 'string' && raw.length <= 256) {
    const problem = stringProblem(raw);
    if (problem) throw badRequest(`${where}: id ${problem}`);
    return raw;
  }
  throw badRequest(`${where}: id must be a string (at most 256 characters) or a finite number`);
}

function validateChange(raw: unknown, index: number, schema: TableSchema): ValidatedChange {
  const where = `changes[${index}]`;
  if (!isPlainObject(raw)) throw badRequest(`${where} must be an object`);
  const change = raw as unknown as PushChange & Record<string, unknown>;
  if (typeof change.action !== 'string' || !ACTIONS.has(change.action)) {
    throw badRequest(`${where}: action must be one of create, update, delete`);
  }
  const action = change.action as ChangeAction;
  let mutationId: number | null = null;
  if (change.mutation_id !== undefined && change.mutation_id !== null) {
    if (!Number.isSafeInteger(change.mutation_id) || (change.mutation_id as number) < 0) {
      throw badRequest(`${where}: mutation_id must be a non-negative integer`);
    }
    mutationId = change.mutation_id as number;
  }
  let baseVersion: number | null = null;
  if (change.base_version !== undefined && change.base_version !== null) {
    if (!Number.isSafeInteger(change.base_version) || (change.base_version as number) < 0) {
      throw badRequest(`${where}: base_version must be a non-negative integer`);
    }
    baseVersion = change.base_version as number;
  }
  let timestamp: number | null = null;
  if (change.timestamp !== undefined && change.timestamp !== null) {
    timestamp = parseClientTimestamp(change.timestamp);
    if (timestamp === null) throw badRequest(`${where}: timestamp must be epoch ms, an HLC number or an ISO date`);
  }

  const data: Row = {};
  if (change.data !== undefined && change.data !== null) {
    if (!isPlainObject(change.data)) throw badRequest(`${where}: data must be an object`);
    const columns = columnsOf(schema);
    for (const [key, value] of Object.entries(change.data)) {
      const column = columns.get(key);
      if (!column) {
        throw new SyncError(
          ErrorCode.UnknownColumn,
          `${where}: unknown column ${JSON.stringify(key.slice(0, 64))} for ${schema.entity}`,
          400,
        );
      }
      // The key is checked as the id below; every other value is decided for its column now (400 when it cannot be stored).
      data[key] = key === schema.primaryKey ? value : decidedValue(column, value, where);
    }
  }
  const dataId = data[schema.primaryKey];
  let id = normaliseId(change.id ?? dataId, where);
  if (dataId !== undefined && dataId !== null && change.id !== undefined && change.id !== null) {
    if (String(dataId) !== String(change.id)) throw badRequest(`${where}: id and data.${schema.primaryKey} differ`);
  }
  if (id === null && action !== 'create') throw badRequest(`${where}: ${action} needs an id`);
  if (id !== null) id = id.trim() === '' ? null : id;
  // The key column is written from `id`, never from a second copy in data.
  delete data[schema.primaryKey];
  return { mutationId, id, action, data, baseVersion, timestamp };
}

/**
 * A pushed value as its column holds it, in the row's JSON shape (core/values.ts
 * decides); a value the column cannot hold refuses the push (400) naming the
 * column and the rule.
 */
export function decidedValue(column: ColumnSchema, value: unknown, where: string): unknown {
  try {
    return decideValue(column, value);
  } catch (error) {
    if (error instanceof ValueError) throw badRequest(`${where}: ${error.message}`);
    throw error;
  }
}
