/**
 * One value semantics for every store: what a pushed value means for its
 * column, decided once here for entity pushes, field pushes and the rows an
 * app's resolver or schema hands back. Stores only bind what this module
 * decided; neither SQLite's dynamic typing nor PostgreSQL's input parsers get
 * a say. The rules (docs/protocol.md, "Values"; every one is a row of
 * test/value-matrix.test.ts, run on both stores):
 *
 * - `null` is null; a NOT NULL column refuses it in the database (a rejected
 *   change, `NOT NULL constraint failed: <table>.<column>`).
 * - integer: safe integers, integer text (`"42"`, `" -7 "`), booleans (1/0).
 * - number: finite numbers, numeric text (`"4.5"`, `"1e3"`), booleans (1/0).
 * - boolean: `true`/`false`, `1`/`0`, and the text `true`/`false`, `1`/`0`,
 *   `yes`/`no`, `on`/`off` (any case, trimmed), `""` (false: an empty form field).
 * - text: strings as sent; finite numbers become their JavaScript text
 *   (`4.5` → `"4.5"`), booleans `"true"`/`"false"`.
 * - json: any JSON value, stored as JSON (a string stays a string).
 * - blob: hex text (even length), stored as bytes, read back as upper-case hex.
 * - Objects and arrays fit json columns only.
 * - No string anywhere (text, JSON strings and keys, ids) may hold NUL
 *   (U+0000: PostgreSQL cannot store it) or an unpaired UTF-16 surrogate (no
 *   UTF-8 encoding exists: one store would replace it, the other store bytes
 *   no reader can decode).
 *
 * Pure and synchronous: no driver, no Node global (bytes are Uint8Array).
 */
import type { ColumnSchema } from './protocol.js';

/** A value ready to bind: booleans stay booleans (each dialect binds them its way), JSON is text, blobs are bytes. */
export type ColumnValue = string | number | boolean | Uint8Array | null;

/** A value its column cannot hold: names the column and the rule. Pushes answer it with 400; a resolver's or schema's output with a rejected change. */
export class ValueError extends Error {
  constructor(
    readonly column: string,
    readonly rule: string,
  ) {
    super(`${column} ${rule}`);
    this.name = 'ValueError';
  }
}

/** The rules' words, as refusals quote them. */
export const VALUE_RULES = {
  integer: 'must be an integer (a safe integer or integer text such as "42")',
  number: 'must be a finite number (a number or numeric text such as "4.5")',
  boolean: 'must be a boolean (true/false, 1/0, or "true"/"false", "1"/"0", "yes"/"no", "on"/"off", "")',
  text: 'must be a string, a finite number or a boolean',
  blob: 'must be hex text of even length (bytes)',
  object: 'is an object or array: only json columns hold those',
  nul: 'must not contain NUL (U+0000) characters',
  surrogate: 'must not contain unpaired UTF-16 surrogates',
  finite: 'must be a finite number',
  json: 'must be a JSON value',
} as const;

const INTEGER_TEXT = /^\s*-?\d{1,16}\s*$/;
const NUMBER_TEXT = /^\s*-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$/;
const HEX = /^(?:[0-9a-fA-F]{2})*$/;
const TRUE_WORDS: ReadonlySet<string> = new Set(['true', '1', 'yes', 'on']);
const FALSE_WORDS: ReadonlySet<string> = new Set(['false', '0', 'no', 'off', '']);
/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why a string cannot be stored on every store (NUL, an unpaired surrogate), or null when it can. */
export function stringProblem(text: string): string | null {
  if (text.includes('\u0000')) return VALUE_RULES.nul;
  if (LONE_SURROGATE.test(text)) return VALUE_RULES.surrogate;
  return null;
}

/** Throws a ValueError for `name` when the string cannot be stored on every store. */
function checkString(name: string, text: string): string {
  const problem = stringProblem(text);
  if (problem) throw new ValueError(name, problem);
  return text;
}

/**
 * Every string of a JSON value (keys too) checked; iterative, so hostile nesting cannot overflow the
 * stack, and each object visited once (a resolver's output may share or even cycle objects).
 */
function checkJson(name: string, value: unknown): void {
  const stack: unknown[] = [value];
  const seen = new Set<object>();
  while (stack.length > 0) {
    const node = stack.pop();
    if (typeof node === 'string') checkString(name, node);
    else if (typeof node === 'number' && !Number.isFinite(node)) throw new ValueError(name, VALUE_RULES.finite);
    else if (node !== null && typeof node === 'object' && !seen.has(node)) {
      seen.add(node);
      for (const [key, child] of Object.entries(node)) {
        checkString(name, key);
        stack.push(child);
      }
    }
  }
}

