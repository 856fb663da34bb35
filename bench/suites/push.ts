/**
 * Benchmark 4: push throughput over HTTP with exactly-once bookkeeping,
 * against a hand-written floor endpoint doing the least the same guarantee
 * needs (one transaction holding the rows and the client's last mutation
 * id) on the same stack (node:http + better-sqlite3).
 *
 * Several clients push at once, each with its own client id and increasing
 * mutation ids, each waiting for its answer before the next push (as our
 * browser client's outbox does). Conflicts: server-wins, every update sent
 * with a stale base_version, so each is answered with the server row.
 */
import { join } from 'node:path';
import { type BenchContext, ms, rate, type SuiteResult, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median, summarize } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/http/server.ts');
const CLIENT = join(ROOT, 'bench/http/client.ts');

interface PushResult {
  ms: number;
  mutations: number;
  statuses: Record<string, number>;
  latencies: number[];
}

interface Case {
  name: string;
  batch: number;
  total: number;
  mode: 'create' | 'conflict';
}

async function runCase(client: Worker, side: 'rhtmx' | 'floor', spec: Case, concurrency: number): Promise<PushResult> {
  const rows = spec.mode === 'conflict' ? 10_000 : 0;
  const server = await Worker.start('push-server', SERVER);
  try {
    const { port } = await server.call<{ port: number }>('start', {
      mode: side === 'rhtmx' ? 'rhtmx' : 'push-floor',
      rows,
      strategy: spec.mode === 'conflict' ? 'server-wins' : undefined,
    });
    const url = side === 'rhtmx' ? `http://127.0.0.1:${port}/api/sync/items` : `http://127.0.0.1:${port}/push`;
    // Warm-up: JIT and statement caches, not counted.
    await client.call('push', {
      url,
      batch: spec.batch,
      total: Math.min(spec.total, 200 * spec.batch) / 10,
      concurrency,
      mode: spec.mode,
      rows,
    });
    const result = await client.call<PushResult>('push', { url, batch: spec.batch, total: spec.total, concurrency, mode: spec.mode, rows });
    const expected = spec.mode === 'create' ? 'applied' : 'conflict';
    if ((result.statuses[expected] ?? 0) !== result.mutations || result.mutations < spec.total - concurrency) {
      throw new Error(`${side} ${spec.name}: unexpected results ${JSON.stringify(result.statuses)}`);
    }
    return result;
  } finally {
    await server.call('stop').catch(() => {});
    await server.stop();
  }
}

export async function pushSuite(ctx: BenchContext): Promise<SuiteResult> {
  const scale = ctx.quick ? 0.2 : 1;
  const rounds = ctx.quick ? 1 : 3;
  const concurrency = 4;
  const cases: Case[] = [
    { name: 'batches of 1', batch: 1, total: Math.round(10_000 * scale), mode: 'create' },
    { name: 'batches of 100', batch: 100, total: Math.round(100_000 * scale), mode: 'create' },
    { name: 'conflicts, batches of 100 (server-wins, stale base)', batch: 100, total: Math.round(100_000 * scale), mode: 'conflict' },
  ];
  const client = await Worker.start('http-client', CLIENT);
  const rows: Array<Array<string | number>> = [];
  const summary: unknown[] = [];
  const targets: NonNullable<SuiteResult['targets']> = [];
  try {
    for (const spec of cases) {
      const ours: PushResult[] = [];
      const floor: PushResult[] = [];
      for (let round = 1; round <= rounds; round++) {
        for (const side of round % 2 === 1 ? (['floor', 'rhtmx'] as const) : (['rhtmx', 'floor'] as const)) {
          ctx.log(`push ${spec.name}, ${spec.total} mutations, ${side}, round ${round}/${rounds}`);
          const result = await runCase(client, side, spec, concurrency);
          ctx.log(`  ${rate(result.mutations / (result.ms / 1000))} mutations/s`);
          (side === 'rhtmx' ? ours : floor).push(result);
        }
      }
      const perSecond = (list: PushResult[]) => median(list.map((result) => result.mutations / (result.ms / 1000)));
      const p50 = (list: PushResult[]) => median(list.map((result) => summarize(result.latencies).p50));
      const o = perSecond(ours);
      const f = perSecond(floor);
      rows.push([spec.name, rate(o), rate(f), times(o / f), `${ms(p50(ours))} / ${ms(p50(floor))}`]);
      summary.push({ ...spec, concurrency, ours: o, floor: f, ratio: o / f, requestP50: { ours: p50(ours), floor: p50(floor) } });
      // The targets of issue 17: batches of 1 at 0.8× the floor, batches of 100 at 0.6×.
      const goal = spec.mode === 'create' ? (spec.batch === 1 ? 0.8 : 0.6) : null;
      if (goal !== null) {
        targets.push({
          what: `push throughput, ${spec.name}, vs the hand-written exactly-once floor`,
          ratio: o / f,
          goal: `≥ ${goal}× the floor`,
          met: o / f >= goal,
        });
      }
    }
  } finally {
    await client.stop();
  }
  return {
    id: 'push',
    title: '4. Push throughput with exactly-once bookkeeping',
    method: `HTTP POST from a client process, ${concurrency} clients at once, each with its own client id and waiting for each answer. Ours: \`POST /api/sync/items\` (validation, conflict strategy, triggers writing the change log, stored outcomes and last mutation id per client, all in one transaction; a savepoint per change only when the database refuses a write). Floor: a hand-written node:http + better-sqlite3 endpoint that keeps the same exactly-once record in the same transaction and nothing else. Median of ${rounds} round(s).`,
    table: {
      columns: ['case', 'ours mutations/s', 'floor mutations/s', 'ratio', 'request p50 ms (ours / floor)'],
      rows,
    },
    targets,
    data: { summary },
  };
}
