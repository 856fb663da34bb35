/**
 * Benchmark 2: sustained change throughput through triggers + change log +
 * fan-out, in rows per second reaching every client, against raw
 * better-sqlite3 inserts of the same rows with the same writer loop.
 *
 * The writer (app code in the server process) commits transactions of 1,000
 * rows or of 1 row back to back, yielding to the event loop between
 * transactions as a server handling requests would, and calls
 * `engine.notify()` after each commit. Clients count a run as delivered when
 * a batch at or past the last version arrives.
 */
import { join } from 'node:path';
import { now, sleep } from '../lib/clock.js';
import { type BenchContext, rate, type SuiteResult, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/fanout/server.ts');
const WRITER = join(ROOT, 'bench/fanout/writer.ts');

type WriterKind = 'process' | 'in-process';

interface ThroughputRun {
  writer: WriterKind;
  txSize: number;
  clients: number;
  rows: number;
  /** Rows per second committed by the writer while the engine fanned out. */
  writerRate: number;
  /** Rows per second from the first commit until the last client had the last row. */
  deliveredRate: number;
  /** Raw better-sqlite3, same loop, no triggers. */
  floorRate: number;
  bytesPerClient: number;
  /** Clients dropped as slow consumers (4008) that reconnected and caught up from the log. */
  reconnects: number;
}

function reachedAll(ctx: BenchContext, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending = 2;
    const offs = ctx.clients.flatMap((worker) => [
      worker.on('reached', () => {
        if (--pending === 0) {
          clearTimeout(timer);
          for (const off of offs) off();
          resolve();
        }
      }),
      worker.on('closed', (data: { code: number }) => {
        clearTimeout(timer);
        for (const off of offs) off();
        reject(new Error(`the server closed a client mid-run (code ${data.code})`));
      }),
    ]);
    const timer = setTimeout(() => {
      for (const off of offs) off();
      reject(new Error(`not every client reached the last version within ${timeoutMs} ms`));
    }, timeoutMs);
  });
}

export async function runOnce(
  ctx: BenchContext,
  options: { writer: WriterKind; rows: number; txSize: number; clients: number },
): Promise<ThroughputRun> {
  const { writer, rows, txSize, clients } = options;
  const writerProcess = writer === 'process' ? await Worker.start('throughput-writer', WRITER) : null;
  const server = await Worker.start('throughput-server', SERVER, { fds: clients + 1024 });
  try {
    let floorMs: number;
    if (writerProcess) {
      const floor = await writerProcess.call<{ start: number; end: number }>('floor', { rows, txSize });
      floorMs = floor.end - floor.start;
    } else {
      floorMs = (await server.call<{ ms: number }>('rawInserts', { rows, txSize })).ms;
    }
    const { port, dbPath } = await server.call<{ port: number; dbPath: string }>('start', { mode: 'rhtmx' });
    const half = Math.floor(clients / 2);
    await Promise.all(
      ctx.clients.map((worker, index) =>
        worker.call('connect', {
          kind: 'ws',
          url: `ws://127.0.0.1:${port}/api/sync/ws`,
          count: index === 0 ? half : clients - half,
          protocol: 'rhtmx',
        }),
      ),
    );
    // A fresh database: the rows get versions 1..rows.
    await Promise.all(ctx.clients.map((worker) => worker.call('throughputMode', { version: rows })));
    await sleep(200);
    const delivered = reachedAll(ctx, 600_000);
    const stream = writerProcess
      ? await writerProcess.call<{ start: number; end: number }>('write', { path: dbPath, rows, txSize })
      : await server.call<{ start: number; end: number }>('stream', { rows, txSize });
    await delivered;
    const collected = await Promise.all(
      ctx.clients.map((worker) => worker.call<{ reached: number[]; bytesReceived: number; reconnects: number }>('collect')),
    );
    const last = collected.flatMap((c) => c.reached).reduce((a, b) => Math.max(a, b), 0);
    const bytes = collected.reduce((sum, c) => sum + c.bytesReceived, 0);
    await Promise.all(ctx.clients.map((worker) => worker.call('close')));
    return {
      writer,
      txSize,
      clients,
      rows,
      writerRate: rows / ((stream.end - stream.start) / 1000),
      deliveredRate: rows / ((last - stream.start) / 1000),
      floorRate: rows / (floorMs / 1000),
      bytesPerClient: bytes / clients,
      reconnects: collected.reduce((sum, c) => sum + c.reconnects, 0),
    };
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await server.call('stop').catch(() => {});
    await server.stop();
    await writerProcess?.stop();
  }
}

