/**
 * Server nodes: the demo server (examples/todo/server.ts) as child processes,
 * each on a fixed loopback port, so a node killed with SIGKILL comes back on
 * the same address and its clients (browsers included) find it again.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEMO = fileURLToPath(new URL('../examples/todo/server.ts', import.meta.url));
/** How long a start may take before it counts as failed (tsx compiles the demo on a cold cache). */
const START_TIMEOUT_MS = 60_000;
/** Lines of a node's stderr kept for the report. */
const STDERR_LINES = 40;
/** Lines kept around an uncaught exception or an unexpected exit (before / after the sign). */
const EXCERPT_BEFORE = 25;
const EXCERPT_AFTER = 12;
/** Signs of an uncaught exception, an unhandled rejection or a fatal error; never printed for a handled, logged error. */
const CRASH_SIGN =
  /^Node\.js v\d+\.\d+|uncaught ?exception|unhandled ?(promise ?)?rejection|triggerUncaughtException|^FATAL ERROR:|^\s*\^\s*$/i;
/** The first line of a thrown error (`TypeError: …`, `Error [ERR_X]: …`, `[UnhandledPromiseRejection: …`). */
const ERROR_LINE = /^\[?[A-Za-z]*(Error|Exception|Rejection)\b/;
/** Crash signs kept per node. */
const SIGNS_KEPT = 10;

/** A node process that ended without the soak killing or stopping it. */
export interface UnexpectedExit {
  node: number;
  /** Epoch ms. */
  at: number;
  code: number | null;
  signal: string | null;
  /** The last lines that process wrote to stderr. */
  stderr: string[];
}

/** A line of a node's stderr that shows an uncaught exception or unhandled rejection, with the lines around it. */
export interface CrashSign {
  node: number;
  at: number;
  line: string;
  excerpt: string[];
}

/** A free loopback port (the listener is closed again at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Every node process alive; killed when the soak process exits, however it exits. */
const alive = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
});

export class ServerNode {
  readonly url: string;
  /** Times this node was started (the first start included). */
  starts = 0;
  /** When the node last started listening (epoch ms). */
  startedAt = 0;
  kills = 0;
  /** The last lines the node wrote to stderr, across restarts. */
  readonly stderr: string[] = [];
  /** First lines of what the node wrote to stderr (an error's message, not its stack), with how often. */
  readonly headlines = new Map<string, number>();
  /** Exits of a listening process that the soak did not cause (kill, stop): crashes. */
  readonly unexpectedExits: UnexpectedExit[] = [];
  /** Processes that exited on their own before they listened (the start is retried). */
  startFailures = 0;
  /** Uncaught exceptions, unhandled rejections and fatal errors seen on stderr. */
  readonly crashSigns: CrashSign[] = [];
  private child: ChildProcess | null = null;
  /** Processes the soak itself ended (SIGKILL, SIGTERM, a start timeout). */
  private readonly ending = new WeakSet<ChildProcess>();
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly index: number,
    readonly port: number,
    private readonly databaseUrl: string,
    /** Serve the browser client from this build folder (the demo's RHTMX_CLIENT_DIR) instead of dist/client. */
    private readonly clientDir?: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  get up(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Start the demo and resolve once it listens; a port still held by the old process is retried. */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.spawnOnce();
        this.starts++;
        this.startedAt = Date.now();
        return;
      } catch (error) {
        if (attempt >= 20) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  private spawnOnce(): Promise<void> {
    const child = spawn(process.execPath, ['--import', 'tsx', DEMO], {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: String(this.port),
        HOST: '127.0.0.1',
        DATABASE_URL: this.databaseUrl,
        DEBUG: '',
        ...(this.clientDir ? { RHTMX_CLIENT_DIR: this.clientDir } : {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    alive.add(child);
    let listening = false;
    /** This process's last stderr lines, and the crash excerpts still collecting the lines after their sign. */
    const recent: string[] = [];
    const collecting: Array<{ sign: CrashSign; more: number; named: boolean }> = [];
    let partial = '';
    const onLine = (line: string) => {
      if (!line.trim()) return;
      for (const open of collecting) {
        if (open.more-- <= 0) continue;
        open.sign.excerpt.push(line);
        // The caret or the trailer says that it crashed; the error's own first line says what.
        if (!open.named && ERROR_LINE.test(line)) {
          open.named = true;
          open.sign.line = line.slice(0, 300);
        }
      }
      recent.push(line);
      if (recent.length > EXCERPT_BEFORE) recent.shift();
      if (/^[^\s}\]]/.test(line)) {
        const headline = line.slice(0, 160);
        this.headlines.set(headline, (this.headlines.get(headline) ?? 0) + 1);
      }
      this.stderr.push(`[node ${this.index}] ${line}`);
      if (this.stderr.length > STDERR_LINES) this.stderr.shift();
      // One sign per crash printout is enough: the caret line, the trailer and the stack all belong to one.
      if (CRASH_SIGN.test(line) && collecting.every((open) => open.more <= 0) && this.crashSigns.length < SIGNS_KEPT) {
        const sign: CrashSign = { node: this.index, at: Date.now(), line: line.slice(0, 300), excerpt: [...recent] };
        this.crashSigns.push(sign);
        collecting.push({ sign, more: EXCERPT_AFTER, named: ERROR_LINE.test(line) });
      }
    };
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        alive.delete(child);
        if (!this.ending.has(child)) {
          if (!listening) this.startFailures++;
          else {
            const exit: UnexpectedExit = { node: this.index, at: Date.now(), code, signal, stderr: [...recent] };
            this.unexpectedExits.push(exit);
            // stderr may still be flushing after 'exit' (the stack of the crash): take its last lines once it closed.
            child.once('close', () => {
              exit.stderr = [...recent];
            });
          }
        }
        resolve();
      }),
    );
    child.once('close', () => {
      if (partial) onLine(partial);
      partial = '';
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) onLine(line);
    });
    return new Promise<void>((resolve, reject) => {
      let buffer = '';
      const timer = setTimeout(() => {
        this.ending.add(child);
        child.kill('SIGKILL');
        reject(new Error(`node ${this.index} did not start within ${START_TIMEOUT_MS} ms`));
      }, START_TIMEOUT_MS);
      child.stdout?.setEncoding('utf8');
      const onData = (chunk: string) => {
        buffer += chunk;
        if (!buffer.includes('todo: http://')) return;
        listening = true;
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        clearTimeout(timer);
        resolve();
      };
      child.stdout?.on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`node ${this.index} exited (${code ?? signal}) before listening`));
      });
    });
  }

  /** SIGKILL: no shutdown handler runs, connections and transactions die mid-flight. */
  async kill(): Promise<void> {
    if (!this.up || !this.child) return;
    this.kills++;
    this.ending.add(this.child);
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** Graceful stop (SIGTERM), then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (!this.up || !this.child) return;
    this.ending.add(this.child);
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5_000);
    await this.exited;
    clearTimeout(timer);
  }
}
