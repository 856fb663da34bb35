/**
 * The soak's verdict: after everyone drained their outbox, hold every
 * client's replica, the server's final table and its change log against the
 * ledger of acknowledged writes.
 *
 * - Convergence: each client's rows equal the server's table, row by row.
 * - Nothing acknowledged is lost: an acknowledged create or update appears in
 *   the log exactly once (its tag is its title) at the version the ack named;
 *   an acknowledged create's row still exists unless the log shows a later
 *   delete of it; an acknowledged delete's row is gone.
 * - Nothing is applied twice: no tag appears in the log more than once, and no
 *   row id is created twice.
 * - The table agrees with the log's last entry per row, and every write in
 *   the log belongs to a mutation in the ledger.
 */
import { byId, type LogEntry, normaliseRow, type TodoRow } from './database.js';
import { type Answer, firstAnswer, type MutationRecord, type ParticipantKind } from './ledger.js';

export interface ClientState {
  name: string;
  kind: ParticipantKind;
  rows: Array<Record<string, unknown>>;
  /** Outbox entries left after the drain (must be 0). */
  pending: number;
}

/** One broken promise, with enough detail to find it in the log. */
export interface Finding {
  kind:
    | 'lost'
    | 'duplicated'
    | 'divergent'
    | 'version-mismatch'
    | 'table-log-mismatch'
    | 'untracked-write'
    | 'not-drained'
    /** A server process ended without the soak killing or stopping it (harness.ts). */
    | 'server-exit'
    /** A server's stderr shows an uncaught exception, an unhandled rejection or a fatal error (harness.ts). */
    | 'uncaught-error';
  detail: string;
}

export interface Verdict {
  mutations: number;
  mutationsByKind: Record<ParticipantKind, number>;
  /** First answer `applied` (a write the client was told happened). */
  acked: number;
  /** Answered only by `applied` + `duplicate` (the first answer never reached the client). */
  ackedAsDuplicate: number;
  /** …of which the write is nowhere in the log: the first attempt had been a conflict the server does not remember. */
  duplicateAcksWithoutWrite: number;
  conflicts: number;
  rejected: number;
  /** No answer observed (a form post cut by a kill; a browser reloaded between an HTTP answer and its recording). */
  unanswered: number;
  unansweredByKind: Record<ParticipantKind, number>;
  lost: number;
  duplicated: number;
  divergentClients: number;
  clients: number;
  serverRows: number;
  logEntries: number;
  findings: Finding[];
}

const FINDINGS_KEPT = 50;