export async function throughput(ctx: BenchContext): Promise<SuiteResult> {
  const rows = ctx.quick ? 10_000 : 100_000;
  const rounds = ctx.quick ? 1 : 3;
  // The in-process writer with 1-row transactions fans out row by row: fewer rows keep it to seconds.
  const cases: Array<{ writer: WriterKind; txSize: number; clients: number; rows: number }> = ctx.quick
    ? [
        { writer: 'process', txSize: 1000, clients: 100, rows },
        { writer: 'process', txSize: 1, clients: 100, rows },
        { writer: 'in-process', txSize: 1000, clients: 100, rows },
        { writer: 'in-process', txSize: 1, clients: 100, rows: rows / 5 },
      ]
    : [
        { writer: 'process', txSize: 1000, clients: 100, rows },
        { writer: 'process', txSize: 1000, clients: 1000, rows: rows / 2 },
        { writer: 'process', txSize: 1, clients: 100, rows },
        { writer: 'process', txSize: 1, clients: 1000, rows: rows / 2 },
        { writer: 'in-process', txSize: 1000, clients: 100, rows },
        { writer: 'in-process', txSize: 1, clients: 100, rows: rows / 10 },
      ];
  const runs: ThroughputRun[] = [];
  const table: Array<Array<string | number>> = [];
  const summary: unknown[] = [];
  for (const { writer, txSize, clients, rows: count } of cases) {
    const mine: ThroughputRun[] = [];
    for (let round = 1; round <= rounds; round++) {
      ctx.log(`throughput ${writer} writer, ${count} rows, ${txSize} rows/transaction, ${clients} clients, round ${round}/${rounds}`);
      const started = now();
      const run = await runOnce(ctx, { writer, rows: count, txSize, clients });
      ctx.log(
        `  delivered ${rate(run.deliveredRate)} rows/s, writer ${rate(run.writerRate)} rows/s, raw ${rate(run.floorRate)} rows/s, ${run.reconnects} reconnects (4008 slow consumer or dropped) (${((now() - started) / 1000).toFixed(1)} s)`,
      );
      mine.push(run);
    }
    runs.push(...mine);
    const delivered = median(mine.map((run) => run.deliveredRate));
    const committed = median(mine.map((run) => run.writerRate));
    const floor = median(mine.map((run) => run.floorRate));
    table.push([
      writer === 'process' ? 'other process' : 'in-process + notify()',
      txSize.toLocaleString('en-US'),
      clients.toLocaleString('en-US'),
      count.toLocaleString('en-US'),
      rate(delivered),
      rate(committed),
      rate(floor),
      times(delivered / floor),
      Math.round(median(mine.map((run) => run.reconnects))),
    ]);
    summary.push({ writer, txSize, clients, rows: count, delivered, committed, floor, ratio: delivered / floor });
  }
  return {
    id: 'throughput',
    title: '2. Sustained change throughput (rows/s reaching every client)',
    method:
      "App code commits rows back to back into the engine's SQLite file (WAL), in transactions of 1,000 rows or of 1 row; every row goes through the triggers, the change log and the hub to every WebSocket client, and a run ends when the last client has the last row. " +
      '"Other process": a separate writer process, found by the engine\'s watch on the WAL file (the log poll, default 25 ms, is the safety net). "In-process": the writer shares the engine\'s event loop, yields after each transaction and calls `engine.notify()`. ' +
      `Floor: the same writer loop with raw better-sqlite3 on a fresh file without triggers, no engine, no clients. Median of ${rounds} round(s).`,
    table: {
      columns: [
        'writer',
        'rows/tx',
        'clients',
        'rows',
        'delivered rows/s (ours)',
        'committed rows/s (ours)',
        'raw inserts rows/s (floor)',
        'delivered / floor',
      ],
      rows: table,
    },
    data: { summary, runs },
  };
}
