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
import { type BenchContext, rate, type SuiteResult, type Target, times } from '../lib/context.js';
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
  /** Raw better-sqlite3 inserts + a raw ws broadcast of each transaction to the same clients (1 MiB backpressure). */
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

/** Connect `clients` WebSocket clients to `url`, run `stream`, and wait for every client to have version `rows`. */
async function deliverAll(
  ctx: BenchContext,
  url: string,
  protocol: 'rhtmx' | 'raw',
  clients: number,
  rows: number,
  stream: () => Promise<{ start: number; end: number }>,
) {
  const half = Math.floor(clients / 2);
  await Promise.all(
    ctx.clients.map((worker, index) => worker.call('connect', { kind: 'ws', url, count: index === 0 ? half : clients - half, protocol })),
  );
  // A fresh database: the rows get versions 1..rows.
  await Promise.all(ctx.clients.map((worker) => worker.call('throughputMode', { version: rows })));
  await sleep(200);
  const delivered = reachedAll(ctx, 600_000);
  const written = await stream();
  await delivered;
  const collected = await Promise.all(
    ctx.clients.map((worker) => worker.call<{ reached: number[]; bytesReceived: number; reconnects: number }>('collect')),
  );
  await Promise.all(ctx.clients.map((worker) => worker.call('close')));
  return {
    ...written,
    last: collected.flatMap((c) => c.reached).reduce((a, b) => Math.max(a, b), 0),
    bytes: collected.reduce((sum, c) => sum + c.bytesReceived, 0),
    reconnects: collected.reduce((sum, c) => sum + c.reconnects, 0),
  };
}

export async function runOnce(
  ctx: BenchContext,
  options: { writer: WriterKind; rows: number; txSize: number; clients: number },
): Promise<ThroughputRun> {
  const { writer, rows, txSize, clients } = options;
  // The floor: raw inserts and a raw ws broadcast of each transaction, encoded once, to the same clients.
  const floorServer = await Worker.start('throughput-floor', SERVER, { fds: clients + 1024 });
  let floorRate: number;
  try {
    const { port } = await floorServer.call<{ port: number }>('start', { mode: 'raw-ws' });
    const floor = await deliverAll(ctx, `ws://127.0.0.1:${port}/`, 'raw', clients, rows, () =>
      floorServer.call<{ start: number; end: number }>('stream', { rows, txSize }),
    );
    floorRate = rows / ((floor.last - floor.start) / 1000);
  } finally {
    await Promise.all(ctx.clients.map((worker) => worker.call('close').catch(() => {})));
    await floorServer.call('stop').catch(() => {});
    await floorServer.stop();
  }
  const writerProcess = writer === 'process' ? await Worker.start('throughput-writer', WRITER) : null;
  const server = await Worker.start('throughput-server', SERVER, { fds: clients + 1024 });
  try {
    const { port, dbPath } = await server.call<{ port: number; dbPath: string }>('start', { mode: 'rhtmx' });
    const ours = await deliverAll(ctx, `ws://127.0.0.1:${port}/api/sync/ws?protocol=2`, 'rhtmx', clients, rows, () =>
      writerProcess
        ? writerProcess.call<{ start: number; end: number }>('write', { path: dbPath, rows, txSize })
        : server.call<{ start: number; end: number }>('stream', { rows, txSize }),
    );
    return {
      writer,
      txSize,
      clients,
      rows,
      writerRate: rows / ((ours.end - ours.start) / 1000),
      deliveredRate: rows / ((ours.last - ours.start) / 1000),
      floorRate,
      bytesPerClient: ours.bytes / clients,
      reconnects: ours.reconnects,
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
        // The floor sends every 1-row transaction to every client on its own (50 million sends for 50,000
        // rows at 1,000 clients): fewer rows keep its runs to a minute.
        { writer: 'process', txSize: 1, clients: 100, rows: rows / 10 },
        { writer: 'process', txSize: 1, clients: 1000, rows: rows / 20 },
        { writer: 'in-process', txSize: 1000, clients: 100, rows },
        { writer: 'in-process', txSize: 1, clients: 100, rows: rows / 10 },
      ];
  const runs: ThroughputRun[] = [];
  const table: Array<Array<string | number>> = [];
  const summary: unknown[] = [];
  const targets: Target[] = [];
  for (const { writer, txSize, clients, rows: count } of cases) {
    const mine: ThroughputRun[] = [];
    for (let round = 1; round <= rounds; round++) {
      ctx.log(`throughput ${writer} writer, ${count} rows, ${txSize} rows/transaction, ${clients} clients, round ${round}/${rounds}`);
      const started = now();
      const run = await runOnce(ctx, { writer, rows: count, txSize, clients });
      ctx.log(
        `  delivered ${rate(run.deliveredRate)} rows/s, writer ${rate(run.writerRate)} rows/s, floor ${rate(run.floorRate)} rows/s, ${run.reconnects} reconnects (4008 slow consumer or dropped) (${((now() - started) / 1000).toFixed(1)} s)`,
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
    if (writer === 'process') {
      const reconnects = Math.max(...mine.map((run) => run.reconnects));
      targets.push({
        what: `throughput, ${txSize.toLocaleString('en-US')}-row transactions, ${clients.toLocaleString('en-US')} clients, vs raw inserts + ws broadcast (reconnects in the worst round)`,
        ratio: delivered / floor,
        measured: `${times(delivered / floor)}, ${reconnects} reconnects`,
        goal: '≥ 1× the floor, no slow-consumer reconnects',
        met: delivered / floor >= 1 && reconnects === 0,
      });
    }
  }
  return {
    id: 'throughput',
    title: '2. Sustained change throughput (rows/s reaching every client)',
    method:
      "App code commits rows back to back into the engine's SQLite file (WAL), in transactions of 1,000 rows or of 1 row; every row goes through the triggers, the change log and the hub to every WebSocket client, and a run ends when the last client has the last row. " +
      '"Other process": a separate writer process, found by the engine\'s watch on the WAL file (the log poll, default 25 ms, is the safety net). "In-process": the writer shares the engine\'s event loop, yields after each transaction and calls `engine.notify()`. ' +
      `Floor: the same writer loop with raw better-sqlite3 on a fresh file without triggers, each transaction's rows encoded once (the message our hub sends) and broadcast by a raw \`ws\` server to the same clients, the writer waiting while any socket holds over 1 MiB unsent, until the last client has the last row. Median of ${rounds} round(s).`,
    table: {
      columns: [
        'writer',
        'rows/tx',
        'clients',
        'rows',
        'delivered rows/s (ours)',
        'committed rows/s (ours)',
        'raw inserts + ws broadcast rows/s (floor)',
        'delivered / floor',
        'reconnects (slow consumer)',
      ],
      rows: table,
    },
    targets,
    data: { summary, runs },
  };
}
