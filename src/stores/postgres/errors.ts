/**
 * What a PostgreSQL error means for a push, in one place for entity and field
 * pushes alike: retry the transaction, reject one change, or fail the push.
 * Clients see only `describeWriteError`'s words, worded by core/values.ts
 * exactly as the SQLite store words them: the columns (`table.column`) or the
 * constraint's name, never SQL text or a value.
 */
import { constraintFailed, ValueError, WRITE_REFUSALS } from '../../core/values.js';

/** A deadlock or serialization failure: PostgreSQL killed this transaction, and running it again may succeed. */
export function isRetryable(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === '40P01' || code === '40001';
}

/** Two creators of one row raced and the other committed first (unique violation). */
export function isUniqueViolation(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === '23505';
}

/**
 * SQLSTATE classes that mean "this change is bad", as opposed to "the
 * connection or the transaction is gone": the change is rejected alone.
 */
export function isChangeError(error: unknown): boolean {
  // A value its column cannot hold (a resolver's or schema's output): that change alone is rejected.
  if (error instanceof ValueError) return true;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || code.length !== 5 || isRetryable(error)) return false;
  // 22 data exception, 23 integrity constraint, 42 syntax/access (e.g. writing a generated column), P0 raised in a trigger.
  return ['22', '23', '42', 'P0', '2F', '39'].includes(code.slice(0, 2));
}

/** Fixed words for data errors. */
const DATA_ERRORS: Record<string, string> = {
  ...Object.fromEntries(['22P02', '22007', '22008', '22023', '22021', '22P05'].map((code) => [code, WRITE_REFUSALS.mismatch])),
  '22001': WRITE_REFUSALS.tooLong,
  '22003': WRITE_REFUSALS.outOfRange,
  '428C9': WRITE_REFUSALS.generated,
  P0001: WRITE_REFUSALS.trigger,
};

/**
 * The key columns of a unique violation, from its detail `Key (a, "B")=(…) already exists.`
 * (the parenthesised list comes first in every translation). Null for an index on
 * expressions (`Key (lower(email))=…`), which SQLite names by its index instead.
 * Anchored at the first parenthesis, so nothing of the value part is ever read.
 */
function keyColumns(detail: unknown): string[] | null {
  if (typeof detail !== 'string') return null;
  const list = /^[^("]*\(((?:[^()"]|"(?:[^"]|"")*")*)\)=\(/.exec(detail)?.[1];
  if (list === undefined) return null;
  return list.split(', ').map((name) => (/^"(?:[^"]|"")*"$/.test(name) ? name.slice(1, -1).replaceAll('""', '"') : name));
}

/** PostgreSQL's own name for an unnamed CHECK (`<table>_<columns>_check`, `<table>_check`, a digit on clashes). */
function isGeneratedCheckName(constraint: string, table: string): boolean {
  return constraint.startsWith(`${table}_`) && /_check\d*$/.test(constraint);
}

/**
 * The reason a rejected change reports, in SQLite's words: NOT NULL and UNIQUE name the
 * columns as `table.column`, a unique index on expressions and a named CHECK their name,
 * an unnamed CHECK and a foreign key only their kind (SQLite cannot name those); anything
 * else is fixed words. `table` is the configured table, used when the error names none.
 */
export function describeWriteError(error: unknown, table: string): string {
  if (error instanceof ValueError) return error.message;
  const { code = '', column, constraint, detail, table: relation = table } = (error ?? {}) as Record<string, string | undefined>;
  switch (code) {
    case '23502':
      return constraintFailed('NOT NULL', [`${relation}.${column ?? '?'}`]);
    case '23505': {
      const columns = keyColumns(detail);
      if (columns)
        return constraintFailed(
          'UNIQUE',
          columns.map((name) => `${relation}.${name}`),
        );
      return constraintFailed('UNIQUE', constraint ? [constraint] : []);
    }
    case '23514':
      return constraintFailed('CHECK', constraint && !isGeneratedCheckName(constraint, relation) ? [constraint] : []);
    case '23503':
      return constraintFailed('FOREIGN KEY');
  }
  return DATA_ERRORS[code] ?? (code.startsWith('23') ? WRITE_REFUSALS.constraint : WRITE_REFUSALS.failed);
}
