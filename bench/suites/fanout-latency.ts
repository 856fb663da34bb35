/**
 * Benchmark 1: write → every client latency, our engine against a raw
 * broadcast of the same bytes, for WebSocket and SSE clients.
 *
 * Server alone in its process, clients split over the two client processes.
 * Writes alternate between a push through the engine and a raw SQL insert by
 * app code (followed by `engine.notify()`); each write's time is taken at
 * commit. The floor servers take it right before their broadcast loop. The
 * next write starts only once every client has the previous one, so this
 * measures latency, not queueing.
 */
import { join } from 'node:path';
import { now, sleep } from '../lib/clock.js';
import { type BenchContext, ms, type SuiteResult, type Target, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { type LatencySummary, median, summarize } from '../lib/stats.js';

type Transport = 'ws' | 'sse';
type Side = 'rhtmx' | 'raw';

export interface LatencyRun {
  side: Side;
  transport: Transport;
  clients: number;
  round: number;
  messageBytes: number;
  connectMs: number;
  /** Every (write, client) delivery. */
  delivery: LatencySummary;
  /** Per write: when the last client had it. */
  lastClient: LatencySummary;
  /** Our engine only: deliveries split by how the row was written. */
  byWrite?: { push: LatencySummary; sql: LatencySummary };
}

const SERVER = join(ROOT, 'bench/fanout/server.ts');

/** Wait until both client processes report that all their sockets got `seq`. */
export function allReceived(ctx: BenchContext, seq: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending = 2;
    const offs = ctx.clients.flatMap((worker) => [
      worker.on('all', (data: { seq: number }) => {
        if (data.seq !== seq) return;
        if (--pending === 0) finish();
      }),
      worker.on('closed', (data: { code: number }) => {
        clearTimeout(timer);
        for (const off of offs) off();
        reject(new Error(`the server closed a client mid-run (code ${data.code})`));
      }),
    ]);
    const timer = setTimeout(() => {
      for (const off of offs) off();
      reject(new Error(`write ${seq} did not reach every client within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = () => {
      clearTimeout(timer);
      for (const off of offs) off();
      resolve();
    };
  });
}

export async function runLatency(
  ctx: BenchContext,
  options: { side: Side; transport: Transport; clients: number; round: number; warmup: number; writes: number },
): Promise<LatencyRun> {
  const { side, transport, clients } = options;
  const server = await Worker.start('fanout-server', SERVER, { fds: clients + 1024, nodeFlags: ['--expose-gc'] });
  try {
    const mode = side === 'rhtmx' ? 'rhtmx' : transport === 'ws' ? 'raw-ws' : 'raw-sse';
    const { port } = await server.call<{ port: number }>('start', { mode });
    const base = `127.0.0.1:${port}`;
    const url =
      side === 'rhtmx'
        ? transport === 'ws'
          ? `ws://${base}/api/sync/ws?protocol=2`
          : `http://${base}/api/sync/events?entities=items&protocol=2`
        : transport === 'ws'
          ? `ws://${base}/`
          : `http://${base}/`;
    const half = Math.floor(clients / 2);
    const connectStart = now();
    await Promise.all(
      ctx.clients.map((worker, index) =>
        worker.call('connect', { kind: transport, url, count: index === 0 ? half : clients - half, protocol: side }),
      ),
    );
    const connectMs = now() - connectStart;
    const connected = await server.call<number>('connections');
    if (connected !== clients) throw new Error(`server sees ${connected} of ${clients} connections`);
    await Promise.all(ctx.clients.map((worker) => worker.call('latencyMode')));
    await sleep(200);

    const total = options.warmup + options.writes;
    for (let seq = 1; seq <= total; seq++) {
      const received = allReceived(ctx, seq, 30_000);
      await server.call('write', { seq, kind: seq % 2 === 0 ? 'sql' : 'push' });
      await received;
      // A short, varying pause so writes never line up with timers (heartbeats, polls).
      await sleep(2 + (seq % 4));
    }

    const { writes, messageBytes } = await server.call<{ writes: Record<string, number>; messageBytes: number }>('writes');
    const collected = await Promise.all(ctx.clients.map((worker) => worker.call<{ arrivals: Record<string, number[]> }>('collect')));
    const all: number[] = [];
    const last: number[] = [];
    const bySql: number[] = [];
    const byPush: number[] = [];
    for (let seq = options.warmup + 1; seq <= total; seq++) {
      const t0 = writes[seq];
      if (t0 === undefined) throw new Error(`no write time for seq ${seq}`);
      let slowest = 0;
      for (const { arrivals } of collected) {
        for (const t of arrivals[seq] ?? []) {
          const latency = t - t0;
          all.push(latency);
          (seq % 2 === 0 ? bySql : byPush).push(latency);
          if (latency > slowest) slowest = latency;
        }
      }
      last.push(slowest);
    }
    if (all.length !== options.writes * clients) {
      throw new Error(`expected ${options.writes * clients} deliveries, got ${all.length}`);
    }
    if (all.some((latency) => latency < 0)) throw new Error('a client received a write before its commit: clocks disagree');
    await Promise.all(ctx.clients.map((worker) => worker.call('close')));
    await server.call('stop');
    return {
      side,
      transport,
      clients,
      round: options.round,
      messageBytes,
      connectMs,
      delivery: summarize(all),
      lastClient: summarize(last),
      byWrite: side === 'rhtmx' ? { push: summarize(byPush), sql: summarize(bySql) } : undefined,
    };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await server.stop();
  }
}

/** Writes measured per run: enough deliveries for a stable p99 without making 5,000 clients slow. */
function writesFor(clients: number, quick: boolean): number {
  if (quick) return 100;
  return clients <= 100 ? 300 : clients <= 1000 ? 150 : 60;
}

export async function fanoutLatency(ctx: BenchContext): Promise<SuiteResult> {
  const sizes = ctx.quick ? [100] : [100, 1000, 5000];
  const rounds = ctx.quick ? 1 : 3;
  const runs: LatencyRun[] = [];
  const notes: string[] = [];
  for (const transport of ['ws', 'sse'] as const) {
    for (const requested of sizes) {
      // Each side needs one fd per socket plus headroom; the client processes need half each.
      const clients = Math.min(requested, ctx.fdHard - 1024);
      if (clients < requested) notes.push(`${transport} ${requested}: fd hard limit ${ctx.fdHard} allowed only ${clients} clients`);
      for (let round = 1; round <= rounds; round++) {
        // Alternate which side goes first so drift (thermal, page cache) does not favour one.
        const order: Side[] = round % 2 === 1 ? ['raw', 'rhtmx'] : ['rhtmx', 'raw'];
        for (const side of order) {
          ctx.log(`fan-out ${transport} ${side} ${clients} clients, round ${round}/${rounds}`);
          const run = await runLatency(ctx, { side, transport, clients, round, warmup: 20, writes: writesFor(clients, ctx.quick) });
          ctx.log(
            `  p50 ${ms(run.delivery.p50)} ms, p99 ${ms(run.delivery.p99)} ms, last client p50 ${ms(run.lastClient.p50)} ms (${run.messageBytes} B)`,
          );
          runs.push(run);
        }
      }
    }
  }

  const rows: Array<Array<string | number>> = [];
  const targets: Target[] = [];
  const comparisons: unknown[] = [];
  for (const transport of ['ws', 'sse'] as const) {
    for (const clients of [...new Set(runs.filter((run) => run.transport === transport).map((run) => run.clients))]) {
      const pick = (side: Side) => runs.filter((run) => run.side === side && run.transport === transport && run.clients === clients);
      const ours = pick('rhtmx');
      const raw = pick('raw');
      const med = (list: LatencyRun[], get: (run: LatencyRun) => number) => median(list.map(get));
      const o = { p50: med(ours, (r) => r.delivery.p50), p99: med(ours, (r) => r.delivery.p99), last: med(ours, (r) => r.lastClient.p50) };
      const f = { p50: med(raw, (r) => r.delivery.p50), p99: med(raw, (r) => r.delivery.p99), last: med(raw, (r) => r.lastClient.p50) };
      const label = transport === 'ws' ? 'WebSocket' : 'SSE';
      rows.push([
        label,
        clients.toLocaleString('en-US'),
        `${ms(o.p50)} / ${ms(o.p99)}`,
        `${ms(f.p50)} / ${ms(f.p99)}`,
        times(o.p50 / f.p50),
        times(o.p99 / f.p99),
        `${ms(o.last)} / ${ms(f.last)}`,
      ]);
      targets.push({
        what: `${label} fan-out p99, ${clients.toLocaleString('en-US')} clients`,
        ratio: o.p99 / f.p99,
        goal: `≤ 1.5× raw ${transport === 'ws' ? 'ws' : 'SSE'} broadcast p99`,
        met: o.p99 / f.p99 <= 1.5,
      });
      comparisons.push({ transport, clients, ours: o, floor: f, ratioP50: o.p50 / f.p50, ratioP99: o.p99 / f.p99 });
    }
  }
  return {
    id: 'fanout-latency',
    title: '1. Write → all clients latency',
    method:
      'Server alone in its process, clients split over 2 client processes, one shared monotonic clock. Our writes alternate a push and an app SQL insert (+ `engine.notify()`), timed from commit; the floor is a raw `ws` / raw node:http SSE broadcast of the same message bytes, timed from the start of its send loop. ' +
      `Median over ${rounds} round(s) of each run's p50/p99 over every (write, client) delivery; 20 warm-up writes are not counted.`,
    table: {
      columns: [
        'transport',
        'clients',
        'ours p50 / p99 ms',
        'raw p50 / p99 ms',
        'p50 ratio',
        'p99 ratio',
        'last client p50 ms (ours / raw)',
      ],
      rows,
    },
    targets,
    notes,
    data: { comparisons, runs },
  };
}
