/**
 * Benchmark 9: how fast a write by another process wakes the server. The
 * engine (default `pollMs`, 25 ms) on a SQLite file, 10 WebSocket clients;
 * writes alternate between app code in the server's process (`INSERT` +
 * `engine.notify()`, the in-process case) and app code in a writer process
 * of its own (`INSERT` on its own connection, nobody notifies: the engine
 * finds it by itself). Each write's time is taken at its commit, in the
 * process that committed it (one monotonic clock, checked by the runner).
 */
import { join } from 'node:path';
import { sleep } from '../lib/clock.js';
import { type BenchContext, ms, type SuiteResult } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median, summarize } from '../lib/stats.js';
import { allReceived } from './fanout-latency.js';

const SERVER = join(ROOT, 'bench/fanout/server.ts');
const WRITER = join(ROOT, 'bench/fanout/writer.ts');
const CLIENTS = 10;
const WARMUP = 20;

interface Round {
  inProcess: ReturnType<typeof summarize>;
  otherProcess: ReturnType<typeof summarize>;
}

async function round(ctx: BenchContext, writes: number): Promise<Round> {
  const server = await Worker.start('fanout-server', SERVER, { fds: CLIENTS + 1024 });
  const writer = await Worker.start('writer', WRITER);
  try {
    const { port, dbPath } = await server.call<{ port: number; dbPath: string }>('start', { mode: 'rhtmx' });
    const url = `ws://127.0.0.1:${port}/api/sync/ws?protocol=2`;
    await Promise.all(ctx.clients.map((worker) => worker.call('connect', { kind: 'ws', url, count: CLIENTS / 2, protocol: 'rhtmx' })));
    await Promise.all(ctx.clients.map((worker) => worker.call('latencyMode')));
    await sleep(200);
    const elsewhere: Record<number, number> = {};
    const total = WARMUP + writes;
    for (let seq = 1; seq <= total; seq++) {
      const received = allReceived(ctx, seq, 30_000);
      if (seq % 2 === 0) await server.call('write', { seq, kind: 'sql' });
      else elsewhere[seq] = await writer.call<number>('one', { path: dbPath, seq });
      await received;
      // A varying pause, so writes fall anywhere in the poll's 25 ms period.
      await sleep(3 + ((seq * 7) % 23));
    }
    const { writes: here } = await server.call<{ writes: Record<string, number> }>('writes');
    const collected = await Promise.all(ctx.clients.map((worker) => worker.call<{ arrivals: Record<string, number[]> }>('collect')));
    const inProcess: number[] = [];
    const otherProcess: number[] = [];
    for (let seq = WARMUP + 1; seq <= total; seq++) {
      const t0 = seq % 2 === 0 ? here[seq] : elsewhere[seq];
      if (t0 === undefined) throw new Error(`no commit time for write ${seq}`);
      for (const { arrivals } of collected) {
        for (const t of arrivals[seq] ?? []) (seq % 2 === 0 ? inProcess : otherProcess).push(t - t0);
      }
    }
    if (inProcess.length + otherProcess.length !== writes * CLIENTS) throw new Error('a delivery is missing');
    await Promise.all(ctx.clients.map((worker) => worker.call('close')));
    await server.call('stop');
    return { inProcess: summarize(inProcess), otherProcess: summarize(otherProcess) };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await writer.call('close').catch(() => {});
    await writer.stop();
    await server.stop();
  }
}

export async function wakeUpSuite(ctx: BenchContext): Promise<SuiteResult> {
  const rounds = ctx.quick ? 1 : 3;
  const writes = ctx.quick ? 60 : 300;
  const runs: Round[] = [];
  for (let index = 1; index <= rounds; index++) {
    ctx.log(`wake-up round ${index}/${rounds}: ${writes} writes, ${CLIENTS} clients`);
    runs.push(await round(ctx, writes));
    const last = runs.at(-1) as Round;
    ctx.log(`  p50 in process ${ms(last.inProcess.p50)} ms, other process ${ms(last.otherProcess.p50)} ms`);
  }
  const med = (pick: (run: Round) => number) => median(runs.map(pick));
  const here = { p50: med((run) => run.inProcess.p50), p99: med((run) => run.inProcess.p99) };
  const there = { p50: med((run) => run.otherProcess.p50), p99: med((run) => run.otherProcess.p99) };
  const above = there.p50 - here.p50;
  return {
    id: 'wake-up',
    title: '9. A write by another process → clients',
    method: `The engine (default poll every 25 ms) on a SQLite file, ${CLIENTS} WebSocket clients in two client processes. Writes alternate: app code in the server process (\`INSERT\` + \`engine.notify()\`) and app code in a writer process of its own (\`INSERT\` on its own connection; nobody notifies, the engine's watch on the WAL file wakes it). Latency from each write's commit to each client, one shared monotonic clock; ${WARMUP} warm-up writes not counted, pauses of 3–25 ms so writes fall anywhere in the poll period. Median of ${rounds} round(s) of each run's p50/p99.`,
    table: {
      columns: ['write by', 'p50 ms', 'p99 ms'],
      rows: [
        ['app code in the server process (+ notify)', ms(here.p50), ms(here.p99)],
        ['app code in another process (nobody notifies)', ms(there.p50), ms(there.p99)],
      ],
    },
    targets: [
      {
        what: 'a write by another process → clients, p50 above an in-process write',
        ratio: above,
        measured: `+${ms(above)} ms`,
        goal: '≤ +5 ms',
        met: above <= 5,
      },
    ],
    data: { clients: CLIENTS, writes, here, there, runs },
  };
}