/**
 * A value as its column holds it, in the row's JSON shape: what pulls, write
 * rules and schemas see (numbers, booleans, text, any JSON value, blobs as
 * upper-case hex). Idempotent: a decided value (or a row read back) decides to
 * itself. Throws a ValueError naming the column and the rule.
 */
export function decideValue(column: ColumnSchema, value: unknown): unknown {
  const { name } = column;
  if (value === null || value === undefined) return null;
  if (column.type === 'json') {
    checkJson(name, value);
    return value;
  }
  if (typeof value === 'object') throw new ValueError(name, VALUE_RULES.object);
  switch (column.type) {
    case 'integer': {
      if (typeof value === 'boolean') return value ? 1 : 0;
      const number = typeof value === 'string' && INTEGER_TEXT.test(value) ? Number(value) : value;
      if (typeof number === 'number' && Number.isSafeInteger(number)) return number === 0 ? 0 : number;
      throw new ValueError(name, VALUE_RULES.integer);
    }
    case 'number': {
      if (typeof value === 'boolean') return value ? 1 : 0;
      const number = typeof value === 'string' && NUMBER_TEXT.test(value) ? Number(value) : value;
      if (typeof number === 'number' && Number.isFinite(number)) return number === 0 ? 0 : number;
      throw new ValueError(name, VALUE_RULES.number);
    }
    case 'boolean': {
      if (typeof value === 'boolean') return value;
      if (value === 1 || value === 0) return value === 1;
      if (typeof value === 'string') {
        const word = value.trim().toLowerCase();
        if (TRUE_WORDS.has(word)) return true;
        if (FALSE_WORDS.has(word)) return false;
      }
      throw new ValueError(name, VALUE_RULES.boolean);
    }
    case 'blob':
      if (typeof value === 'string' && HEX.test(value)) return value.toUpperCase();
      throw new ValueError(name, VALUE_RULES.blob);
    default: {
      if (typeof value === 'string') return checkString(name, value);
      if (typeof value === 'number') {
        if (!Number.isFinite(value)) throw new ValueError(name, VALUE_RULES.finite);
        return String(value);
      }
      if (typeof value === 'boolean') return String(value);
      throw new ValueError(name, VALUE_RULES.text);
    }
  }
}

/**
 * A decided value (or any value: it is decided first) as the store binds it:
 * JSON columns as JSON text, blobs as bytes, the rest as decided. Throws a
 * ValueError naming the column and the rule.
 */
export function columnValue(column: ColumnSchema, value: unknown): ColumnValue {
  const decided = decideValue(column, value);
  if (decided === null) return null;
  if (column.type === 'json') {
    // A pushed value always serialises; a resolver's may not (a cycle, a bigint).
    try {
      return JSON.stringify(decided);
    } catch {
      throw new ValueError(column.name, VALUE_RULES.json);
    }
  }
  if (column.type === 'blob') return fromHex(decided as string);
  return decided as ColumnValue;
}

function fromHex(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length / 2);
  for (let index = 0; index < bytes.length; index++) bytes[index] = Number.parseInt(text.slice(index * 2, index * 2 + 2), 16);
  return bytes;
}

// ─── Refused writes: one wording for every store ─────────────────────────────

/** The constraint kinds a refused write names. */
export type ConstraintKind = 'NOT NULL' | 'UNIQUE' | 'CHECK' | 'FOREIGN KEY';

/** Names shown in a reason: plain identifiers, optionally `table.column`; anything else could be SQL text or a value. */
const PLAIN_NAME = /^[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?$/;

/**
 * The reason of a change a constraint refused, worded alike on every store:
 * `UNIQUE constraint failed: todos.email`, `CHECK constraint failed: positive`.
 * `names` are the columns (`table.column`) or the constraint's name; they
 * are shown only when every one is a plain identifier (never SQL text, never
 * a value), else the reason names the kind alone.
 */
export function constraintFailed(kind: ConstraintKind, names: readonly string[] = []): string {
  const shown = names.length > 0 && names.every((name) => PLAIN_NAME.test(name));
  return `${kind} constraint failed${shown ? `: ${names.join(', ')}` : ''}`;
}

/** The other reasons a store gives a refused write; never SQL text, never a value. */
export const WRITE_REFUSALS = {
  mismatch: 'datatype mismatch',
  tooLong: 'value too long',
  outOfRange: 'value out of range',
  generated: 'cannot write a generated column',
  trigger: 'refused by a trigger',
  constraint: 'constraint failed',
  failed: 'write failed',
} as const;
