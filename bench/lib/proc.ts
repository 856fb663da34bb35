/**
 * Benchmark processes: the orchestrator spawns the server and the client
 * processes and drives them with small request/reply messages over the IPC
 * channel. Nothing timed crosses this channel while a measurement runs:
 * timestamps are taken where events happen and collected afterwards.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { now } from './clock.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');

type Handler = (args: any) => unknown | Promise<unknown>;

interface Request {
  id: number;
  cmd: string;
  args: unknown;
}
interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}
interface EventMessage {
  event: string;
  data: unknown;
}

/** Child side: answer the orchestrator's commands. `exit` is always understood. */
export function serve(handlers: Record<string, Handler>): void {
  if (!process.send) throw new Error('bench worker started without an IPC channel');
  const all: Record<string, Handler> = {
    ...handlers,
    clock: () => now(),
    exit: () => {
      setImmediate(() => process.exit(0));
      return null;
    },
  };
  process.on('message', async (message: Request) => {
    const handler = all[message.cmd];
    let reply: Reply;
    try {
      if (!handler) throw new Error(`unknown command ${message.cmd}`);
      reply = { id: message.id, ok: true, result: await handler(message.args) };
    } catch (error) {
      reply = { id: message.id, ok: false, error: (error as Error).stack ?? String(error) };
    }
    process.send?.(reply);
  });
  // The orchestrator going away must not leave workers holding sockets.
  process.on('disconnect', () => process.exit(0));
}

/** Child side: tell the orchestrator something happened (e.g. every socket got write k). */
export function emit(event: string, data: unknown): void {
  process.send?.({ event, data } satisfies EventMessage);
}

/** The file-descriptor limit this shell gives (soft, hard). */
export function fdLimits(): { soft: number; hard: number } {
  const read = (flag: string) => {
    const text = execFileSync('sh', ['-c', `ulimit ${flag} -n`], { encoding: 'utf8' }).trim();
    return text === 'unlimited' ? Number.POSITIVE_INFINITY : Number(text);
  };
  return { soft: read('-S'), hard: read('-H') };
}

export interface WorkerOptions {
  /** File descriptors the worker needs: its soft limit is raised to this (up to the hard limit). */
  fds?: number;
  /** Extra node flags, e.g. --expose-gc. */
  nodeFlags?: string[];
  env?: Record<string, string>;
}

/** Parent side: one spawned worker process. */
export class Worker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: any) => void; reject: (error: Error) => void }>();
  private readonly listeners = new Map<string, Set<(data: any) => void>>();
  private exited = false;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    child.on('message', (message: Reply | EventMessage) => {
      if ('event' in message) {
        for (const listener of this.listeners.get(message.event) ?? []) listener(message.data);
        return;
      }
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.ok) waiter.resolve(message.result);
      else waiter.reject(new Error(`${name}: ${message.error}`));
    });
    child.on('exit', (code, signal) => {
      this.exited = true;
      for (const waiter of this.pending.values()) waiter.reject(new Error(`${name} exited (${code ?? signal})`));
      this.pending.clear();
    });
  }

  /** Start `file` (TypeScript, run through tsx) with its own raised fd limit. */
  static async start(name: string, file: string, options: WorkerOptions = {}): Promise<Worker> {
    const { hard } = fdLimits();
    const fds = Math.min(options.fds ?? 1024, hard);
    // BENCH_PROFILE=<worker name> writes a CPU profile of that worker to .tmp/bench-profiles (for finding bottlenecks).
    const profile = process.env.BENCH_PROFILE === name ? ['--cpu-prof', `--cpu-prof-dir=${join(ROOT, '.tmp/bench-profiles')}`] : [];
    const node = [process.execPath, ...(options.nodeFlags ?? []), ...profile, '--import', 'tsx', file];
    // `ulimit` then `exec` keeps the pid and the IPC descriptor: the child we hold is the node process.
    const child = spawn('sh', ['-c', `ulimit -n ${fds} && exec "$@"`, 'sh', ...node], {
      cwd: ROOT,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
      env: { ...process.env, ...options.env },
    });
    const worker = new Worker(name, child);
    await worker.call('clock'); // ready
    return worker;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  call<T = unknown>(cmd: string, args?: unknown): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ id, cmd, args } satisfies Request);
    });
  }

  on(event: string, listener: (data: any) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Ask the worker to exit; kill it (by its own pid) if it does not. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.call('exit').catch(() => {});
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  }
}

/**
 * Cross-process clock check: the worker's reading of the shared monotonic
 * clock must fall between the orchestrator's readings around the round trip.
 */
export async function checkClock(worker: Worker): Promise<{ ok: boolean; roundTripMs: number }> {
  let best = { ok: true, roundTripMs: Number.POSITIVE_INFINITY };
  for (let i = 0; i < 5; i++) {
    const before = now();
    const theirs = await worker.call<number>('clock');
    const after = now();
    const ok = theirs >= before && theirs <= after;
    if (!ok) return { ok, roundTripMs: after - before };
    if (after - before < best.roundTripMs) best = { ok, roundTripMs: after - before };
  }
  return best;
}