export function verify(records: MutationRecord[], serverRows: TodoRow[], log: LogEntry[], clients: ClientState[]): Verdict {
  const findings: Finding[] = [];
  const note = (finding: Finding) => {
    if (findings.length < FINDINGS_KEPT) findings.push(finding);
  };
  const table = new Map(serverRows.map((row) => [row.id, row]));
  const byTag = new Map<string, LogEntry[]>();
  const lastById = new Map<string, LogEntry>();
  const createsById = new Map<string, number>();
  const deletesById = new Map<string, LogEntry[]>();
  for (const entry of log) {
    lastById.set(entry.id, entry);
    if (entry.title !== null) byTag.set(entry.title, [...(byTag.get(entry.title) ?? []), entry]);
    if (entry.action === 'create') createsById.set(entry.id, (createsById.get(entry.id) ?? 0) + 1);
    if (entry.action === 'delete') deletesById.set(entry.id, [...(deletesById.get(entry.id) ?? []), entry]);
  }

  let acked = 0;
  let ackedAsDuplicate = 0;
  let duplicateAcksWithoutWrite = 0;
  let conflicts = 0;
  let rejected = 0;
  let unanswered = 0;
  let lost = 0;
  let duplicated = 0;
  const mutationsByKind: Record<ParticipantKind, number> = { device: 0, browser: 0, app: 0 };
  const unansweredByKind: Record<ParticipantKind, number> = { device: 0, browser: 0, app: 0 };
  const tags = new Set<string>();

  for (const record of records) {
    mutationsByKind[record.kind]++;
    tags.add(record.tag);
    const written = record.action === 'delete' ? [] : (byTag.get(record.tag) ?? []);
    if (written.length > 1) {
      duplicated++;
      note({
        kind: 'duplicated',
        detail: `${record.tag} (${record.action} ${record.id}) is in the log ${written.length} times: ${versions(written)}`,
      });
    }
    const first: Answer | undefined = firstAnswer(record);
    if (!first) {
      unanswered++;
      unansweredByKind[record.kind]++;
      continue;
    }
    if (first.status === 'conflict') conflicts++;
    if (first.status === 'rejected') rejected++;
    if (first.status !== 'applied') continue;
    if (first.duplicate) {
      ackedAsDuplicate++;
      if (record.action !== 'delete' && written.length === 0) duplicateAcksWithoutWrite++;
      continue;
    }
    acked++;
    const id = record.id ?? written[0]?.id ?? null;
    if (record.action === 'delete') {
      if (id !== null && table.has(id)) {
        lost++;
        note({ kind: 'lost', detail: `${record.tag}: acknowledged delete of ${id}, but the row is still in the table` });
      }
      continue;
    }
    if (written.length === 0) {
      lost++;
      note({ kind: 'lost', detail: `${record.tag}: acknowledged ${record.action} of ${id} is not in the log` });
      continue;
    }
    const entry = written[0] as LogEntry;
    if (first.version !== undefined && entry.version !== first.version) {
      note({ kind: 'version-mismatch', detail: `${record.tag}: ack named version ${first.version}, the log has it at ${entry.version}` });
    }
    if (record.action === 'create' && !table.has(entry.id)) {
      const deletedLater = (deletesById.get(entry.id) ?? []).some((deletion) => deletion.version > entry.version);
      if (!deletedLater) {
        lost++;
        note({ kind: 'lost', detail: `${record.tag}: acknowledged create of ${entry.id} is gone without a delete in the log` });
      }
    }
  }

  /** The story of one row: its log entries and every mutation of it, with their answers. */
  const story = (id: string): string => {
    const entries = log.filter((entry) => entry.id === id).map((entry) => `${entry.action} v${entry.version} ${entry.title ?? ''}`);
    const mutations = records
      .filter((record) => record.id === id)
      .map((record) => `${record.tag} ${record.action} [${record.answers.map(describeAnswer).join(', ')}]`);
    return `  row ${id}: log ${entries.join('; ') || 'none'}; mutations ${mutations.join('; ') || 'none'}`;
  };

  for (const [id, count] of createsById) {
    if (count > 1) {
      duplicated++;
      note({ kind: 'duplicated', detail: `row ${id} was created ${count} times` });
      note({ kind: 'duplicated', detail: story(id) });
    }
  }

  // The table must be what the log says: the last entry of every row.
  for (const [id, entry] of lastById) {
    const row = table.get(id);
    if (entry.action === 'delete' ? row !== undefined : row?.title !== entry.title) {
      note({
        kind: 'table-log-mismatch',
        detail: `row ${id}: table has ${row ? JSON.stringify(row.title) : 'nothing'}, log ends with ${entry.action} v${entry.version}`,
      });
    }
  }
  for (const id of table.keys()) {
    if (!lastById.has(id)) note({ kind: 'table-log-mismatch', detail: `row ${id} is in the table but never in the log` });
  }
  for (const [tag, entries] of byTag) {
    if (!tags.has(tag))
      note({ kind: 'untracked-write', detail: `${tag} is in the log (${versions(entries)}) but no participant issued it` });
  }

  let divergentClients = 0;
  for (const client of clients) {
    if (client.pending > 0) note({ kind: 'not-drained', detail: `${client.name}: ${client.pending} mutations still in the outbox` });
    const diff = compareRows(serverRows, client.rows);
    if (diff) {
      divergentClients++;
      note({ kind: 'divergent', detail: `${client.name}: ${diff.summary}` });
      for (const id of diff.ids.slice(0, 3)) note({ kind: 'divergent', detail: story(id) });
    }
  }

  return {
    mutations: records.length,
    mutationsByKind,
    acked,
    ackedAsDuplicate,
    duplicateAcksWithoutWrite,
    conflicts,
    rejected,
    unanswered,
    unansweredByKind,
    lost,
    duplicated,
    divergentClients,
    clients: clients.length,
    serverRows: serverRows.length,
    logEntries: log.length,
    findings,
  };
}

const describeAnswer = (answer: Answer) =>
  `${answer.status}${answer.duplicate ? ' (duplicate)' : ''}${answer.version !== undefined ? ` v${answer.version}` : ''}`;

/** Null when equal; otherwise a short description of the differences and the ids concerned. */
export function compareRows(server: TodoRow[], client: Array<Record<string, unknown>>): { summary: string; ids: string[] } | null {
  const mine = new Map(client.map((row) => [String(row.id), normaliseRow(row)]));
  const problems: string[] = [];
  const ids: string[] = [];
  let missing = 0;
  let extra = 0;
  let different = 0;
  for (const row of server) {
    const local = mine.get(row.id);
    mine.delete(row.id);
    if (!local) {
      missing++;
      ids.push(row.id);
      if (problems.length < 3) problems.push(`missing ${row.id} (${row.title})`);
    } else if (local.title !== row.title || local.done !== row.done || local.updated_at !== row.updated_at) {
      different++;
      ids.push(row.id);
      if (problems.length < 3) problems.push(`${row.id}: local ${JSON.stringify(local)} vs server ${JSON.stringify(row)}`);
    }
  }
  for (const local of [...mine.values()].sort(byId)) {
    extra++;
    ids.push(local.id);
    if (problems.length < 3) problems.push(`extra ${local.id} (${local.title})`);
  }
  if (missing + extra + different === 0) return null;
  return { summary: `${missing} missing, ${extra} extra, ${different} different; ${problems.join('; ')}`, ids };
}

const versions = (entries: LogEntry[]) => entries.map((entry) => `${entry.action} v${entry.version}`).join(', ');
