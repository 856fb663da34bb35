/**
 * Benchmark 8: the cost of a field-synced write against a plain entity write.
 *
 * The goal: one field push of one changed column costs at most 1.5×
 * one entity push of the same update. Both go through the engine's own
 * Web-standard handler in this process (`engine.fetch`, no sockets), one
 * single-row update per push, each awaited before the next (as the browser
 * outbox sends them), on a real SQLite file in WAL mode. The raw rows show
 * what the triggers alone cost: the same UPDATE from plain better-sqlite3,
 * one per transaction, with no triggers, with the entity log triggers, and
 * with the field bookkeeping trigger on the log as well.
 */
import type Database from 'better-sqlite3';
import { SyncEngine } from '../../src/engine.js';
import { now } from '../lib/clock.js';
import { type BenchContext, rate, type SuiteResult, times } from '../lib/context.js';
import { freshDb, INSERT_ITEM, itemParams, makeItem } from '../lib/rows.js';
import { median } from '../lib/stats.js';

type Side =
  | 'raw, no triggers'
  | 'raw, entity triggers'
  | 'raw, entity + field triggers'
  | 'entity push'
  | 'entity push, field sync on'
  | 'field push';

const SIDES: readonly Side[] = [
  'raw, no triggers',
  'raw, entity triggers',
  'raw, entity + field triggers',
  'entity push',
  'entity push, field sync on',
  'field push',
];

function fill(db: Database.Database, rows: number): void {
  const insert = db.prepare(INSERT_ITEM);
  db.transaction(() => {
    for (let i = 1; i <= rows; i++) insert.run(...itemParams(makeItem(i)));
  })();
}

async function post(engine: SyncEngine, path: string, body: unknown): Promise<{ results: Array<{ status: string }> }> {
  const response = await engine.fetch(
    new Request(`http://127.0.0.1${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  );
  if (response.status !== 200) throw new Error(`${path}: HTTP ${response.status} ${await response.text()}`);
  return (await response.json()) as { results: Array<{ status: string }> };
}

interface Timed {
  /** Wall-clock ms for all writes. */
  ms: number;
  /** CPU ms of this process for all writes (less moved by other work on the machine than wall time). */
  cpuMs: number;
}

/** Time `writes` single-row title updates on one side, after a warm-up of a tenth as many. */
async function runSide(side: Side, rows: number, writes: number): Promise<Timed> {
  const bench = freshDb();
  fill(bench.db, rows);
  const fieldSync = side === 'raw, entity + field triggers' || side === 'entity push, field sync on' || side === 'field push';
  const engine =
    side === 'raw, no triggers'
      ? null
      : new SyncEngine({ db: bench.db, entities: ['items'], fieldSync: fieldSync ? 'last-write-wins' : false });
  try {
    await engine?.ready;
    const update = bench.db.prepare('UPDATE items SET title = ? WHERE id = ?');
    const raw = bench.db.transaction((title: string, id: number) => update.run(title, id));
    let mutation = 0;
    const write = async (i: number): Promise<void> => {
      const id = (i % rows) + 1;
      const title = `title ${i}`;
      mutation++;
      if (side.startsWith('raw')) {
        raw(title, id);
        return;
      }
      const answer =
        side === 'field push'
          ? await post(engine as SyncEngine, '/api/field-sync/items', {
              client_id: 'bench',
              changes: [{ mutation_id: mutation, entity_id: id, field: 'title', value: title }],
            })
          : await post(engine as SyncEngine, '/api/sync/items', {
              client_id: 'bench',
              changes: [{ mutation_id: mutation, id, action: 'update', data: { title } }],
            });
      if (answer.results[0]?.status !== 'applied') throw new Error(`${side}: ${JSON.stringify(answer.results[0])}`);
    };
    const warmUp = Math.max(100, Math.floor(writes / 10));
    for (let i = 0; i < warmUp; i++) await write(i);
    const started = now();
    const cpu = process.cpuUsage();
    for (let i = warmUp; i < warmUp + writes; i++) await write(i);
    const used = process.cpuUsage(cpu);
    return { ms: now() - started, cpuMs: (used.user + used.system) / 1000 };
  } finally {
    await engine?.close();
    bench.dispose();
  }
}

/** Field-write benchmark: field push vs entity push per single-row update, and the raw trigger costs. */
export async function fieldWriteSuite(ctx: BenchContext): Promise<SuiteResult> {
  const rows = 1000;
  const writes = ctx.quick ? 2000 : 10_000;
  const rounds = ctx.quick ? 1 : 3;
  const measured = new Map<Side, Timed[]>(SIDES.map((side) => [side, []]));
  // One uncounted pass of every side first: the sides measured first would otherwise also pay for the JIT.
  for (const side of SIDES) await runSide(side, rows, Math.floor(writes / 10));
  for (let round = 1; round <= rounds; round++) {
    // Alternate the order so a machine warming up (or slowing down) favours no side.
    for (const side of round % 2 === 1 ? SIDES : [...SIDES].reverse()) {
      const timed = await runSide(side, rows, writes);
      ctx.log(`field-write ${side}, round ${round}/${rounds}: ${rate(writes / (timed.ms / 1000))} writes/s`);
      measured.get(side)?.push(timed);
    }
  }
  const us = (side: Side, pick: (timed: Timed) => number) => (median((measured.get(side) ?? []).map(pick)) * 1000) / writes;
  const wall = (side: Side) => us(side, (timed) => timed.ms);
  const cpu = (side: Side) => us(side, (timed) => timed.cpuMs);
  const ratio = wall('field push') / wall('entity push');
  const cpuRatio = cpu('field push') / cpu('entity push');
  const trigger = cpu('raw, entity + field triggers') - cpu('raw, entity triggers');
  return {
    id: 'field-write',
    title: '8. Field-synced write vs entity write',
    method: `${writes.toLocaleString('en-US')} single-row updates of one column of a ${rows.toLocaleString('en-US')}-row table on a SQLite file (WAL), each its own push awaited before the next, through \`engine.fetch\` in one process (\`POST /api/sync/items\` vs \`POST /api/field-sync/items\`, last-write-wins); raw rows: the same UPDATE from plain better-sqlite3, one per transaction. Median of ${rounds} round(s); CPU is this process's user + system time.`,
    table: {
      columns: ['case', 'µs per write (wall)', 'µs per write (CPU)', 'writes/s', 'vs entity push (wall / CPU)'],
      rows: SIDES.map((side) => [
        side,
        wall(side).toFixed(1),
        cpu(side).toFixed(1),
        rate(1e6 / wall(side)),
        `${times(wall(side) / wall('entity push'))} / ${times(cpu(side) / cpu('entity push'))}`,
      ]),
    },
    targets: [{ what: 'field push per write vs entity push (wall)', ratio, goal: '≤ 1.5× entity push', met: ratio <= 1.5 }],
    notes: [
      `CPU ratio field push / entity push: ${times(cpuRatio)}.`,
      `The field bookkeeping trigger alone adds ${trigger.toFixed(1)} µs of CPU per raw write (${times(cpu('raw, entity + field triggers') / cpu('raw, entity triggers'))} the entity triggers).`,
    ],
    data: {
      rows,
      writes,
      rounds,
      measured: Object.fromEntries(measured),
      usPerWrite: Object.fromEntries(SIDES.map((side) => [side, { wall: wall(side), cpu: cpu(side) }])),
    },
  };
}
