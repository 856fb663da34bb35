/**
 * Benchmark 7: the hardening promise, measured (docs/security.md, Limits).
 *
 * "With one hostile socket sending the most expensive allowed requests
 * without reading, server memory stays bounded and other clients' pull
 * latency stays within 3× of its quiet value", and "1,000 stalled streams
 * add no measurable CPU".
 *
 * Three processes besides this one: the engine (SQLite file, 20,000 todos of
 * 100-character titles, default limits), a normal client making sequential
 * HTTP pulls, and the hostile client. The normal client's latency is measured
 * quiet, then while one hostile WebSocket that never reads asks for 10,000-row
 * pages (flooding, and paced at the row budget), reconnecting at once each
 * time the server closes it. Server RSS is read from /proc/<pid>/status every
 * 50 ms. Then 1,000 SSE streams that are never read are opened and fed a few
 * large transactions, and the server's CPU time over quiet 5 s windows is
 * compared with the same windows without the streams.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostileStats } from '../hostile/attacker.js';
import { now, sleep } from '../lib/clock.js';
import { type BenchContext, bytes, ms, type SuiteResult, type Target, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median, summarize } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/hostile/server.ts');
const ATTACKER = join(ROOT, 'bench/hostile/attacker.ts');
const PROBER = join(ROOT, 'bench/hostile/prober.ts');

type Mode = 'flood' | 'paced';
type Phase = 'quiet' | Mode;

interface Pulls {
  latencies: number[][];
  problems: string[];
  problemCount: number;
  ms: number;
}

interface Cpu {
  at: number;
  user: number;
  system: number;
}

interface LoopDelay {
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

interface PhaseRun {
  mode: Phase;
  round: number;
  /** p50 / p99 per pull variant, ms. */
  pulls: Array<{ p50: number; p99: number; max: number; samples: number }>;
  problems: string[];
  rss: { before: number; peak: number; after: number };
  /** CPU ms per second while the hostile client ran: server, hostile client, normal client. */
  cpu: { server: number; hostile: number; prober: number };
  /** Close codes the server sent (counted in its process). */
  closes: Record<string, number>;
  /** How long the server's event loop was held, ms (monitorEventLoopDelay). */
  loop: LoopDelay;
  /** Null in the quiet phase. */
  hostile: HostileStats | null;
}

/** Resident set size of a process, bytes, from /proc (no call into the process). */
function rssOf(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : Number.NaN;
}

/** CPU time (user + system, every thread) of a process so far, ms, from /proc (10 ms ticks). */
function cpuMsOf(pid: number): number {
  return cpuMsOfStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
}

function cpuMsOfStat(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** CPU time of one thread of a process so far, ms, from /proc (10 ms ticks). */
function threadCpuMsOf(pid: number, tid: number): number {
  return cpuMsOfStat(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
}

/** Sample a process's RSS every `everyMs` until stopped; returns the peak. */
function rssSampler(pid: number, everyMs = 50): { stop(): number } {
  let peak = rssOf(pid);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, rssOf(pid));
    } catch {}
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      try {
        peak = Math.max(peak, rssOf(pid));
      } catch {}
      return peak;
    },
  };
}

const cpuMsPerSecond = (before: Cpu, after: Cpu) =>
  (after.user + after.system - before.user - before.system) / 1000 / ((after.at - before.at) / 1000);

const codes = (map: Record<string, number>) =>
  Object.entries(map)
    .sort((a, b) => b[1] - a[1])
    .map(([code, count]) => `${code} × ${count.toLocaleString('en-US')}`)
    .join(', ') || 'none';

const pid = (worker: Worker): number => {
  if (worker.pid === undefined) throw new Error(`${worker.name} has no pid`);
  return worker.pid;
};

