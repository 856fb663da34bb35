/**
 * The convergence soak, short: the same harness as `npm run soak` (soak/),
 * for about 15 seconds per store. Node devices and a real Chromium page write
 * at random while going offline, disconnecting and reloading; the demo server
 * is killed with SIGKILL and restarted on the same database meanwhile (on
 * PostgreSQL, two nodes), `cleanup` prunes the log and, at random, every
 * exactly-once record, and another process adds columns to the table. Afterwards every outbox drains, every replica
 * equals the server's table, and no acknowledged write is lost or applied
 * twice. RHTMX_SOAK_SEED replays a run's choices.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { passed, runSoak, type SoakOptions, type SoakReport } from '../soak/harness.js';
import { buildClient } from './browser/client-bundle.js';
import { PG_ADMIN_URL } from './pg-helpers.js';

const seed = Number(process.env.RHTMX_SOAK_SEED ?? Math.floor(Math.random() * 1_000_000));

const SHORT: Partial<SoakOptions> = {
  durationMs: 15_000,
  devices: 6,
  browsers: 1,
  killEveryMs: [2_000, 5_000],
  downMs: [200, 1_000],
  settleTimeoutMs: 90_000,
  pgAdminUrl: PG_ADMIN_URL,
};

function explain(report: SoakReport): string {
  const { findings, serverErrors, ...figures } = report;
  return JSON.stringify({ seed, figures, findings, serverErrors }, null, 2);
}

function check(report: SoakReport): void {
  assert.ok(report.kills >= 1, `no node was killed: ${explain(report)}`);
  assert.ok(report.cleanups >= 1, `cleanup never ran during the chaos: ${explain(report)}`);
  assert.ok(report.schemaChanges >= 1, `no migration ran during the chaos: ${explain(report)}`);
  assert.ok(report.acked > 0 && report.mutationsByKind.browser > 0, `too little happened: ${explain(report)}`);
  assert.equal(report.lost, 0, `acknowledged writes lost: ${explain(report)}`);
  assert.equal(report.duplicated, 0, `writes applied twice: ${explain(report)}`);
  assert.equal(report.divergentClients, 0, `replicas differ from the server: ${explain(report)}`);
  assert.ok(passed(report), explain(report));
}

describe('convergence soak (short)', () => {
  test('SQLite, one node killed and restarted', async () => {
    check(await runSoak({ ...SHORT, store: 'sqlite', nodes: 1, seed, clientDir: await buildClient() }));
  });

  test('PostgreSQL, two nodes killed and restarted', async () => {
    check(await runSoak({ ...SHORT, store: 'postgres', nodes: 2, seed, clientDir: await buildClient() }));
  });
});
