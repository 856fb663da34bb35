/**
 * What a failed write tells the client, in one place for entity and field
 * pushes alike, worded by core/values.ts exactly as the PostgreSQL store
 * words it: the kind of constraint and the columns (`table.column`) or the
 * constraint's name, never SQL text or a value.
 */
import { constraintFailed, ValueError, WRITE_REFUSALS } from '../../core/values.js';

/** What SQLite's constraint messages end in: `NOT NULL constraint failed: todos.title`. */
const DETAIL = /constraint failed: (.*)$/;
/** A unique index on expressions is named, not listed: `UNIQUE constraint failed: index 'todos_lower_email'`. */
const INDEX = /^index '(.*)'$/;

/** The reason a rejected change reports for a write SQLite refused (or a value its column cannot hold). */
export function describeWriteError(error: unknown): string {
  if (error instanceof ValueError) return error.message;
  const code = String((error as { code?: unknown } | null)?.code ?? '');
  const message = String((error as { message?: unknown } | null)?.message ?? '');
  const detail = DETAIL.exec(message)?.[1] ?? '';
  switch (code) {
    case 'SQLITE_CONSTRAINT_NOTNULL':
      return constraintFailed('NOT NULL', [detail]);
    case 'SQLITE_CONSTRAINT_UNIQUE':
    case 'SQLITE_CONSTRAINT_PRIMARYKEY': {
      const index = INDEX.exec(detail)?.[1];
      return constraintFailed('UNIQUE', index === undefined ? detail.split(', ') : [index]);
    }
    case 'SQLITE_CONSTRAINT_CHECK':
      // A named CHECK reports its name; an unnamed one its expression (SQL text), which the plain-name rule hides.
      return constraintFailed('CHECK', [detail]);
    case 'SQLITE_CONSTRAINT_FOREIGNKEY':
      // SQLite never says which foreign key; PostgreSQL's name is left out too, so both read alike.
      return constraintFailed('FOREIGN KEY');
    case 'SQLITE_CONSTRAINT_TRIGGER':
      return WRITE_REFUSALS.trigger;
    case 'SQLITE_MISMATCH':
    case 'SQLITE_CONSTRAINT_DATATYPE':
      return WRITE_REFUSALS.mismatch;
  }
  if (code.startsWith('SQLITE_CONSTRAINT')) return WRITE_REFUSALS.constraint;
  if (/\bgenerated column\b/.test(message)) return WRITE_REFUSALS.generated;
  return WRITE_REFUSALS.failed;
}
