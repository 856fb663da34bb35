/**
 * `npm run bench` (full) / `npm run bench:ci` (`--quick`).
 *
 * Runs every benchmark on loopback, each against a floor or a peer measured
 * in this same run, and writes bench/results/latest.json plus the tables in
 * docs/benchmarks.md. Options: `--quick`, `--only=<id>[,<id>…]` (suite ids:
 * fanout-latency, throughput, catch-up, push, memory, browser, hostile,
 * field-write, wake-up, live-html; only those suites' entries in the results file are replaced,
 * and docs are not rewritten), `--no-docs`, `--render` (rewrite
 * docs/benchmarks.md from the results file without running anything: each
 * suite re-run alone says so, with its own run's date, commit and load).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { now } from './lib/clock.js';
import type { BenchContext, SuiteResult } from './lib/context.js';
import { checkClock, fdLimits, ROOT, Worker } from './lib/proc.js';
import { renderMarkdown, writeDocs } from './report.js';
import { browserSuite } from './suites/browser.js';
import { catchUp } from './suites/catch-up.js';
import { fanoutLatency } from './suites/fanout-latency.js';
import { fieldWriteSuite } from './suites/field-write.js';
import { hostileSuite } from './suites/hostile.js';
import { liveHtmlSuite } from './suites/live-html.js';
import { memorySuite } from './suites/memory.js';
import { pushSuite } from './suites/push.js';
import { throughput } from './suites/throughput.js';
import { wakeUpSuite } from './suites/wake-up.js';

const SUITES: Record<string, (ctx: BenchContext) => Promise<SuiteResult>> = {
  'fanout-latency': fanoutLatency,
  throughput,
  'catch-up': catchUp,
  push: pushSuite,
  memory: memorySuite,
  browser: browserSuite,
  hostile: hostileSuite,
  'field-write': fieldWriteSuite,
  'wake-up': wakeUpSuite,
  'live-html': liveHtmlSuite,
};

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args
  .find((arg) => arg.startsWith('--only='))
  ?.slice('--only='.length)
  .split(',');
// Only a full run of every suite rewrites the committed tables.
const writeDocsToo = !quick && !args.includes('--no-docs');

const loadAtStart = loadavg();
const log = (message: string) => console.log(`[bench ${((now() - started) / 1000).toFixed(0).padStart(4)}s] ${message}`);
const started = now();

/** Rewrite docs/benchmarks.md from bench/results/latest.json. */
function render(): void {
  const { environment, suites } = JSON.parse(readFileSync(join(ROOT, 'bench/results/latest.json'), 'utf8')) as {
    environment: Record<string, unknown>;
    suites: Array<SuiteResult & { environment?: Record<string, unknown> }>;
  };
  writeDocs(renderMarkdown(environment, suites));
  log('updated docs/benchmarks.md from bench/results/latest.json');
}

async function main(): Promise<void> {
  if (args.includes('--render')) return render();
  // Benchmark what the tests test: a fresh build of the browser client.
  execFileSync(process.execPath, [join(ROOT, 'scripts/build.mjs'), '--client-only'], { cwd: ROOT, stdio: 'inherit' });
  const { soft, hard } = fdLimits();
  log(`fd limit ${soft} (hard ${hard}); workers raise their own soft limit as needed`);
  const clientWorker = join(ROOT, 'bench/fanout/clients.ts');
  const clients: [Worker, Worker] = [
    await Worker.start('clients-a', clientWorker, { fds: Math.min(hard, 8192) }),
    await Worker.start('clients-b', clientWorker, { fds: Math.min(hard, 8192) }),
  ];
  const clock = await Promise.all(clients.map(checkClock));
  if (clock.some((check) => !check.ok)) throw new Error('the monotonic clock is not shared between processes: latencies would be wrong');
  const ctx: BenchContext = { quick, clients, fdHard: hard, log };
  const results: SuiteResult[] = [];
  const failed: string[] = [];
  try {
    for (const [id, suite] of Object.entries(SUITES)) {
      if (only && !only.includes(id)) continue;
      log(`== ${id}`);
      try {
        results.push(await suite(ctx));
      } catch (error) {
        // One failing suite must not lose the others' results: report it where its table would be.
        log(`${id} failed: ${(error as Error).stack ?? error}`);
        failed.push(id);
        results.push({
          id,
          title: id,
          method: 'This suite failed in this run.',
          table: { columns: ['error'], rows: [[String((error as Error).message ?? error).split('\n')[0] ?? 'failed']] },
          todo: ['rerun this suite: it failed (see the error above)'],
          data: { error: String((error as Error).stack ?? error) },
        });
        await Promise.all(clients.map((worker) => worker.call('close').catch(() => {})));
      }
    }
  } finally {
    await Promise.all(clients.map((worker) => worker.stop()));
  }
  const environment = {
    date: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    node: process.version,
    cpus: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    fdLimit: { soft, hard },
    clockCheck: clock,
    // Other work on the machine moves absolute numbers (the ratios less): 1-minute load at start and end.
    loadAverage: { start: round1(loadAtStart[0]), end: round1(loadavg()[0]) },
    commit: gitCommit(),
    durationS: Math.round((now() - started) / 1000),
  };
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const name = quick ? 'latest-quick.json' : 'latest.json';
  const file = join(ROOT, 'bench/results', name);
  // A run of some suites replaces only theirs in the results file (each carrying its own run's environment);
  // the others, and the file's environment, stay those of the last run of everything.
  const output = only && existsSync(file) ? mergeResults(file, environment, results) : { environment, suites: results };
  writeFileSync(file, `${JSON.stringify(output, null, 2)}\n`);
  log(`wrote bench/results/${name}`);
  const markdown = renderMarkdown(environment, results);
  console.log(`\n${markdown}`);
  if (writeDocsToo && !only) {
    writeDocs(markdown);
    log('updated docs/benchmarks.md');
  }
  if (failed.length > 0) {
    log(`failed suites: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

function mergeResults(file: string, environment: Record<string, unknown>, results: SuiteResult[]): unknown {
  const previous = JSON.parse(readFileSync(file, 'utf8')) as { environment?: unknown; suites?: Array<{ id: string }> };
  const suites: unknown[] = [...(previous.suites ?? [])];
  for (const result of results) {
    const entry = { ...result, environment };
    const at = suites.findIndex((suite) => (suite as { id: string }).id === result.id);
    if (at >= 0) suites[at] = entry;
    else suites.push(entry);
  }
  return { ...previous, suites };
}

const round1 = (value: number | undefined) => Math.round((value ?? 0) * 10) / 10;

function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
