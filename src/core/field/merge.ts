/**
 * Field merge rules as one pure function: given a validated field change and
 * the server's state of that field (read inside the write transaction),
 * decide whether to write it, keep the server's value, or refuse it.
 *
 * Ordering uses hybrid-logical-clock stamps, never raw client clocks: a
 * client's timestamp is clamped to the moment the server received it (an
 * edit cannot have happened after it arrived), so a client whose clock runs
 * an hour ahead is ordered as if it wrote on arrival and cannot beat a later
 * honest write. Equal stamps are broken by client id, so every server and
 * every retry decides the same way.
 */
import { FieldMergeStrategy } from '../config.js';
import { type HybridClock, packHlc } from '../hlc.js';
import { ROW_FIELD } from '../protocol.js';
import type { FieldDecision, FieldServerState, FieldWrite, WriteStamp } from '../store.js';

export interface FieldPolicy {
  strategy: FieldMergeStrategy;
  clock: HybridClock;
  /** Server wall clock, ms (tests pass a fixed one). */
  now?: () => number;
}

/** The stamp a change is ordered by: its clamped client time, or the server's time when it sent none. */
export function orderStamp(policy: FieldPolicy, timestamp: number | null): number {
  if (timestamp === null) return policy.clock.now();
  const arrival = packHlc((policy.now ?? Date.now)());
  return policy.clock.receive(Math.min(timestamp, arrival));
}

/** `(hlc, client id)` order: the later stamp wins, equal stamps go to the greater client id. */
export function isNewer(stamp: number, clientId: string | null, current: WriteStamp): boolean {
  if (stamp !== current.hlc) return stamp > current.hlc;
  return (clientId ?? '') > (current.clientId ?? '');
}

/**
 * Whether a change may overwrite `current` under the strategy.
 *
 * A change based on the current version (`base_version >= version`) saw the
 * server's value, so it is not concurrent and always applies. Otherwise:
 * client-wins applies, last-write-wins compares stamps, and server-wins and
 * keep-both refuse a change whose base version is stale; without a base
 * version they can only tell from the stamps whether the server's value came
 * later.
 */
function mayOverwrite(
  strategy: FieldMergeStrategy,
  stamp: number,
  clientId: string | null,
  baseVersion: number | null,
  current: WriteStamp,
): boolean {
  if (current.version === 0 && current.hlc === 0) return true;
  if (strategy === FieldMergeStrategy.ClientWins) return true;
  if (baseVersion !== null && baseVersion >= current.version) return true;
  if (strategy === FieldMergeStrategy.LastWriteWins) return isNewer(stamp, clientId, current);
  if (baseVersion !== null) return false;
  return isNewer(stamp, clientId, current);
}

function conflictReason(strategy: FieldMergeStrategy, baseVersion: number | null): string {
  switch (strategy) {
    case FieldMergeStrategy.KeepBoth:
      return 'keep-both: the field was changed concurrently; both values are returned';
    case FieldMergeStrategy.ServerWins:
      return baseVersion !== null ? 'server-wins: the field changed since base_version' : 'server-wins: the server value is newer';
    default:
      return 'last-write-wins: the server value is newer';
  }
}

/** Decide one field change. Pure apart from folding the stamp into the server clock. */
export function decideField(policy: FieldPolicy, clientId: string | null, change: FieldWrite, state: FieldServerState): FieldDecision {
  if (change.invalid !== null) return { kind: 'reject', reason: change.invalid };
  const stamp = orderStamp(policy, change.timestamp);
  const allowed = (current: WriteStamp) => mayOverwrite(policy.strategy, stamp, clientId, change.baseVersion, current);
  // A write that wins is ordered after what it replaces, so per-field stamps only move forward.
  const write = (current: WriteStamp): FieldDecision => {
    const hlc = Math.max(stamp, current.hlc + 1);
    policy.clock.receive(hlc);
    return { kind: 'write', hlc };
  };

  if (change.field === ROW_FIELD) {
    // Deleting a row that is already gone is what the client wanted.
    if (!state.exists) return { kind: 'keep' };
    // A delete is ordered against the row's latest write: it must not erase an edit made after it.
    if (allowed(state.row)) return write(state.row);
    return { kind: 'conflict', reason: `${conflictReason(policy.strategy, change.baseVersion)} (row changed after the delete)` };
  }
  if (!state.exists) {
    // No tombstone: a new row, unless the client saw a version of the field (cleanup pruned the delete).
    if (state.tombstone === null && (change.baseVersion ?? 0) <= 0) return write(state.field);
    if (state.tombstone === null) return { kind: 'conflict', reason: 'the row was deleted on the server' };
    // Updating a deleted row re-creates it only when the update is ordered after the delete.
    if (allowed(state.tombstone)) return write(state.tombstone);
    return { kind: 'conflict', reason: 'the row was deleted on the server' };
  }
  if (state.same) return { kind: 'keep' };
  if (allowed(state.field)) return write(state.field);
  return { kind: 'conflict', reason: conflictReason(policy.strategy, change.baseVersion) };
}
