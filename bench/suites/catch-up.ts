/**
 * Benchmark 3: a fresh client catching up on every row, Node to Node over
 * loopback HTTP: our streamed pull (gzip as browsers negotiate it) and paged pulls
 * against PouchDB replication of the same documents (express-pouchdb,
 * memory adapter on both ends) and against one plain JSON fetch + parse.
 */
import { join } from 'node:path';
import { type BenchContext, ms, type SuiteResult, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/http/server.ts');
const CLIENT = join(ROOT, 'bench/http/client.ts');

interface Timed {
  ms: number;
  rows: number;
}

async function withServer<T>(start: Record<string, unknown>, body: (port: number) => Promise<T>): Promise<T> {
  const server = await Worker.start('http-server', SERVER);
  try {
    const { port } = await server.call<{ port: number }>('start', start);
    return await body(port);
  } finally {
    await server.call('stop').catch(() => {});
    await server.stop();
  }
}

function expectRows(what: string, result: Timed, rows: number): Timed {
  if (result.rows !== rows) throw new Error(`${what}: got ${result.rows} of ${rows} rows`);
  return result;
}

export async function catchUp(ctx: BenchContext): Promise<SuiteResult> {
  const rows = ctx.quick ? 10_000 : 100_000;
  const rounds = ctx.quick ? 1 : 3;
  const client = await Worker.start('http-client', CLIENT);
  const runs: Array<{ round: number; plain: Timed; stream: Timed; pull1000: Timed; pull10000: Timed; pouch: Timed }> = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      ctx.log(`catch-up ${rows} rows, round ${round}/${rounds}: plain JSON`);
      const plain = await withServer({ mode: 'plain', rows }, (port) =>
        client.call<Timed>('plain', { url: `http://127.0.0.1:${port}/rows` }),
      );
      ctx.log(`  ${ms(plain.ms)} ms; rhtmx pull`);
      const [stream, pull1000, pull10000] = await withServer({ mode: 'rhtmx', rows }, async (port) => {
        const base = `http://127.0.0.1:${port}/api/sync`;
        const streamed = await client.call<Timed>('stream', { base, entity: 'items' });
        const first = await client.call<Timed>('pull', { base, entity: 'items', limit: 1000 });
        const second = await client.call<Timed>('pull', { base, entity: 'items', limit: 10_000 });
        return [streamed, first, second];
      });
      ctx.log(`  ${ms(stream.ms)} ms (streamed), ${ms(pull1000.ms)} ms (1,000/page), ${ms(pull10000.ms)} ms (10,000/page); PouchDB`);
      const pouch = await withServer({ mode: 'pouch', rows }, (port) =>
        client.call<Timed>('replicate', { url: `http://127.0.0.1:${port}/items` }),
      );
      ctx.log(`  ${ms(pouch.ms)} ms`);
      runs.push({
        round,
        plain: expectRows('plain', plain, rows),
        stream: expectRows('stream', stream, rows),
        pull1000: expectRows('pull 1000', pull1000, rows),
        pull10000: expectRows('pull 10000', pull10000, rows),
        pouch: expectRows('PouchDB', pouch, rows),
      });
    }
  } finally {
    await client.stop();
  }
  const med = (pick: (run: (typeof runs)[number]) => Timed) => median(runs.map((run) => pick(run).ms));
  const plain = med((run) => run.plain);
  const stream = med((run) => run.stream);
  const pull1000 = med((run) => run.pull1000);
  const pull10000 = med((run) => run.pull10000);
  const pouch = med((run) => run.pouch);
  const n = rows.toLocaleString('en-US');
  const row = (name: string, value: number) => [
    name,
    ms(value),
    Math.round(rows / (value / 1000)).toLocaleString('en-US'),
    times(pouch / value),
    times(value / plain),
  ];
  return {
    id: 'catch-up',
    title: `3. Catch-up of ${n} rows into a fresh client`,
    method: `Node client and server in separate processes over loopback HTTP. Ours: the client's default, one streamed pull (\`?stream=1\`: every snapshot page in one gzipped response, one JSON line per page of 10,000 rows, read by the client's own \`http().lines\`), each page applied to an in-memory map while the next is on the wire; and, for comparison, one request per page as before streamed pulls. PouchDB: \`PouchDB.replicate\` from express-pouchdb (memory adapter) into a memory database, default options. Floor: one plain JSON GET of the same rows (pre-encoded, not gzipped) + parse. Median of ${rounds} round(s).`,
    table: {
      columns: ['client', 'ms', 'rows/s', 'speed-up vs PouchDB', 'vs plain JSON floor'],
      rows: [
        row('rhtmx-sync streamed pull (client default)', stream),
        row('rhtmx-sync paged pull, 1,000 rows/request', pull1000),
        row('rhtmx-sync paged pull, 10,000 rows/request', pull10000),
        row('PouchDB replication (express-pouchdb, memory)', pouch),
        row('plain JSON fetch + parse (floor)', plain),
      ],
    },
    targets: [
      {
        what: `catch-up of ${n} rows vs the plain JSON floor (streamed, client default)`,
        ratio: stream / plain,
        goal: '≤ 3× the floor',
        met: stream / plain <= 3,
      },
      {
        what: `catch-up of ${n} rows vs PouchDB (streamed, client default)`,
        ratio: pouch / stream,
        goal: '≥ 40× faster than PouchDB',
        met: pouch / stream >= 40,
      },
    ],
    data: { rows, medianMs: { plain, stream, pull1000, pull10000, pouch }, runs },
  };
}
