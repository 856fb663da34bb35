/**
 * Benchmark 5: server memory per idle connection, our engine against raw
 * `ws` and raw node:http SSE servers: from none to 1,000 connections, and
 * what each connection from 1,000 to 5,000 adds (the target). Both servers
 * first grow V8's young generation to its cap (`primeHeap`), so its growth
 * while the first thousand connect is not counted as theirs.
 *
 * The server runs with --expose-gc; memory is read after two full GCs before
 * the clients connect and again once they are connected, subscribed and have
 * each received one live message (so per-connection state that appears on
 * first use, like compression contexts, is counted).
 */
import { join } from 'node:path';
import { sleep } from '../lib/clock.js';
import { type BenchContext, bytes, type SuiteResult, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/fanout/server.ts');

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

interface MemoryRun {
  side: 'rhtmx' | 'raw';
  transport: 'ws' | 'sse';
  connections: number;
  /** Per connection from none to `connections`, bytes. */
  rss: number;
  heap: number;
  /** Per connection from `connections` to `more` (what one more connection costs), bytes. */
  more: number;
  marginalRss: number;
  marginalHeap: number;
}

async function measure(
  ctx: BenchContext,
  side: 'rhtmx' | 'raw',
  transport: 'ws' | 'sse',
  connections: number,
  more: number,
): Promise<MemoryRun> {
  const server = await Worker.start('memory-server', SERVER, { fds: more + 1024, nodeFlags: ['--expose-gc'] });
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
    // Warm the server's code paths with a few connections first, so JIT and lazy modules do not count as per-connection memory.
    await ctx.clients[0].call('connect', { kind: transport, url, count: 10, protocol: side });
    await server.call('write', { seq: 1, kind: 'sql' });
    await sleep(300);
    await ctx.clients[0].call('close');
    await sleep(300);
    await server.call('primeHeap');
    const before = await server.call<Memory>('memory');
    // Connect up to `total` (split over the client processes), let each take one live message, read memory.
    const grow = async (count: number, total: number, seq: number): Promise<Memory> => {
      const half = Math.floor(count / 2);
      await Promise.all(
        ctx.clients.map((worker, index) =>
          worker.call('connect', { kind: transport, url, count: index === 0 ? half : count - half, protocol: side }),
        ),
      );
      await Promise.all(ctx.clients.map((worker) => worker.call('latencyMode')));
      await server.call('write', { seq, kind: 'sql' });
      await sleep(1000);
      const connected = await server.call<number>('connections');
      if (connected !== total) throw new Error(`server sees ${connected} of ${total} connections`);
      return server.call<Memory>('memory');
    };
    const after = await grow(connections, connections, 2);
    const last = await grow(more - connections, more, 3);
    const young = (memory: Memory) => (memory as unknown as { spaces: Record<string, number> }).spaces.new_space;
    ctx.log(`  young generation KiB: ${young(before)} → ${young(after)} → ${young(last)}`);
    const heapOf = (memory: Memory) => memory.heapUsed + memory.external;
    return {
      side,
      transport,
      connections,
      rss: (after.rss - before.rss) / connections,
      heap: (heapOf(after) - heapOf(before)) / connections,
      more,
      marginalRss: (last.rss - after.rss) / (more - connections),
      marginalHeap: (heapOf(last) - heapOf(after)) / (more - connections),
    };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await server.call('stop').catch(() => {});
    await server.stop();
  }
}

export async function memorySuite(ctx: BenchContext): Promise<SuiteResult> {
  const connections = 1000;
  const more = 5000;
  const rounds = ctx.quick ? 1 : 3;
  const runs: MemoryRun[] = [];
  const rows: Array<Array<string | number>> = [];
  type Side = { rss: number; heap: number; marginalRss: number; marginalHeap: number };
  const summary: Array<{ transport: 'ws' | 'sse'; ours: Side; raw: Side }> = [];
  for (const transport of ['ws', 'sse'] as const) {
    for (let round = 1; round <= rounds; round++) {
      for (const side of round % 2 === 1 ? (['raw', 'rhtmx'] as const) : (['rhtmx', 'raw'] as const)) {
        ctx.log(`memory ${transport} ${side} ${connections} then ${more} connections, round ${round}/${rounds}`);
        const run = await measure(ctx, side, transport, connections, more);
        ctx.log(`  0 → ${connections}: ${bytes(run.rss)} RSS, ${bytes(run.heap)} heap+external per connection`);
        ctx.log(`  ${connections} → ${more}: ${bytes(run.marginalRss)} RSS, ${bytes(run.marginalHeap)} heap+external per connection`);
        runs.push(run);
      }
    }
    const pick = (side: 'rhtmx' | 'raw'): Side => {
      const mine = runs.filter((run) => run.side === side && run.transport === transport);
      const of = (key: keyof Side) => median(mine.map((run) => run[key]));
      return { rss: of('rss'), heap: of('heap'), marginalRss: of('marginalRss'), marginalHeap: of('marginalHeap') };
    };
    const ours = pick('rhtmx');
    const raw = pick('raw');
    const kib = (value: number) => bytes(Math.round(value));
    rows.push([
      transport === 'ws' ? 'WebSocket' : 'SSE',
      `${kib(ours.marginalRss)} / ${kib(raw.marginalRss)}`,
      times(ours.marginalRss / raw.marginalRss),
      `${kib(ours.marginalHeap)} / ${kib(raw.marginalHeap)}`,
      times(ours.marginalHeap / raw.marginalHeap),
      `${kib(ours.rss)} / ${kib(raw.rss)}`,
      times(ours.rss / raw.rss),
      `${kib(ours.heap)} / ${kib(raw.heap)}`,
      times(ours.heap / raw.heap),
    ]);
    summary.push({ transport, ours, raw });
  }
  return {
    id: 'memory',
    title: '5. Server memory per idle connection (1,000 → 5,000 connections)',
    method: `Server process RSS and V8 heap + external memory after two forced GCs: before any client, with ${connections.toLocaleString('en-US')} clients connected (ours: subscribed to \`items\`) that have each received one live message, and with ${more.toLocaleString('en-US')}. "Per connection" is what each of the connections from ${connections.toLocaleString('en-US')} to ${more.toLocaleString('en-US')} added (the target): "from none" divides the growth to ${connections.toLocaleString('en-US')} by ${connections.toLocaleString('en-US')}, which also holds what the process pays once. Before the first client, each server grows V8's young generation to its cap (32 MiB) with short-lived objects, as any busy server's is: unprimed, the first thousand connections grew ours by about 9 MiB and raw \`ws\` by about 2 MiB, a one-time cost that made up most of the ratio. Clients offer permessage-deflate as browsers do. Median of ${rounds} round(s).`,
    table: {
      columns: [
        'transport',
        'RSS per connection (ours / raw)',
        'ratio',
        'heap+ext per connection (ours / raw)',
        'ratio',
        'RSS from none to 1,000 (ours / raw)',
        'ratio',
        'heap+ext from none (ours / raw)',
        'ratio',
      ],
      rows,
    },
    targets: summary.map(({ transport, ours, raw }) => ({
      what: `server RSS per idle ${transport === 'ws' ? 'WebSocket' : 'SSE'} connection vs raw ${transport === 'ws' ? '`ws`' : 'SSE'} (each connection from 1,000 to 5,000)`,
      ratio: ours.marginalRss / raw.marginalRss,
      goal: '≤ 2× raw',
      met: ours.marginalRss / raw.marginalRss <= 2,
    })),
    data: { connections, more, summary, runs },
  };
}
