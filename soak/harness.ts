/**
 * The convergence soak, as a function: start server nodes (the demo, as child
 * processes) on one database, let devices, browsers and the app writer make
 * random writes while they go offline, disconnect and reload and while nodes
 * are killed with SIGKILL and restarted; then bring everyone back, wait for
 * the outboxes to drain and for every replica to match the server, and check
 * the result against the ledger (verify.ts).
 *
 * Everything is bounded: the chaos phase by `durationMs`, the drain and the
 * convergence wait by `settleTimeoutMs`; every child process and browser is
 * stopped in `finally`.
 */
import { setMaxListeners } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import { AppWriter } from './app-writer.js';
import { BrowserClient, DEFAULT_BROWSER_BEHAVIOUR, launchChromium } from './browsers.js';
import { postgresDatabase, type SoakDatabase, sqliteDatabase, type TodoRow } from './database.js';
import { DEFAULT_BEHAVIOUR, Device } from './device.js';
import { DEFAULT_HOSTILE, Hostile, type HostileReport } from './hostile.js';
import { Ledger } from './ledger.js';
import { type CrashSign, freePort, ServerNode, type UnexpectedExit } from './nodes.js';
import { Random, sleep } from './random.js';
import { type ClientState, compareRows, type Verdict, verify } from './verify.js';

export interface SoakOptions {
  store: 'sqlite' | 'postgres';
  /** Length of the chaos phase. */
  durationMs: number;
  /** Node protocol clients. */
  devices: number;
  /** Headless Chromium pages running the real client. */
  browsers: number;
  /** Server processes on the one database (PostgreSQL; SQLite works too, all on one file). */
  nodes: number;
  seed: number;
  /** Pause between two kills, ms (uniform). */
  killEveryMs: [number, number];
  /** How long a killed node stays down before its restart, ms (uniform). */
  downMs: [number, number];
  /**
   * Pause between two maintenance steps during the chaos (uniform; null:
   * none). Most are `engine.cleanup(0, { clientDays })`, pruning every
   * superseded log entry and tombstone (lagging cursors then get reset
   * snapshots) and, half the time, every client record (clients then meet
   * `client_unknown`); the first, and one in four after the second, is a
   * migration by another process, `ALTER TABLE todos ADD COLUMN` (live clients are told to
   * refetch).
   */
  cleanupEveryMs: [number, number] | null;
  /** Rows the writers steer the table towards: fewer rows, more writers colliding on one row. */
  tableRows: number;
  /** Also write through the demo's htmx routes. */
  appWriter: boolean;
  /** Run the hostile participant (hostile.ts): malformed requests, resets, non-reading sockets, floods. */
  hostile: boolean;
  /** Devices hold server changes while a push is in flight, as the browser client does; false replays the client before that fix. */
  holdDuringPush: boolean;
  /** How long the drain and the convergence wait may take, each. */
  settleTimeoutMs: number;
  /** Build folder of the browser client the demo serves (default: its dist/client). */
  clientDir?: string;
  /** Maintenance database for creating the soak's PostgreSQL database. */
  pgAdminUrl: string;
  log: (line: string) => void;
}

export const DEFAULT_OPTIONS: SoakOptions = {
  store: 'sqlite',
  durationMs: 60_000,
  devices: 12,
  browsers: 2,
  nodes: 1,
  seed: 1,
  killEveryMs: [3_000, 9_000],
  downMs: [200, 2_000],
  cleanupEveryMs: [2_000, 6_000],
  tableRows: 20,
  appWriter: true,
  hostile: true,
  holdDuringPush: true,
  settleTimeoutMs: 120_000,
  pgAdminUrl: process.env.RHTMX_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  log: () => {},
};

export interface SoakReport extends Verdict {
  store: SoakOptions['store'];
  nodes: number;
  devices: number;
  browsers: number;
  seed: number;
  durationS: number;
  /** Wall time of the drain and convergence phase. */
  settleS: number;
  kills: number;
  /** `cleanup` runs during the chaos. */
  cleanups: number;
  /** Columns added by another process during the chaos. */
  schemaChanges: number;
  restarts: number;
  reloads: number;
  offlinePeriods: number;
  disconnects: number;
  /** Divergent browsers that a fresh HTTP pull brought back in line (live delivery missed something). */
  fixedByPull: number;
  /** Answers for mutation ids no participant issued (must be 0). */
  unknownAnswers: number;
  /** Device pushes that got no answer, by reason. */
  pushFailures: Record<string, number>;
  /** Device push round trips (send to answer), ms: median, 99th percentile, maximum. */
  pushMs: { p50: number; p99: number; max: number };
  /** The last lines of the servers' stderr, for a failed run. */
  serverErrors: string[];
  /** What the servers wrote to stderr, first line of each message, with how often (all nodes). */
  serverStderr: Record<string, number>;
  /** Server processes that ended on their own (not killed or stopped by the soak): must be none. */
  serverExits: UnexpectedExit[];
  /** Uncaught exceptions, unhandled rejections and fatal errors on the servers' stderr: must be none. */
  uncaughtErrors: CrashSign[];
  /** Processes that exited on their own before listening (their start was retried). */
  startFailures: number;
  /** What the hostile participant did and what the servers answered; null when it was off. */
  hostile: HostileReport | null;
}

