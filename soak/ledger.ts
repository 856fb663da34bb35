/**
 * The ledger: every write a soak participant issued and every answer it got
 * for it, kept by the harness (outside the participants, so it survives their
 * reloads). The checks in verify.ts hold the server's final table and change
 * log against it.
 *
 * Each create and update writes a unique tag as the todo's title, so every
 * log entry a write produced can be traced back to the one mutation that
 * issued it.
 */

export type WriteAction = 'create' | 'update' | 'delete';

/** Node devices speak the protocol, browsers run the real client, the app writer uses the demo's htmx routes. */
export type ParticipantKind = 'device' | 'browser' | 'app';

/** One answer the server gave for a mutation (a retried mutation may get several). */
export interface Answer {
  status: 'applied' | 'conflict' | 'rejected';
  duplicate: boolean;
  /** Applied: the log version the write produced (duplicates: the row's current version). */
  version?: number;
}

export interface MutationRecord {
  participant: string;
  kind: ParticipantKind;
  /** Written as the title by creates and updates; unique per mutation. */
  tag: string;
  /** Row id; null for app creates until the log shows which row the tag landed in. */
  id: string | null;
  action: WriteAction;
  /** The client's mutation id (devices and browsers). */
  mutationId: number | null;
  /** In the order they were received. */
  answers: Answer[];
}

export class Ledger {
  readonly records: MutationRecord[] = [];
  private readonly byMutation = new Map<string, MutationRecord>();
  private readonly counters = new Map<string, number>();

  /** A fresh tag for a participant that has no durable counter of its own (browsers, the app writer). */
  nextTag(participant: string): string {
    const next = (this.counters.get(participant) ?? 0) + 1;
    this.counters.set(participant, next);
    return `${participant}.${next}`;
  }

  issue(record: Omit<MutationRecord, 'answers'>): MutationRecord {
    const full: MutationRecord = { ...record, answers: [] };
    this.records.push(full);
    if (record.mutationId !== null) this.byMutation.set(`${record.participant}#${record.mutationId}`, full);
    return full;
  }

  /** Attach the mutation id a participant assigned after the record was issued (browsers). */
  bind(record: MutationRecord, mutationId: number): void {
    record.mutationId = mutationId;
    this.byMutation.set(`${record.participant}#${mutationId}`, record);
  }

  find(participant: string, mutationId: number): MutationRecord | undefined {
    return this.byMutation.get(`${participant}#${mutationId}`);
  }

  /** Record an answer; answers for mutations the ledger does not know are returned as false. */
  answer(participant: string, mutationId: number, answer: Answer): boolean {
    const record = this.find(participant, mutationId);
    if (!record) return false;
    record.answers.push(answer);
    return true;
  }
}

/** The answer that counts: the first one the participant received. */
export const firstAnswer = (record: MutationRecord): Answer | undefined => record.answers[0];
