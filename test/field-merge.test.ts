/**
 * The field merge rules (src/field/merge.ts) as a pure function, with a
 * fixed server clock: every strategy, HLC clamping and tie-breaking.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import { decideField, type FieldPolicy } from '../src/core/field/merge.js';
import { HybridClock, packHlc } from '../src/core/hlc.js';
import type { FieldServerState, FieldWrite, WriteStamp } from '../src/core/store.js';

const NOW = 1_700_000_000_000;
const policy = (strategy: FieldMergeStrategy): FieldPolicy => ({ strategy, clock: new HybridClock(() => NOW, 1000), now: () => NOW });
const stamp = (version: number, ms: number, clientId: string | null = 'server'): WriteStamp => ({ version, hlc: packHlc(ms), clientId });

function change(overrides: Partial<FieldWrite> = {}): FieldWrite {
  return {
    mutationId: null,
    entityId: '1',
    field: 'title',
    action: 'update',
    value: 'client',
    json: 'client',
    clientValue: 'client',
    timestamp: null,
    baseVersion: null,
    invalid: null,
    ...overrides,
  };
}

function state(overrides: Partial<FieldServerState> = {}): FieldServerState {
  const current = stamp(10, NOW - 1000);
  return {
    exists: true,
    current: { id: '1', title: 'server' },
    value: 'server',
    same: false,
    field: current,
    row: current,
    tombstone: null,
    ...overrides,
  };
}

const kind = (strategy: FieldMergeStrategy, c: FieldWrite, s: FieldServerState, clientId: string | null = 'client') =>
  decideField(policy(strategy), clientId, c, s).kind;

describe('field merge rules', () => {
  test('last-write-wins orders by HLC; equal stamps go to the greater client id', () => {
    const lww = FieldMergeStrategy.LastWriteWins;
    assert.equal(kind(lww, change({ timestamp: packHlc(NOW - 500) }), state()), 'write');
    assert.equal(kind(lww, change({ timestamp: packHlc(NOW - 2000) }), state()), 'conflict');
    const tie = change({ timestamp: packHlc(NOW - 1000) });
    assert.equal(kind(lww, tie, state({ field: stamp(10, NOW - 1000, 'bob') }), 'carol'), 'write');
    assert.equal(kind(lww, tie, state({ field: stamp(10, NOW - 1000, 'bob') }), 'alice'), 'conflict');
    assert.equal(kind(lww, tie, state({ field: stamp(10, NOW - 1000, null) }), null), 'conflict', 'a full tie keeps the server value');
    // Without a timestamp the change is ordered by its arrival, after everything before it.
    assert.equal(kind(lww, change(), state()), 'write');
  });

  test('a client timestamp from the future is clamped to its arrival', () => {
    const lww = FieldMergeStrategy.LastWriteWins;
    const future = change({ timestamp: packHlc(NOW + 3_600_000) });
    // The server's value was written in the current millisecond (counter 5): the "future" edit arrived with it, not after.
    assert.equal(kind(lww, future, state({ field: { version: 10, hlc: packHlc(NOW, 5), clientId: 'honest' } })), 'conflict');
    const decision = decideField(policy(lww), 'skewed', future, state());
    assert.equal(decision.kind, 'write');
    assert.ok(decision.kind === 'write' && decision.hlc <= packHlc(NOW) + 1);
  });

  test('a change based on the current version is not concurrent and applies under every strategy', () => {
    for (const strategy of Object.values(FieldMergeStrategy)) {
      const old = change({ timestamp: packHlc(NOW - 60_000), baseVersion: 10 });
      const decision = decideField(policy(strategy), 'client', old, state());
      assert.equal(decision.kind, 'write', strategy);
      // The winner is ordered after what it replaces.
      assert.ok(decision.kind === 'write' && decision.hlc > state().field.hlc, strategy);
    }
  });

  test('server-wins and keep-both refuse a stale base version even with a newer clock', () => {
    for (const strategy of [FieldMergeStrategy.ServerWins, FieldMergeStrategy.KeepBoth]) {
      assert.equal(kind(strategy, change({ timestamp: packHlc(NOW), baseVersion: 9 }), state()), 'conflict', strategy);
      // Without a base version only the stamps can tell whether the server's value came later.
      assert.equal(kind(strategy, change({ timestamp: packHlc(NOW - 2000) }), state()), 'conflict', strategy);
      assert.equal(kind(strategy, change({ timestamp: packHlc(NOW - 500) }), state()), 'write', strategy);
    }
    const keepBoth = decideField(policy(FieldMergeStrategy.KeepBoth), 'c', change({ baseVersion: 9 }), state());
    assert.ok(keepBoth.kind === 'conflict' && /keep-both/.test(keepBoth.reason));
  });

  test('client-wins always applies', () => {
    assert.equal(kind(FieldMergeStrategy.ClientWins, change({ timestamp: packHlc(NOW - 60_000), baseVersion: 1 }), state()), 'write');
  });

  test('the same value is applied without a write; an invalid value is rejected', () => {
    for (const strategy of Object.values(FieldMergeStrategy)) {
      assert.equal(kind(strategy, change({ baseVersion: 1 }), state({ same: true })), 'keep', strategy);
    }
    const rejected = decideField(policy(FieldMergeStrategy.ClientWins), 'c', change({ invalid: 'done: must be a boolean' }), state());
    assert.deepEqual(rejected, { kind: 'reject', reason: 'done: must be a boolean' });
  });

  test('deletes are ordered like writes', () => {
    const lww = FieldMergeStrategy.LastWriteWins;
    const tombstone = stamp(12, NOW - 500, 'deleter');
    const gone = state({ exists: false, value: null, field: tombstone, tombstone });
    // An update older than the delete does not resurrect the row; a newer one re-creates it.
    assert.equal(kind(lww, change({ timestamp: packHlc(NOW - 1000) }), gone), 'conflict');
    assert.equal(kind(lww, change({ timestamp: packHlc(NOW - 100) }), gone), 'write');
    assert.equal(kind(FieldMergeStrategy.KeepBoth, change({ timestamp: packHlc(NOW - 100), baseVersion: 10 }), gone), 'conflict');
    assert.equal(kind(FieldMergeStrategy.ClientWins, change({ timestamp: packHlc(NOW - 1000) }), gone), 'write');
    // A row that never existed is created.
    assert.equal(
      kind(FieldMergeStrategy.ServerWins, change(), state({ exists: false, value: null, field: { version: 0, hlc: 0, clientId: null } })),
      'write',
    );
    // Deleting: ordered against the row's latest write; deleting a missing row is already done.
    const remove = (timestamp: number) => change({ field: '*', action: 'delete', value: null, timestamp });
    assert.equal(kind(lww, remove(packHlc(NOW - 2000)), state()), 'conflict');
    assert.equal(kind(lww, remove(packHlc(NOW - 100)), state()), 'write');
    assert.equal(kind(lww, remove(packHlc(NOW - 2000)), gone), 'keep');
  });
});
