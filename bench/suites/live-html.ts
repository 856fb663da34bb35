/**
 * Benchmark 10: live HTML. A write by app SQL → every open htmx page shows
 * it, with 1,000 simulated pages (WebSocket clients in the two client
 * processes), three ways in one run:
 *   - live HTML: our engine renders the row once and sends the fragment with
 *     the change; a page is updated when the message arrives;
 *   - refetch: our engine without a renderer; each page does what htmx does
 *     on `rhtmx:items:changed`: GET its list fragment (the newest 50 rows,
 *     rendered by the app), and is updated when the answer is read;
 *   - floor: a raw `ws` broadcast of the same message (row + fragment),
 *     encoded once per write.
 * Time to updated per (write, page), p50/p99, and the server process's CPU
 * time per write. The next write starts once every page has the previous.
 */
import { join } from 'node:path';
import { now, sleep } from '../lib/clock.js';
import { type BenchContext, ms, type SuiteResult, type Target, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { type LatencySummary, median, summarize } from '../lib/stats.js';
import { allReceived } from './fanout-latency.js';

const SERVER = join(ROOT, 'bench/fanout/server.ts');

type Way = 'live' | 'refetch' | 'floor';

interface Run {
  way: Way;
  pages: number;
  round: number;
  messageBytes: number;
  updated: LatencySummary;
  /** Server CPU time per write, ms. */
  cpuMsPerWrite: number;
}

async function runWay(ctx: BenchContext, way: Way, pages: number, round: number, warmup: number, writes: number): Promise<Run> {
  const server = await Worker.start('live-html-server', SERVER, { fds: pages * 2 + 1024, nodeFlags: ['--expose-gc'] });
  try {
    const { port } = await server.call<{ port: number }>(
      'start',
      way === 'floor' ? { mode: 'raw-ws', html: true } : { mode: 'rhtmx', render: way === 'live' },
    );
    const base = `127.0.0.1:${port}`;
    const url = way === 'floor' ? `ws://${base}/` : `ws://${base}/api/sync/ws?protocol=2`;
    const refetch = way === 'refetch' ? `http://${base}/items-fragment` : undefined;
    const half = Math.floor(pages / 2);
    await Promise.all(
      ctx.clients.map((worker, index) =>
        worker.call('connect', {
          kind: 'ws',
          url,
          count: index === 0 ? half : pages - half,
          protocol: way === 'floor' ? 'raw' : 'rhtmx',
          refetch,
        }),
      ),
    );
    const connected = await server.call<number>('connections');
    if (connected !== pages) throw new Error(`server sees ${connected} of ${pages} pages`);
    await Promise.all(ctx.clients.map((worker) => worker.call('latencyMode')));
    await sleep(200);
    const total = warmup + writes;
    let cpuStart = 0;
    for (let seq = 1; seq <= total; seq++) {
      if (seq === warmup + 1) cpuStart = await server.call<number>('cpu');
      const received = allReceived(ctx, seq, 60_000);
      await server.call('write', { seq, kind: 'sql' });
      await received;
      await sleep(2 + (seq % 4));
    }
    const cpuMsPerWrite = ((await server.call<number>('cpu')) - cpuStart) / 1000 / writes;
    const { writes: at, messageBytes } = await server.call<{ writes: Record<string, number>; messageBytes: number }>('writes');
    const collected = await Promise.all(ctx.clients.map((worker) => worker.call<{ arrivals: Record<string, number[]> }>('collect')));
    const all: number[] = [];
    for (let seq = warmup + 1; seq <= total; seq++) {
      const t0 = at[seq];
      if (t0 === undefined) throw new Error(`no write time for seq ${seq}`);
      for (const { arrivals } of collected) for (const t of arrivals[seq] ?? []) all.push(t - t0);
    }
    if (all.length !== writes * pages) throw new Error(`expected ${writes * pages} updates, got ${all.length}`);
    await Promise.all(ctx.clients.map((worker) => worker.call('close')));
    await server.call('stop');
    return { way, pages, round, messageBytes, updated: summarize(all), cpuMsPerWrite };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await server.stop();
  }
}

export async function liveHtmlSuite(ctx: BenchContext): Promise<SuiteResult> {
  const pages = Math.min(ctx.quick ? 100 : 1000, ctx.fdHard - 1024);
  const rounds = ctx.quick ? 1 : 3;
  const writesOf: Record<Way, number> = ctx.quick ? { live: 50, floor: 50, refetch: 20 } : { live: 150, floor: 150, refetch: 40 };
  const runs: Run[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order: Way[] = round % 2 === 1 ? ['floor', 'live', 'refetch'] : ['refetch', 'live', 'floor'];
    for (const way of order) {
      ctx.log(`live HTML: ${way}, ${pages} pages, round ${round}/${rounds}`);
      const started = now();
      const run = await runWay(ctx, way, pages, round, 10, writesOf[way]);
      ctx.log(
        `  p50 ${ms(run.updated.p50)} ms, p99 ${ms(run.updated.p99)} ms, server CPU ${ms(run.cpuMsPerWrite)} ms/write (${run.messageBytes} B, ${Math.round((now() - started) / 1000)} s)`,
      );
      runs.push(run);
    }
  }
  const of = (way: Way) => runs.filter((run) => run.way === way);
  const med = (way: Way, get: (run: Run) => number) => median(of(way).map(get));
  const summary = (way: Way) => ({
    p50: med(way, (run) => run.updated.p50),
    p99: med(way, (run) => run.updated.p99),
    cpu: med(way, (run) => run.cpuMsPerWrite),
  });
  const floor = summary('floor');
  const rows = (['live', 'refetch', 'floor'] as const).map((way) => {
    const s = summary(way);
    const label =
      way === 'live'
        ? 'live HTML (pushed fragments)'
        : way === 'refetch'
          ? 'refetch on the event (htmx today)'
          : 'raw ws broadcast (floor)';
    return [label, `${ms(s.p50)} / ${ms(s.p99)}`, times(s.p50 / floor.p50), times(s.p99 / floor.p99), ms(s.cpu)];
  });
  const live = summary('live');
  const targets: Target[] = [
    {
      what: `live HTML, write → all pages updated p99, ${pages.toLocaleString('en-US')} pages`,
      ratio: live.p99 / floor.p99,
      goal: '≤ 1.5× raw ws broadcast p99',
      met: live.p99 / floor.p99 <= 1.5,
    },
  ];
  return {
    id: 'live-html',
    title: '10. Live HTML: a write → every open page updated',
    method:
      `${pages.toLocaleString('en-US')} simulated htmx pages (WebSocket clients split over 2 client processes), server alone in its process; each write is an app SQL insert (+ \`engine.notify()\`), timed from commit. ` +
      'Live HTML: the engine renders the row once and pushes it, a page is updated when the message arrives. Refetch: no renderer; each page GETs its list fragment (the newest 50 rows, rendered by the app) on the change, as htmx does, and is updated when the answer is read. ' +
      'Floor: a raw `ws` broadcast of the same message (row and fragment), encoded once per write. The next write waits for every page. ' +
      `Median of ${rounds} round(s) of each run's p50/p99 over every (write, page); server CPU is user + system time of the server process per write.`,
    table: {
      columns: ['way', 'updated p50 / p99 ms', 'p50 vs floor', 'p99 vs floor', 'server CPU ms per write'],
      rows,
    },
    targets,
    data: { runs, summary: { live, refetch: summary('refetch'), floor } },
  };
}