/** True when the run kept every promise. */
export const passed = (report: SoakReport): boolean =>
  report.lost === 0 &&
  report.duplicated === 0 &&
  report.divergentClients === 0 &&
  report.unknownAnswers === 0 &&
  report.serverExits.length === 0 &&
  report.uncaughtErrors.length === 0 &&
  !report.findings.some((finding) => finding.kind !== 'divergent');

export async function runSoak(overrides: Partial<SoakOptions> = {}): Promise<SoakReport> {
  const options: SoakOptions = { ...DEFAULT_OPTIONS, ...overrides };
  const { log } = options;
  const random = new Random(options.seed);
  const ledger = new Ledger();
  const work = mkdtempSync(join(tmpdir(), 'rhtmx-soak-clients-'));
  const database: SoakDatabase = options.store === 'sqlite' ? sqliteDatabase() : await postgresDatabase(options.pgAdminUrl);
  const nodes: ServerNode[] = [];
  const devices: Device[] = [];
  const browsers: BrowserClient[] = [];
  let chromium: Browser | null = null;
  let hostile: Hostile | null = null;
  const stop = new AbortController();
  // Every participant sleeps on this one signal.
  setMaxListeners(1_000, stop.signal);
  const started = Date.now();
  try {
    for (let index = 0; index < options.nodes; index++) {
      const node = new ServerNode(index, await freePort(), database.url, options.clientDir);
      // One at a time: the first creates the table and installs the triggers.
      await node.start();
      nodes.push(node);
    }
    // The verdict reads a copy of the log: cleanup prunes the real one.
    await database.keepLog();
    log(`${options.store}: ${nodes.length} node(s) up at ${nodes.map((node) => node.url).join(', ')}`);
    const urls = nodes.map((node) => node.url);

    for (let index = 0; index < options.devices; index++) {
      const device = new Device({
        name: `d${index}`,
        nodes: urls,
        ledger,
        random: random.fork(),
        // Half keep their replica in a journal file, half in memory; transports alternate.
        journalPath: index % 2 === 0 ? join(work, `d${index}.jsonl`) : null,
        transport: (['websocket', 'sse', 'random'] as const)[index % 3] as 'websocket' | 'sse' | 'random',
        holdDuringPush: options.holdDuringPush,
        behaviour: { ...DEFAULT_BEHAVIOUR, tableRows: options.tableRows },
      });
      device.start();
      devices.push(device);
    }
    if (options.browsers > 0) {
      chromium = await launchChromium();
      for (let index = 0; index < options.browsers; index++) {
        const client = new BrowserClient(`b${index}`, chromium, nodes[index % nodes.length] as ServerNode, ledger, random.fork(), {
          ...DEFAULT_BROWSER_BEHAVIOUR,
          tableRows: options.tableRows,
        });
        await client.open();
        browsers.push(client);
      }
    }
    log(
      `${devices.length} devices, ${browsers.length} browsers running; chaos for ${Math.round(options.durationMs / 1000)} s` +
        (options.hostile
          ? `, hostile traffic after a ${Math.round(Math.min(DEFAULT_HOSTILE.quietMs, options.durationMs / 4) / 100) / 10} s quiet sample`
          : ''),
    );

    const app = options.appWriter ? new AppWriter(nodes, database, ledger, random.fork()) : null;
    const chaos = killNodes(nodes, random.fork(), options, stop.signal, log);
    // Forked after every other participant, so a seed replays their choices with the hostile one on or off.
    hostile = options.hostile
      ? new Hostile(nodes, random.fork(), { ...DEFAULT_HOSTILE, quietMs: Math.min(DEFAULT_HOSTILE.quietMs, options.durationMs / 4) })
      : null;
    // Forked last of all, so the seeds of the others replay with it on or off.
    let maintenance = { cleanups: 0, schemaChanges: 0 };
    const cleaner = options.cleanupEveryMs
      ? maintenanceLoop(database, random.fork(), options.cleanupEveryMs, stop.signal, log).then((done) => {
          maintenance = done;
        })
      : null;
    const loops = [
      ...(cleaner ? [cleaner] : []),
      ...devices.map((device) => device.run(stop.signal)),
      ...browsers.map((browser) => browser.run(stop.signal)),
      ...(app ? [app.run(stop.signal)] : []),
      ...(hostile ? [hostile.run(stop.signal)] : []),
      chaos,
    ];
    await sleep(options.durationMs);
    stop.abort();
    await Promise.all(loops);
    const durationS = (Date.now() - started) / 1000;

    // Everyone back: every node up, every client online and connected.
    for (const node of nodes) if (!node.up) await node.start();
    const settleStarted = Date.now();
    for (const device of devices) device.settle();
    for (const browser of browsers) await browser.settle();
    log('chaos over: draining outboxes');
    const drained = await until(options.settleTimeoutMs, async (report) => {
      const pending = await Promise.all([
        ...devices.map(async (device) => [device.name, device.pendingCount()] as const),
        ...browsers.map(async (browser) => [browser.name, await browser.pendingCount().catch(() => -1)] as const),
      ]);
      const waiting = pending.filter(([, count]) => count !== 0);
      if (report) log(`still draining: ${waiting.map(([name, count]) => `${name} ${count}`).join(', ')}`);
      return waiting.length === 0;
    });
    if (!drained) log('outboxes did not drain in time');
    log('waiting for every replica to match the server');
    let serverRows: TodoRow[] = [];
    await until(options.settleTimeoutMs, async (report) => {
      serverRows = await database.rows();
      const states = await Promise.all([
        ...devices.map(async (device) => [device.name, device.rows()] as const),
        ...browsers.map(async (browser) => [browser.name, await browser.rows().catch(() => [])] as const),
      ]);
      const behind = states.filter(([, rows]) => compareRows(serverRows, rows) !== null).map(([name]) => name);
      if (report) log(`not yet converged: ${behind.join(', ')}`);
      return behind.length === 0;
    });
    const settleS = (Date.now() - settleStarted) / 1000;

    // Freeze: no more live changes while we read every side.
    for (const device of devices) device.stop();
    for (const browser of browsers) await browser.setOffline(true);
    serverRows = await database.rows();
    const logEntries = await database.log();
    const clients: ClientState[] = [
      ...devices.map((device) => ({ name: device.name, kind: 'device' as const, rows: device.rows(), pending: device.pendingCount() })),
    ];
    let fixedByPull = 0;
    for (const browser of browsers) {
      await browser.collectAnswers();
      const rows = await browser.rows();
      clients.push({ name: browser.name, kind: 'browser', rows, pending: await browser.pendingCount() });
      if (compareRows(serverRows, rows) !== null) {
        // Diagnosis only: the browser stays counted as divergent.
        await browser.setOffline(false);
        await browser.syncNow().catch(() => {});
        if (compareRows(serverRows, await browser.rows()) === null) fixedByPull++;
      }
    }
    const verdict = verify(ledger.records, serverRows, logEntries, clients);
    const serverExits = nodes.flatMap((node) => node.unexpectedExits);
    const uncaughtErrors = nodes.flatMap((node) => node.crashSigns);
    const at = (epoch: number) => `${Math.round((epoch - started) / 100) / 10} s`;
    for (const exit of serverExits) {
      verdict.findings.push({
        kind: 'server-exit',
        detail: `node ${exit.node} exited on its own at ${at(exit.at)} (${exit.signal ?? `code ${exit.code}`})`,
      });
    }
    for (const sign of uncaughtErrors) {
      verdict.findings.push({ kind: 'uncaught-error', detail: `node ${sign.node} at ${at(sign.at)}: ${sign.line}` });
    }
    for (const device of devices) {
      const diff = compareRows(serverRows, device.rows());
      for (const id of diff?.ids.slice(0, 3) ?? []) {
        verdict.findings.push({ kind: 'divergent', detail: `  ${device.name} holds ${id} as ${device.describe(id)}` });
      }
    }
    const sum = (pick: (stats: { reloads?: number; offlinePeriods?: number; disconnects?: number }) => number | undefined) =>
      [...devices.map((device) => device.stats), ...browsers.map((browser) => browser.stats)].reduce(
        (total, stats) => total + (pick(stats) ?? 0),
        0,
      );
    return {
      ...verdict,
      store: options.store,
      nodes: nodes.length,
      devices: devices.length,
      browsers: browsers.length,
      seed: options.seed,
      durationS: Math.round(durationS),
      settleS: Math.round(settleS * 10) / 10,
      kills: nodes.reduce((total, node) => total + node.kills, 0),
      cleanups: maintenance.cleanups,
      schemaChanges: maintenance.schemaChanges,
      restarts: nodes.reduce((total, node) => total + node.starts - 1, 0),
      reloads: sum((stats) => stats.reloads),
      offlinePeriods: sum((stats) => stats.offlinePeriods),
      disconnects: sum((stats) => stats.disconnects),
      fixedByPull,
      unknownAnswers: [...devices.map((device) => device.stats), ...browsers.map((browser) => browser.stats)].reduce(
        (total, stats) => total + stats.unknownAnswers,
        0,
      ),
      pushFailures: devices.reduce<Record<string, number>>((total, device) => {
        for (const [reason, count] of Object.entries(device.stats.pushFailures)) total[reason] = (total[reason] ?? 0) + count;
        return total;
      }, {}),
      pushMs: percentiles(devices.flatMap((device) => device.stats.pushMs)),
      serverErrors: nodes.flatMap((node) => node.stderr),
      serverStderr: nodes.reduce<Record<string, number>>((total, node) => {
        for (const [line, count] of node.headlines) total[line] = (total[line] ?? 0) + count;
        return total;
      }, {}),
      serverExits,
      uncaughtErrors,
      startFailures: nodes.reduce((total, node) => total + node.startFailures, 0),
      hostile: hostile?.report() ?? null,
    };
  } finally {
    stop.abort();
    hostile?.dispose();
    for (const device of devices) device.dispose();
    for (const browser of browsers) await browser.close();
    await chromium?.close().catch(() => {});
    await Promise.all(nodes.map((node) => node.stop().catch(() => {})));
    await database.dispose().catch((error: unknown) => log(`could not drop the soak database: ${(error as Error).message}`));
    rmSync(work, { recursive: true, force: true });
  }
}

