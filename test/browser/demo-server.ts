/**
 * The demo (examples/todo) as a real child process, exactly as `npm start`
 * runs it, for the tests that use it over HTTP and from a real browser.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { waitFor } from '../helpers.js';
import { buildClient, root } from './client-bundle.js';

export interface Demo {
  url: string;
  dbPath: string;
  child: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/**
 * Start `npx tsx examples/todo/server.ts` in its own process group and wait for /healthz. It serves
 * the client freshly bundled from src/client (`RHTMX_CLIENT_DIR`): dist/ may be stale, or rebuilt
 * by someone else while the test reads it.
 */
export async function startDemo(dbPath: string, env: Record<string, string> = {}): Promise<Demo> {
  const clientDir = await buildClient();
  const port = await freePort();
  let output = '';
  const child = spawn('npx', ['tsx', 'examples/todo/server.ts'], {
    cwd: root,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', DATABASE_URL: dbPath, DEBUG: '0', RHTMX_CLIENT_DIR: clientDir, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own group: npx → tsx → node, and stop() must end all of them.
    detached: true,
  });
  child.stdout?.on('data', (chunk) => {
    output += chunk;
  });
  child.stderr?.on('data', (chunk) => {
    output += chunk;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const demo: Demo = {
    url,
    dbPath,
    child,
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(-(child.pid as number), 'SIGTERM');
      } catch {}
      const timer = setTimeout(() => {
        try {
          process.kill(-(child.pid as number), 'SIGKILL');
        } catch {}
      }, 5000);
      await exited;
      clearTimeout(timer);
    },
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`demo exited with ${child.exitCode}:\n${output}`);
        return fetch(`${url}/healthz`).then(
          (response) => response.ok,
          () => false,
        );
      },
      60_000,
      'the demo to answer /healthz',
    );
  } catch (error) {
    await demo.stop();
    throw error;
  }
  return demo;
}
