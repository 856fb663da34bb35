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
  kills = 0;
  /** The last lines the node wrote to stderr, across restarts. */
  readonly stderr: string[] = [];
  /** First lines of what the node wrote to stderr (an error's message, not its stack), with how often. */
  readonly headlines = new Map<string, number>();
  private child: ChildProcess | null = null;
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
    this.exited = new Promise((resolve) =>
      child.once('exit', () => {
        alive.delete(child);
        resolve();
      }),
    );
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) {
        if (!line.trim()) continue;
        if (/^[^\s}\]]/.test(line)) {
          const headline = line.slice(0, 160);
          this.headlines.set(headline, (this.headlines.get(headline) ?? 0) + 1);
        }
        this.stderr.push(`[node ${this.index}] ${line}`);
        if (this.stderr.length > STDERR_LINES) this.stderr.shift();
      }
    });
    return new Promise<void>((resolve, reject) => {
      let buffer = '';
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`node ${this.index} did not start within ${START_TIMEOUT_MS} ms`));
      }, START_TIMEOUT_MS);
      child.stdout?.setEncoding('utf8');
      const onData = (chunk: string) => {
        buffer += chunk;
        if (!buffer.includes('todo: http://')) return;
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
    if (!this.up) return;
    this.kills++;
    this.child?.kill('SIGKILL');
    await this.exited;
  }

  /** Graceful stop (SIGTERM), then SIGKILL if it lingers. */
  async stop(): Promise<void> {
    if (!this.up) return;
    this.child?.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), 5_000);
    await this.exited;
    clearTimeout(timer);
  }
}
