/**
 * Benchmark 5: server memory per idle connection at 1,000 connections, our
 * engine against raw `ws` and raw node:http SSE servers.
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
  /** Per connection, bytes. */
  rss: number;
  heap: number;
}

async function measure(ctx: BenchContext, side: 'rhtmx' | 'raw', transport: 'ws' | 'sse', connections: number): Promise<MemoryRun> {
  const server = await Worker.start('memory-server', SERVER, { fds: connections + 1024, nodeFlags: ['--expose-gc'] });
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
    const before = await server.call<Memory>('memory');
    const half = Math.floor(connections / 2);
    await Promise.all(
      ctx.clients.map((worker, index) =>
        worker.call('connect', { kind: transport, url, count: index === 0 ? half : connections - half, protocol: side }),
      ),
    );
    await Promise.all(ctx.clients.map((worker) => worker.call('latencyMode')));
    await server.call('write', { seq: 2, kind: 'sql' });
    await sleep(1000);
    const connected = await server.call<number>('connections');
    if (connected !== connections) throw new Error(`server sees ${connected} of ${connections} connections`);
    const after = await server.call<Memory>('memory');
    return {
      side,
      transport,
      connections,
      rss: (after.rss - before.rss) / connections,
      heap: (after.heapUsed + after.external - before.heapUsed - before.external) / connections,
    };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await server.call('stop').catch(() => {});
    await server.stop();
  }
}

export async function memorySuite(ctx: BenchContext): Promise<SuiteResult> {
  const connections = 1000;
  const rounds = ctx.quick ? 1 : 3;
  const runs: MemoryRun[] = [];
  const rows: Array<Array<string | number>> = [];
  const summary: Array<{ transport: 'ws' | 'sse'; ours: { rss: number; heap: number }; raw: { rss: number; heap: number } }> = [];
  for (const transport of ['ws', 'sse'] as const) {
    for (let round = 1; round <= rounds; round++) {
      for (const side of round % 2 === 1 ? (['raw', 'rhtmx'] as const) : (['rhtmx', 'raw'] as const)) {
        ctx.log(`memory ${transport} ${side} ${connections} connections, round ${round}/${rounds}`);
        const run = await measure(ctx, side, transport, connections);
        ctx.log(`  ${bytes(run.rss)} RSS, ${bytes(run.heap)} heap+external per connection`);
        runs.push(run);
      }
    }
    const pick = (side: 'rhtmx' | 'raw', key: 'rss' | 'heap') =>
      median(runs.filter((run) => run.side === side && run.transport === transport).map((run) => run[key]));
    const ours = { rss: pick('rhtmx', 'rss'), heap: pick('rhtmx', 'heap') };
    const raw = { rss: pick('raw', 'rss'), heap: pick('raw', 'heap') };
    rows.push([
      transport === 'ws' ? 'WebSocket' : 'SSE',
      bytes(Math.round(ours.rss)),
      bytes(Math.round(raw.rss)),
      times(ours.rss / raw.rss),
      bytes(Math.round(ours.heap)),
      bytes(Math.round(raw.heap)),
      times(ours.heap / raw.heap),
    ]);
    summary.push({ transport, ours, raw });
  }
  return {
    id: 'memory',
    title: '5. Server memory per idle connection (1,000 connections)',
    method: `Server process RSS and V8 heap + external memory after two forced GCs, before and after 1,000 clients connected (ours: subscribed to \`items\`) and received one live message; the difference divided by 1,000. Clients offer permessage-deflate as browsers do. Median of ${rounds} round(s).`,
    table: {
      columns: ['transport', 'ours RSS/conn', 'raw RSS/conn', 'RSS ratio', 'ours heap+ext/conn', 'raw heap+ext/conn', 'heap ratio'],
      rows,
    },
    targets: summary.map(({ transport, ours, raw }) => ({
      what: `server RSS per idle ${transport === 'ws' ? 'WebSocket' : 'SSE'} connection vs raw ${transport === 'ws' ? '`ws`' : 'SSE'} (1,000 connections)`,
      ratio: ours.rss / raw.rss,
      goal: '≤ 2× raw',
      met: ours.rss / raw.rss <= 2,
    })),
    data: { connections, summary, runs },
  };
}
