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
 *   --no-hostile                   no hostile participant (soak/hostile.ts: malformed requests, resets,
 *                                  non-reading WebSocket and SSE clients, request floods)
 *   --no-hold                      devices apply server changes while a push is in flight, as the
 *                                  browser client did before its push gate (src/client/queue/flusher.ts, Flusher.idle) (shows that bug)
 *   --client-dir dir               serve the browsers this client build (rhtmx-sync.js) instead of dist/client
 *   --json path                    also write every report as JSON
 *
 * Prints the figures of each run and exits with 1 when any run lost,
 * duplicated or diverged, or a server process crashed (exited on its own, or
 * showed an uncaught exception or unhandled rejection on stderr).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { passed, runSoak, type SoakOptions, type SoakReport } from './harness.js';
import type { HostileReport } from './hostile.js';
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
  hostile: boolean;
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
    hostile: true,
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
      case '--no-hostile':
        cli.hostile = false;
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
          'npm run soak -- [--store sqlite|postgres|both] [--duration 120] [--clients 12] [--browsers 2] [--nodes N] [--runs 1] [--rows 20] [--seed 1] [--no-app] [--no-hostile] [--no-hold] [--client-dir dir] [--json file]',
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
  ['cleanups / migrations during the chaos', (r) => `${r.cleanups} / ${r.schemaChanges}`],
  [
    'server crashes / uncaught errors',
    (r) => `${r.serverExits.length} / ${r.uncaughtErrors.length}${r.startFailures ? ` (${r.startFailures} failed starts, retried)` : ''}`,
  ],
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
  for (const exit of report.serverExits.slice(0, 3)) {
    // A crash that printed its uncaught error is shown once, with that excerpt below.
    const shown = report.uncaughtErrors.some((sign) => sign.node === exit.node && Math.abs(sign.at - exit.at) < 2_000);
    console.log(`  node ${exit.node} exited on its own (${exit.signal ?? `code ${exit.code}`})${shown ? '' : '; its last stderr lines:'}`);
    if (!shown) for (const line of exit.stderr) console.log(`    | ${line}`);
  }
  for (const sign of report.uncaughtErrors.slice(0, 3)) {
    console.log(`  node ${sign.node}, uncaught on stderr: ${sign.line}`);
    for (const line of sign.excerpt) console.log(`    | ${line}`);
  }
  if (report.hostile) printHostile(report.hostile);
  if (!passed(report) && report.serverErrors.length > 0) {
    console.log('  server stderr (last lines):');
    for (const line of report.serverErrors) console.log(`    ${line}`);
  }
}

const tally = (counts: Record<string, number>) =>
  Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .map(([key, count]) => `${key} ×${count}`)
    .join(', ') || 'none';

function printHostile(h: HostileReport): void {
  const { raw, ws, sse, pull } = h;
  const kib = (bytes: number) => `${Math.round(bytes / 1024)} KiB`;
  const latency = (s: HostileReport['pull']['quiet']) =>
    `${s.p50} / ${s.p90} / ${s.p99} / ${s.max} (n ${s.n}, ${s.failed} failed, ${s.cold} left out: node just started)`;
  console.log(`  hostile participant (${h.activeS} s of hostile traffic)`);
  console.log(
    `    raw TCP: ${raw.connections} connections (${raw.refused} refused: node down), ${raw.resets} reset by us (${raw.resetsAfterRequest} right after the request)`,
  );
  console.log(`      first answer: ${tally(raw.statuses)}`);
  console.log(`    WebSocket flood: ${ws.opened}/${ws.attempts} opened, ${ws.sent} requests sent (${kib(ws.bytesSent)})`);
  if (Object.keys(ws.refused).length > 0) console.log(`      handshake refused: ${tally(ws.refused)}`);
  console.log(`      read in the reading windows (${kib(ws.bytesReceived)}): ${tally(ws.received)}`);
  console.log(
    `      closed by the server: ${tally(ws.closeCodes)}; died with their node: ${ws.diedWithNode}; closed by us: ${ws.closedByUs}` +
      (Object.keys(ws.closeReasons).length > 0
        ? ` (reasons: ${Object.entries(ws.closeReasons)
            .map(([code, reason]) => `${code} ${JSON.stringify(reason)}`)
            .join(', ')})`
        : ''),
  );
  if (Object.keys(ws.errors).length > 0) console.log(`      errors: ${tally(ws.errors)}`);
  console.log(
    `    SSE: ${sse.stalled} streams not read, ${sse.abandoned} abandoned midway, ${sse.endedByServer} ended by the server (${sse.diedWithNode} died with their node), ${kib(sse.bytesRead)} read; statuses ${tally(sse.statuses)}`,
  );
  if (Object.keys(sse.errors).length > 0) console.log(`      errors: ${tally(sse.errors)}`);
  console.log(`    normal client's pull p50 / p90 / p99 / max (ms): quiet ${latency(pull.quiet)}`);
  console.log(`                                                hostile ${latency(pull.hostile)}`);
  console.log(`      ratio hostile / quiet: p50 ${pull.ratioP50 ?? 'n/a'}, p99 ${pull.ratioP99 ?? 'n/a'}`);
  console.log('    raw cases, as answered when not reset by us:');
  for (const [name, outcomes] of Object.entries(raw.cases).sort((a, b) => a[0].localeCompare(b[0]))) {
    const answered = Object.fromEntries(Object.entries(outcomes).filter(([outcome]) => !outcome.includes('by us')));
    console.log(`      ${name}: ${tally(answered)}`);
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
        hostile: cli.hostile,
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
