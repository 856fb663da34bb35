/**
 * `npm run soak [-- options]`: the long convergence soak (not part of `npm test`).
 *
 *   --store sqlite|postgres|both   (both)
 *   --duration 120                 chaos phase per run, seconds (or 90s, 5m)
 *   --clients 12                   Node protocol devices
 *   --browsers 2                   headless Chromium pages on the demo
 *   --nodes N                      server processes (default 1 on SQLite, 3 on PostgreSQL)
 *   --runs 1                       runs per store (seed, seed+1, ...)
 *   --rows 20                      rows the writers steer the table towards (fewer: more collisions)
 *   --seed 1
 *   --no-app                       no writes through the demo's htmx routes
 *   --no-hold                      devices apply server changes while a push is in flight, as the
 *                                  browser client did before src/client/push-gate.ts (shows that bug)
 *   --client-dir dir               serve the browsers this client build (rhtmx-sync.js) instead of dist/client
 *   --json path                    also write every report as JSON
 *
 * Prints the figures of each run and exits with 1 when any run lost,
 * duplicated or diverged.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { passed, runSoak, type SoakOptions, type SoakReport } from './harness.js';
import { ROOT } from './nodes.js';

interface Cli {
  stores: Array<SoakOptions['store']>;
  durationMs: number;
  devices: number;
  browsers: number;
  nodes: number | null;
  runs: number;
  seed: number;
  appWriter: boolean;
  holdDuringPush: boolean;
  tableRows: number;
  clientDir: string | null;
  json: string | null;
}

function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!match) throw new Error(`bad duration ${JSON.stringify(text)} (use 90, 90s, 5m or 500ms)`);
  const value = Number(match[1]);
  return match[2] === 'ms' ? value : match[2] === 'm' ? value * 60_000 : value * 1000;
}

function parseArgs(argv: string[]): Cli {
  const cli: Cli = {
    stores: ['sqlite', 'postgres'],
    durationMs: 120_000,
    devices: 12,
    browsers: 2,
    nodes: null,
    runs: 1,
    seed: 1,
    appWriter: true,
    holdDuringPush: true,
    tableRows: 20,
    clientDir: null,
    json: null,
  };
  const count = (name: string, value: string | undefined, min: number) => {
    const number = Number(value);
    if (!Number.isInteger(number) || number < min) throw new Error(`--${name} needs an integer >= ${min}`);
    return number;
  };
  for (let index = 0; index < argv.length; index++) {
    const [flag, inline] = (argv[index] as string).split('=', 2) as [string, string | undefined];
    const value = () => inline ?? argv[++index];
    switch (flag) {
      case '--store': {
        const store = value();
        if (store === 'both') cli.stores = ['sqlite', 'postgres'];
        else if (store === 'sqlite' || store === 'postgres') cli.stores = [store];
        else throw new Error('--store is sqlite, postgres or both');
        break;
      }
      case '--duration':
        cli.durationMs = parseDuration(value() ?? '');
        break;
      case '--clients':
        cli.devices = count('clients', value(), 0);
        break;
      case '--browsers':
        cli.browsers = count('browsers', value(), 0);
        break;
      case '--nodes':
        cli.nodes = count('nodes', value(), 1);
        break;
      case '--runs':
        cli.runs = count('runs', value(), 1);
        break;
      case '--seed':
        cli.seed = count('seed', value(), 0);
        break;
      case '--no-app':
        cli.appWriter = false;
        break;
      case '--rows':
        cli.tableRows = count('rows', value(), 1);
        break;
      case '--no-hold':
        cli.holdDuringPush = false;
        break;
      case '--client-dir':
        cli.clientDir = value() ?? null;
        break;
      case '--json':
        cli.json = value() ?? null;
        break;
      case '--help':
      case '-h':
        console.log(
          'npm run soak -- [--store sqlite|postgres|both] [--duration 120] [--clients 12] [--browsers 2] [--nodes N] [--runs 1] [--rows 20] [--seed 1] [--no-app] [--no-hold] [--client-dir dir] [--json file]',
        );
        process.exit(0);
        break;
      default:
        throw new Error(`unknown option ${flag} (see --help)`);
    }
  }
  return cli;
}

const ROWS: Array<[string, (report: SoakReport) => string | number]> = [
  ['store', (r) => r.store],
  ['nodes', (r) => r.nodes],
  ['seed', (r) => r.seed],
  ['chaos phase (s)', (r) => r.durationS],
  ['drain + convergence (s)', (r) => r.settleS],
  ['clients (devices + browsers)', (r) => `${r.clients} (${r.devices} + ${r.browsers})`],
  [
    'mutations (device / browser / app)',
    (r) => `${r.mutations} (${r.mutationsByKind.device} / ${r.mutationsByKind.browser} / ${r.mutationsByKind.app})`,
  ],
  ['acked (first answer applied)', (r) => r.acked],
  ['acked only as duplicate', (r) => `${r.ackedAsDuplicate} (${r.duplicateAcksWithoutWrite} without a write)`],
  ['conflicts / rejected', (r) => `${r.conflicts} / ${r.rejected}`],
  [
    'unanswered (device / browser / app)',
    (r) => `${r.unanswered} (${r.unansweredByKind.device} / ${r.unansweredByKind.browser} / ${r.unansweredByKind.app})`,
  ],
  ['lost', (r) => r.lost],
  ['duplicated', (r) => r.duplicated],
  ['divergent clients', (r) => `${r.divergentClients}${r.fixedByPull ? ` (${r.fixedByPull} fixed by a pull)` : ''}`],
  ['server kills (SIGKILL) / restarts', (r) => `${r.kills} / ${r.restarts}`],
  ['reloads / offline periods / disconnects', (r) => `${r.reloads} / ${r.offlinePeriods} / ${r.disconnects}`],
  ['final rows / log entries', (r) => `${r.serverRows} / ${r.logEntries}`],
  ['device push round trip p50 / p99 / max (ms)', (r) => `${r.pushMs.p50} / ${r.pushMs.p99} / ${r.pushMs.max}`],
  [
    'device pushes without an answer',
    (r) =>
      Object.entries(r.pushFailures)
        .sort((a, b) => b[1] - a[1])
        .map(([reason, count]) => `${count} ${reason}`)
        .join(', ') || '0',
  ],
];

function printReport(report: SoakReport): void {
  const width = Math.max(...ROWS.map(([label]) => label.length));
  for (const [label, value] of ROWS) console.log(`  ${label.padEnd(width)}  ${value(report)}`);
  console.log(`  ${'verdict'.padEnd(width)}  ${passed(report) ? 'PASS' : 'FAIL'}`);
  for (const finding of report.findings) console.log(`    ${finding.kind}: ${finding.detail}`);
  const stderr = Object.entries(report.serverStderr).sort((a, b) => b[1] - a[1]);
  if (stderr.length > 0) console.log('  server stderr (first line of each message, how often):');
  for (const [line, count] of stderr.slice(0, 10)) console.log(`    ${count}× ${line}`);
  if (!passed(report) && report.serverErrors.length > 0) {
    console.log('  server stderr (last lines):');
    for (const line of report.serverErrors) console.log(`    ${line}`);
  }
}

async function main(): Promise<void> {
  const cli = parseArgs(process.argv.slice(2));
  // The browsers load the client the demo serves from dist/client: build it from the current source.
  if (cli.browsers > 0 && !cli.clientDir)
    execFileSync(process.execPath, [join(ROOT, 'scripts/build.mjs'), '--client-only'], { cwd: ROOT, stdio: 'inherit' });
  const started = Date.now();
  const log = (line: string) => console.log(`[soak ${String(Math.round((Date.now() - started) / 1000)).padStart(4)}s] ${line}`);
  const reports: SoakReport[] = [];
  for (const store of cli.stores) {
    for (let run = 0; run < cli.runs; run++) {
      const seed = cli.seed + run;
      const nodes = cli.nodes ?? (store === 'postgres' ? 3 : 1);
      log(`== ${store}, run ${run + 1}/${cli.runs}, seed ${seed}, ${nodes} node(s)`);
      const report = await runSoak({
        store,
        seed,
        nodes,
        durationMs: cli.durationMs,
        devices: cli.devices,
        browsers: cli.browsers,
        appWriter: cli.appWriter,
        holdDuringPush: cli.holdDuringPush,
        tableRows: cli.tableRows,
        clientDir: cli.clientDir ?? undefined,
        log,
      });
      reports.push(report);
      printReport(report);
      if (cli.json) writeFileSync(cli.json, `${JSON.stringify(reports, null, 2)}\n`);
    }
  }
  const failed = reports.filter((report) => !passed(report));
  log(`${reports.length} run(s), ${failed.length} failed`);
  process.exitCode = failed.length > 0 ? 1 : 0;
}

// Ctrl-C: exit through process.exit so the nodes' exit hook kills them (soak/nodes.ts).
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`soak: ${signal}, stopping`);
    process.exit(130);
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 2;
});
