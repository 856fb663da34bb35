/**
 * What a PostgreSQL error means for a push, in one place for entity and field
 * pushes alike: retry the transaction, reject one change, or fail the push.
 * Clients see only `describeWriteError`'s words: a constraint's name or a
 * column, never SQL text or a value.
 */

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
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || code.length !== 5 || isRetryable(error)) return false;
  // 22 data exception, 23 integrity constraint, 42 syntax/access (e.g. writing a generated column), P0 raised in a trigger.
  return ['22', '23', '42', 'P0', '2F', '39'].includes(code.slice(0, 2));
}

/** Fixed words for data errors. */
const DATA_ERRORS: Record<string, string> = {
  ...Object.fromEntries(['22P02', '22007', '22008', '22023'].map((code) => [code, 'datatype mismatch'])),
  '22001': 'value too long',
  '22003': 'value out of range',
  '428C9': 'cannot write a generated column',
};
/** Constraint violations that carry the constraint's name. */
const NAMED_CONSTRAINTS: Record<string, string> = { '23505': 'UNIQUE', '23503': 'FOREIGN KEY', '23514': 'CHECK' };

/** The reason a rejected change reports: constraint failures name the constraint (or column), anything else is generic. */
export function describeWriteError(error: unknown, table: string): string {
  const { code = '', column, constraint } = error as { code?: string; column?: string; constraint?: string };
  if (code === '23502') return `NOT NULL constraint failed: ${table}.${column ?? '?'}`;
  const kind = NAMED_CONSTRAINTS[code];
  if (kind) return `${kind} constraint failed: ${constraint ?? table}`;
  return DATA_ERRORS[code] ?? (code.startsWith('23') ? 'constraint failed' : 'write failed');
}
