/**
 * What a failed write tells the client, in one place for entity and field
 * pushes alike (and worded as the PostgreSQL store words it): the kind of
 * constraint and the column or constraint name, never SQL text or a value.
 */

/** SQLite's constraint messages end in what failed: `NOT NULL constraint failed: todos.title`. */
const CONSTRAINT = /\b((?:NOT NULL|UNIQUE|CHECK|FOREIGN KEY|PRIMARY KEY) )?constraint failed(?:: (.*))?$/;
/** Column lists and constraint names; an unnamed CHECK reports its expression instead, which is SQL text. */
const NAMES = /^[\w.$]+(?:, [\w.$]+)*$/;

/** The reason a rejected change reports for a write SQLite refused. */
export function describeWriteError(error: unknown): string {
  const code = String((error as { code?: unknown } | null)?.code ?? '');
  const message = String((error as { message?: unknown } | null)?.message ?? '');
  if (code.startsWith('SQLITE_CONSTRAINT')) {
    const [, kind = '', what = ''] = CONSTRAINT.exec(message) ?? [];
    return `${kind}constraint failed${NAMES.test(what) ? `: ${what}` : ''}`;
  }
  if (code === 'SQLITE_MISMATCH') return 'datatype mismatch';
  if (/can only bind/.test(message)) return 'unsupported value type';
  return 'write failed';
}
