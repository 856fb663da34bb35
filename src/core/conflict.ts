/**
 * Conflict strategies as one pure function: given a validated client change
 * and the server's current row state, decide what to write. Stores call it
 * inside their write transaction, so the decision and the write are atomic.
 */
import { type ConflictResolver, SyncStrategy } from './config.js';
import type { HybridClock } from './hlc.js';
import type { Row } from './protocol.js';
import type { ServerRowState, ValidatedChange, WriteDecision } from './store.js';

export interface ConflictPolicy {
  strategy: SyncStrategy;
  resolve?: ConflictResolver;
  clock: HybridClock;
}

/**
 * A change conflicts when the server row moved on since the client last saw
 * it: its version is past the client's base version, or (without a base
 * version, the original crate's request shape) under last-write-wins its last write is
 * newer than the client's timestamp.
 */
function isConcurrent(change: ValidatedChange, server: ServerRowState): boolean {
  if (server.version === 0) return false;
  if (change.baseVersion !== null) return server.version > change.baseVersion;
  return change.timestamp !== null && server.hlc > change.timestamp;
}

export function decideWrite(policy: ConflictPolicy, change: ValidatedChange, server: ServerRowState): WriteDecision {
  // The order the write is stamped with: the client's (clamped) time when it
  // sent one, else the moment the server received it.
  const stamp = change.timestamp !== null ? policy.clock.receive(change.timestamp) : policy.clock.now();
  // A write the client based on the current row (or that wins) is ordered after that row's write.
  const write = (data: Row, merged = false, action = change.action === 'create' && server.row ? 'update' : change.action) =>
    ({ kind: 'write', action, data, hlc: Math.max(stamp, server.hlc + 1), merged }) satisfies WriteDecision;

  // Updating a row the server no longer has: only client-wins brings it back. A base
  // version proves the row existed even after cleanup pruned its delete from the log.
  if (change.action === 'update' && server.row === null && (server.version > 0 || (change.baseVersion ?? 0) > 0)) {
    if (policy.strategy === SyncStrategy.ClientWins) return write(change.data, false, 'create');
    return { kind: 'conflict', reason: 'row was deleted on the server' };
  }
  if (change.action === 'delete' && server.row === null) {
    return write(change.data);
  }
  if (!isConcurrent(change, server)) return write(change.data);

  switch (policy.strategy) {
    case SyncStrategy.ClientWins:
      return write(change.data);
    case SyncStrategy.ServerWins:
      return { kind: 'conflict', reason: 'server-wins: the row changed since base_version' };
    case SyncStrategy.LastWriteWins: {
      // Ties go to the server: the client's write must be strictly newer.
      if (change.timestamp !== null && policy.clock.receive(change.timestamp) > server.hlc) {
        return write(change.data);
      }
      return { kind: 'conflict', reason: 'last-write-wins: the server row is newer' };
    }
    case SyncStrategy.Custom: {
      if (!policy.resolve) return { kind: 'conflict', reason: 'no resolver configured' };
      if (change.action === 'delete') return write(change.data);
      const clientRow: Row = { ...(server.row ?? {}), ...change.data };
      const merged = policy.resolve(server.row, clientRow, server.base);
      if (merged === null || merged === undefined) return { kind: 'conflict', reason: 'resolver kept the server row' };
      return write(merged, true);
    }
  }
}