/** Kill a random node (sometimes every node) with SIGKILL, keep it down a while, restart it; until `signal`. */
async function killNodes(
  nodes: ServerNode[],
  random: Random,
  options: SoakOptions,
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<void> {
  while (!signal.aborted) {
    await sleep(random.int(options.killEveryMs[0], options.killEveryMs[1]), signal);
    if (signal.aborted) break;
    const victims = nodes.length > 1 && random.chance(0.2) ? nodes : [random.pick(nodes) as ServerNode];
    await Promise.all(victims.map((node) => node.kill()));
    log(`killed node ${victims.map((node) => node.index).join(', ')}`);
    // The restart happens even when the phase ends meanwhile: nodes must be up for the drain.
    await sleep(random.int(options.downMs[0], options.downMs[1]));
    await Promise.all(victims.map((node) => node.start()));
  }
}

/** Run `cleanup`, and now and then a migration, while the chaos lasts; resolves with how many of each completed. */
async function maintenanceLoop(
  database: SoakDatabase,
  random: Random,
  everyMs: [number, number],
  signal: AbortSignal,
  log: (line: string) => void,
): Promise<{ cleanups: number; schemaChanges: number }> {
  const done = { cleanups: 0, schemaChanges: 0 };
  while (!signal.aborted) {
    await sleep(random.int(everyMs[0], everyMs[1]), signal);
    if (signal.aborted) break;
    try {
      // The first step is a migration and the second a cleanup, so every run has both.
      if (done.schemaChanges === 0 || (done.cleanups > 0 && random.chance(0.25))) {
        const column = `added_${done.schemaChanges + 1}`;
        await database.addColumn(column);
        done.schemaChanges++;
        log(`migration: ADD COLUMN ${column}`);
        continue;
      }
      const clientDays = random.chance(0.5) ? 0 : 30;
      const removed = await database.cleanup(clientDays);
      done.cleanups++;
      log(`cleanup: ${removed} log entries${clientDays === 0 ? ', every client record' : ''}`);
    } catch (error) {
      log(`maintenance failed: ${(error as Error).message}`);
    }
  }
  return done;
}

function percentiles(values: number[]): { p50: number; p99: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0 };
}

/** Poll `check` every 250 ms until it holds or `ms` passed; resolves with whether it held. `report` is set every 10 s. */
async function until(ms: number, check: (report: boolean) => Promise<boolean>): Promise<boolean> {
  const started = Date.now();
  let reported = started;
  for (;;) {
    const report = Date.now() - reported >= 10_000;
    if (report) reported = Date.now();
    if (await check(report).catch(() => false)) return true;
    if (Date.now() - started > ms) return false;
    await sleep(250);
  }
}