export async function hostileSuite(ctx: BenchContext): Promise<SuiteResult> {
  const rows = 20_000;
  const probes = ctx.quick ? 100 : 300;
  const rounds = ctx.quick ? 1 : 3;
  const gapMs = 5;
  const streamCount = Math.min(1000, ctx.fdHard - 1024);
  const windowMs = 5000;
  const cpuWindows = ctx.quick ? 1 : 3;
  // Each large write: one transaction of `writeRows` todos, fanned out to every stream before the next.
  const writeRows = 2000;
  const writeBatches = 6;
  const modes: Mode[] = ['flood', 'paced'];
  const phases: Phase[] = ['quiet', ...modes];
  const label: Record<Phase, string> = {
    quiet: 'quiet',
    flood: 'one hostile socket, flooding',
    paced: 'one hostile socket, paced at the row budget',
  };

  const server = await Worker.start('hostile-server', SERVER, { fds: streamCount + 2048, nodeFlags: ['--expose-gc'] });
  const attacker = await Worker.start('hostile-client', ATTACKER, { fds: streamCount + 2048 });
  const prober = await Worker.start('hostile-prober', PROBER);
  const serverPid = pid(server);
  try {
    const started = await server.call<{ port: number; pid: number; version: number }>('start', { rows });
    if (started.pid !== serverPid) throw new Error(`server pid ${started.pid} is not the worker's ${serverPid}`);
    const base = `127.0.0.1:${started.port}`;
    const latest = started.version;
    const variants = [
      { name: `incremental: \`since=<latest − 10>\``, url: `http://${base}/api/sync/todos?since=${latest - 10}`, expect: 10 },
      { name: 'first page: `since=0&limit=100`', url: `http://${base}/api/sync/todos?since=0&limit=100`, expect: 100 },
    ];
    const urls = variants.map((variant) => variant.url);
    const expect = variants.map((variant) => variant.expect);
    const pulls = async (count: number): Promise<Pulls> => {
      const result = await prober.call<Pulls>('pulls', { urls, count, gapMs, expect });
      if (result.problemCount > 0) ctx.log(`  ${result.problemCount} unexpected pull answers, e.g. ${result.problems[0]}`);
      return result;
    };
    const summary = (result: Pulls) => result.latencies.map((list) => summarize(list));
    ctx.log(`hostile: engine on ${rows.toLocaleString('en-US')} todos, log version ${latest}; warming up`);
    await pulls(50);

    /** One phase: the normal client's pulls, with the hostile client running (mode) or not (quiet). */
    const phase = async (mode: Phase, round: number): Promise<PhaseRun> => {
      ctx.log(`hostile round ${round}/${rounds}: ${label[mode]}, ${probes} × ${variants.length} pulls`);
      await server.call('closes'); // reset
      const before = rssOf(serverPid);
      const sampler = rssSampler(serverPid);
      const relay = server.on('ws-close', (data: { n?: number; code: number }) => {
        attacker.call('serverClosed', data).catch(() => {});
      });
      const profile = process.env.BENCH_HOSTILE_PROFILE === mode;
      if (profile) await server.call('profileStart');
      await server.call('loopStart');
      const cpu0 = await server.call<Cpu>('cpu');
      const procs0 = [cpuMsOf(pid(attacker)), cpuMsOf(pid(prober)), now()];
      if (mode !== 'quiet') {
        await attacker.call('startHostile', { url: `ws://${base}/api/sync/ws`, mode });
        await sleep(1000); // let it ramp up (and meet its first closes) before measuring
      }
      const result = await pulls(probes);
      const cpu1 = await server.call<Cpu>('cpu');
      const loop = await server.call<LoopDelay>('loopStop');
      if (profile) {
        const file = join(ROOT, '.tmp/bench-profiles', `hostile-server-${mode}-${round}.cpuprofile`);
        ctx.log(`  wrote ${await server.call<string>('profileStop', { file })}`);
      }
      const procs1 = [cpuMsOf(pid(attacker)), cpuMsOf(pid(prober)), now()];
      const hostile = mode === 'quiet' ? null : await attacker.call<HostileStats>('stopHostile');
      await sleep(100);
      relay();
      const closes = await server.call<Record<string, number>>('closes');
      if (mode !== 'quiet') await sleep(2000);
      const after = rssOf(serverPid);
      const peak = sampler.stop();
      const seconds = ((procs1[2] as number) - (procs0[2] as number)) / 1000;
      const run: PhaseRun = {
        mode,
        round,
        pulls: summary(result),
        problems: result.problems,
        rss: { before, peak, after },
        cpu: {
          server: cpuMsPerSecond(cpu0, cpu1),
          hostile: ((procs1[0] as number) - (procs0[0] as number)) / seconds,
          prober: ((procs1[1] as number) - (procs0[1] as number)) / seconds,
        },
        closes,
        loop,
        hostile,
      };
      ctx.log(
        `  p50 ${run.pulls.map((each) => ms(each.p50)).join(' / ')} ms, p99 ${run.pulls.map((each) => ms(each.p99)).join(' / ')} ms; ` +
          (hostile
            ? `${hostile.connections} connections, ${hostile.messages.toLocaleString('en-US')} messages, server closes ${codes(closes)}; `
            : '') +
          `RSS ${bytes(before)} → peak ${bytes(peak)} → ${bytes(after)}; CPU ms/s server ${run.cpu.server.toFixed(0)}, hostile ${run.cpu.hostile.toFixed(0)}; ` +
          `server event-loop delay p99 ${ms(loop.p99)} ms, max ${ms(loop.max)} ms`,
      );
      return run;
    };

    const runs: PhaseRun[] = [];
    for (let round = 1; round <= rounds; round++) {
      for (const mode of phases) runs.push(await phase(mode, round));
    }

    // Stalled streams: CPU over quiet windows, without and with 1,000 streams that are never read.
    /** Server CPU ms/s over one quiet window (after two forced GCs), all threads, and the main thread alone. */
    const threads: Array<{ all: number; main: number }> = [];
    const cpuWindow = async (): Promise<number> => {
      await server.call('gc');
      await sleep(500);
      const a = await server.call<Cpu>('cpu');
      const mainA = threadCpuMsOf(serverPid, serverPid);
      await sleep(windowMs);
      const b = await server.call<Cpu>('cpu');
      const mainB = threadCpuMsOf(serverPid, serverPid);
      const all = cpuMsPerSecond(a, b);
      threads.push({ all, main: (mainB - mainA) / ((b.at - a.at) / 1000) });
      return all;
    };
    ctx.log(`stalled streams: ${cpuWindows} × ${windowMs / 1000} s idle CPU windows without streams`);
    await sleep(1000);
    const idle: number[] = [];
    for (let i = 0; i < cpuWindows; i++) idle.push(await cpuWindow());
    const rssIdle = rssOf(serverPid);
    ctx.log(`  ${idle.map((value) => value.toFixed(2)).join(', ')} ms/s; opening ${streamCount} streams that are never read`);
    const opened = await attacker.call<{ opened: number; failed: number }>('openStreams', {
      url: `http://${base}/api/sync/events?entities=todos`,
      count: streamCount,
    });
    await sleep(500);
    const afterOpen = await server.call<{ open: number; stalled: number; queuedBytes: number; engine: { sse: number } }>('streams');
    if (opened.opened !== streamCount || afterOpen.engine.sse !== streamCount) {
      throw new Error(
        `opened ${opened.opened} of ${streamCount} streams (${opened.failed} failed); the server counts ${afterOpen.engine.sse}`,
      );
    }
    const sampler = rssSampler(serverPid);
    const write = await server.call<{ ms: number; version: number }>('write', { rows: writeRows, batches: writeBatches });
    await sleep(1000);
    const filled = await server.call<{ open: number; stalled: number; queuedBytes: number; engine: { sse: number } }>('streams');
    ctx.log(
      `  ${writeBatches} writes of ${writeRows} rows fanned out in ${ms(write.ms)} ms; ${filled.engine.sse} streams open, ` +
        `${filled.stalled} with bytes queued in Node (${bytes(filled.queuedBytes)} in all); ${cpuWindows} × ${windowMs / 1000} s CPU windows`,
    );
    const profile = process.env.BENCH_HOSTILE_PROFILE === 'stalled';
    if (profile) await server.call('profileStart');
    const stalledCpu: number[] = [];
    for (let i = 0; i < cpuWindows; i++) stalledCpu.push(await cpuWindow());
    if (profile) {
      const file = join(ROOT, '.tmp/bench-profiles', 'hostile-server-stalled.cpuprofile');
      ctx.log(`  wrote ${await server.call<string>('profileStop', { file })}`);
    }
    const rssPeakStalled = sampler.stop();
    const rssStalled = rssOf(serverPid);
    const stillOpen = await server.call<{ open: number; stalled: number; queuedBytes: number; engine: { sse: number } }>('streams');
    await attacker.call('closeStreams');
    ctx.log(
      `  ${stalledCpu.map((value) => value.toFixed(2)).join(', ')} ms/s (main thread: ${threads.map((each) => each.main.toFixed(0)).join(', ')})`,
    );
    const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
    const idleCpu = mean(idle);
    const stalledMean = mean(stalledCpu);
    const idleMain = mean(threads.slice(0, cpuWindows).map((each) => each.main));
    const stalledMain = mean(threads.slice(cpuWindows).map((each) => each.main));
    const extraCpu = stalledMean - idleCpu;

    // Tables: medians over rounds (RSS and event-loop peaks: the largest seen).
    const stats = (mode: Phase) => {
      const mine = runs.filter((run) => run.mode === mode);
      const sum = (pick: (run: PhaseRun) => Record<string, number> | undefined) =>
        mine.reduce<Record<string, number>>((all, run) => {
          for (const [code, count] of Object.entries(pick(run) ?? {})) all[code] = (all[code] ?? 0) + count;
          return all;
        }, {});
      const perSecond = (pick: (hostile: HostileStats) => number) =>
        median(mine.map((run) => (run.hostile ? pick(run.hostile) / (run.hostile.ms / 1000) : 0)));
      return {
        pulls: variants.map((_, v) => ({
          p50: median(mine.map((run) => run.pulls[v]?.p50 ?? Number.NaN)),
          p99: median(mine.map((run) => run.pulls[v]?.p99 ?? Number.NaN)),
        })),
        rss: {
          before: median(mine.map((run) => run.rss.before)),
          peak: Math.max(...mine.map((run) => run.rss.peak)),
          after: median(mine.map((run) => run.rss.after)),
        },
        cpu: {
          server: median(mine.map((run) => run.cpu.server)),
          hostile: median(mine.map((run) => run.cpu.hostile)),
          prober: median(mine.map((run) => run.cpu.prober)),
        },
        loop: { p99: median(mine.map((run) => run.loop.p99)), max: Math.max(...mine.map((run) => run.loop.max)) },
        connections: perSecond((hostile) => hostile.connections),
        messages: perSecond((hostile) => hostile.messages),
        closes: sum((run) => run.closes),
        clientCloses: sum((run) => run.hostile?.clientCloses),
      };
    };
    const byPhase = Object.fromEntries(phases.map((mode) => [mode, stats(mode)])) as Record<Phase, ReturnType<typeof stats>>;
    const tableRows: Array<Array<string | number>> = [];
    variants.forEach((variant, v) => {
      const q = byPhase.quiet.pulls[v] as { p50: number; p99: number };
      for (const mode of phases) {
        const h = byPhase[mode].pulls[v] as { p50: number; p99: number };
        tableRows.push([variant.name, label[mode], `${ms(h.p50)} / ${ms(h.p99)}`, times(h.p50 / q.p50), times(h.p99 / q.p99)]);
      }
    });
    const attackRows = phases.map((mode) => {
      const each = byPhase[mode];
      const quietRow = mode === 'quiet';
      return [
        quietRow ? 'none (quiet)' : label[mode],
        quietRow ? '—' : `${Math.round(each.connections).toLocaleString('en-US')} / ${Math.round(each.messages).toLocaleString('en-US')}`,
        quietRow ? '—' : codes(each.closes),
        `${bytes(each.rss.before)} / ${bytes(each.rss.peak)} / ${bytes(each.rss.after)}`,
        `${each.cpu.server.toFixed(0)} / ${quietRow ? '—' : each.cpu.hostile.toFixed(0)} / ${each.cpu.prober.toFixed(0)}`,
        `${ms(each.loop.p99)} / ${ms(each.loop.max)}`,
      ];
    });
    const streamRows = [
      [
        'no streams',
        '0',
        '—',
        `${idleCpu.toFixed(2)} (${idle.map((value) => value.toFixed(2)).join(', ')})`,
        idleMain.toFixed(0),
        bytes(rssIdle),
      ],
      [
        `${streamCount.toLocaleString('en-US')} stalled SSE streams`,
        `${stillOpen.engine.sse.toLocaleString('en-US')} (${stillOpen.stalled.toLocaleString('en-US')} with a Node-side queue)`,
        bytes(filled.queuedBytes),
        `${stalledMean.toFixed(2)} (${stalledCpu.map((value) => value.toFixed(2)).join(', ')})`,
        stalledMain.toFixed(0),
        `${bytes(rssStalled)} (peak ${bytes(rssPeakStalled)})`,
      ],
    ];
    const quietP50 = (byPhase.quiet.pulls[0] as { p50: number }).p50;
    const floodRatio = (byPhase.flood.pulls[0] as { p50: number }).p50 / quietP50;
    const pacedRatio = (byPhase.paced.pulls[0] as { p50: number }).p50 / quietP50;
    const cpuGoal = 10; // ms of CPU per second: 1 % of one core
    const targets: Target[] = [
      {
        what: 'pull p50 under one hostile socket (flooding 10,000-row `sync`, never reading), incremental pull',
        ratio: floodRatio,
        goal: '≤ 3× quiet p50',
        met: floodRatio <= 3,
      },
      {
        what: 'pull p50 under one hostile socket (10,000-row `sync` paced at the row budget, never reading), incremental pull',
        ratio: pacedRatio,
        goal: '≤ 3× quiet p50',
        met: pacedRatio <= 3,
      },
      {
        what: `${streamCount.toLocaleString('en-US')} stalled SSE streams: idle CPU`,
        ratio: stalledMean / idleCpu,
        measured: `${extraCpu >= 0 ? '+' : ''}${extraCpu.toFixed(2)} ms/s (${idleCpu.toFixed(2)} → ${stalledMean.toFixed(2)})`,
        goal: `no measurable CPU: ≤ +${cpuGoal} ms/s (1 % of a core) over no streams`,
        met: extraCpu <= cpuGoal,
      },
    ];
    const problems = runs.flatMap((run) => run.problems);
    return {
      id: 'hostile',
      title: '7. One hostile socket, and 1,000 stalled streams',
      method:
        `The engine (default limits) on a SQLite file with ${rows.toLocaleString('en-US')} todos (100-character titles), alone in its process; ` +
        `a normal client in another process makes sequential HTTP pulls (gzip, parsed; ${gapMs} ms apart, ${probes} of each kind per phase), ` +
        'quiet and then while one hostile WebSocket in a third process sends `{"type":"sync","entity":"todos","since":0,"limit":10000}` ' +
        'without ever reading (TCP socket paused right after open): flooding as fast as it can, or paced at the row budget ' +
        '(20 a second after a burst of 20). It cannot see a close frame, so the server process reports each close it sends and the hostile client ' +
        'drops that socket and reconnects at once. Server RSS from /proc/<pid>/status every 50 ms (before: at the start of the phase; ' +
        `after: 2 s after the hostile client stopped). Then ${streamCount.toLocaleString('en-US')} \`GET /api/sync/events\` streams that are never read, ` +
        `fed ${writeBatches} transactions of ${writeRows.toLocaleString('en-US')} rows; server CPU (process.cpuUsage, all threads) over ` +
        `${cpuWindows} quiet ${windowMs / 1000} s window(s) with them and without. Median of ${rounds} round(s).`,
      table: {
        columns: ['pull', 'while', 'p50 / p99 ms', 'p50 vs quiet', 'p99 vs quiet'],
        rows: tableRows,
      },
      extraTables: [
        {
          title: 'The hostile socket',
          columns: [
            'hostile client',
            'connections/s / messages/s',
            'close codes the server sent',
            'server RSS before / peak / after',
            'CPU ms/s: server / hostile / normal client',
            'server event-loop delay p99 / max ms (10 ms timer: ≈ 10 when idle)',
          ],
          rows: attackRows,
        },
        {
          title: 'Stalled streams (server CPU in quiet windows)',
          columns: [
            'server holds',
            'streams open',
            'bytes queued in Node',
            'server CPU ms/s, all threads (each window)',
            'main thread ms/s (10 ms ticks)',
            'server RSS',
          ],
          rows: streamRows,
        },
      ],
      targets,
      notes: [
        `Close codes the hostile client saw by itself (not relayed): ${codes(Object.assign({}, ...modes.map((mode) => byPhase[mode].clientCloses)))}.`,
        "Bytes queued in Node: the sum of every stalled stream's `writableLength`; a live batch's frame is one buffer shared by every stream, so RSS grows by far less.",
        `Idle CPU includes the engine's own timers (log poll every 25 ms, rights re-check every 5 s, SSE heartbeat every 15 s: ${(cpuWindows * windowMs) / 1000} s of windows).`,
        ...(problems.length > 0 ? [`Unexpected pull answers: ${problems.slice(0, 3).join('; ')}`] : []),
      ],
      data: {
        rows,
        probes,
        gapMs,
        variants,
        runs,
        byPhase,
        stalled: {
          streamCount,
          writeRows,
          writeBatches,
          write,
          afterOpen,
          filled,
          stillOpen,
          idle,
          stalledCpu,
          threads,
          rssIdle,
          rssStalled,
          rssPeakStalled,
        },
      },
    };
  } finally {
    await attacker.call('stopHostile').catch(() => {});
    await attacker.call('closeStreams').catch(() => {});
    await server.call('stop').catch(() => {});
    await Promise.all([server.stop(), attacker.stop(), prober.stop()]);
  }
}
