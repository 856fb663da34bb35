/**
 * Test harness: real SQLite files, real HTTP servers on loopback, real
 * WebSocket and EventSource-style clients. Nothing is mocked.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import WebSocket from 'ws';
import { nodeHandler } from '../src/adapters/node.js';
import type { SyncEngineOptions } from '../src/core/config.js';
import { SyncEngine } from '../src/engine.js';

/** What changes say of the client that pushed them: a digest, never its id (core/access.ts writerOf), computed independently here. */
export const writer = (clientId: string): string => `#${createHash('sha256').update(clientId).digest('hex').slice(0, 32)}`;

export const TODOS_SQL = `CREATE TABLE IF NOT EXISTS todos (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  done BOOLEAN NOT NULL DEFAULT 0,
  updated_at TEXT
)`;

export interface TempDb {
  path: string;
  db: Database.Database;
  dispose(): void;
}

/** A fresh SQLite file in its own temp folder. */
export function tempDb(setupSql = TODOS_SQL): TempDb {
  const dir = mkdtempSync(join(tmpdir(), 'rhtmx-test-'));
  const path = join(dir, 'test.db');
  const db = new Database(path);
  db.exec(setupSql);
  return {
    path,
    db,
    dispose() {
      try {
        db.close();
      } catch {}
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface TestServer {
  url: string;
  wsUrl: string;
  engine: SyncEngine;
  server: http.Server;
  db: Database.Database;
  dbPath: string;
  close(): Promise<void>;
}

/** Start an engine on a real SQLite file behind a real node:http server on 127.0.0.1. */
export async function startServer(options: Partial<SyncEngineOptions> & { setupSql?: string } = {}): Promise<TestServer> {
  const temp = tempDb(options.setupSql);
  const engine = new SyncEngine({ db: temp.db, entities: ['todos'], pollMs: 10, ...options });
  await engine.ready;
  const server = http.createServer(nodeHandler(engine));
  engine.attach(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/api/sync/ws`,
    engine,
    server,
    db: temp.db,
    dbPath: temp.path,
    async close() {
      await engine.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      temp.dispose();
    },
  };
}

export async function getJson<T = any>(url: string, init?: RequestInit): Promise<{ status: number; body: T; headers: Headers }> {
  const response = await fetch(url, init);
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null, headers: response.headers };
}

export async function postJson<T = any>(url: string, body: unknown): Promise<{ status: number; body: T }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Poll until `check` returns a truthy value (or throw after `ms`). Used for arrival, never for timing. */
export async function waitFor<T>(check: () => T | Promise<T>, ms = 5000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * A live URL as our own client opens it: declaring the batch protocol
 * (core/protocol.ts BATCH_QUERY), unless the URL already says `protocol=`.
 * Without it the server frames live changes for the original crate's clients.
 */
export const batchUrl = (url: string): string => (/[?&]protocol=/.test(url) ? url : `${url}${url.includes('?') ? '&' : '?'}protocol=2`);

/** A WebSocket client that records every message and can await replies by `ref` or type. */
export class WsClient {
  readonly messages: any[] = [];
  private nextRef = 1;
  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data) => this.messages.push(JSON.parse(String(data))));
  }

  static async connect(url: string, options?: WebSocket.ClientOptions): Promise<WsClient> {
    const socket = new WebSocket(batchUrl(url), options);
    const client = new WsClient(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    await waitFor(() => client.messages.find((m) => m.type === 'hello'), 5000, 'hello');
    return client;
  }

  /** Send a message with a fresh ref and wait for the reply carrying it. */
  async request(message: Record<string, unknown>): Promise<any> {
    const ref = this.nextRef++;
    this.socket.send(JSON.stringify({ ...message, ref }));
    return waitFor(() => this.messages.find((m) => m.ref === ref), 5000, `reply to ${String(message.type)}`);
  }

  sendRaw(data: string | Buffer): void {
    this.socket.send(data);
  }

  changes(): any[] {
    return this.messages.filter((m) => m.type === 'change').flatMap((m) => m.changes);
  }

  close(): void {
    this.socket.close();
  }
}

/** Minimal SSE reader over fetch: parses `id:` and `data:` fields of each event. */
export class SseClient {
  readonly events: Array<{ id?: string; data: any }> = [];
  private readonly controller = new AbortController();
  status = 0;
  headers?: Headers;
  done: Promise<void>;

  constructor(url: string, headers: Record<string, string> = {}) {
    this.done = this.run(url, headers);
  }

  private async run(url: string, headers: Record<string, string>): Promise<void> {
    try {
      const response = await fetch(batchUrl(url), { headers, signal: this.controller.signal });
      this.status = response.status;
      this.headers = response.headers;
      if (!response.body) return;
      const decoder = new TextDecoder();
      let buffer = '';
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id: string | undefined;
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) this.events.push({ id, data: JSON.parse(data.join('\n')) });
          end = buffer.indexOf('\n\n');
        }
      }
    } catch (error) {
      if ((error as Error).name !== 'AbortError') throw error;
    }
  }

  changes(): any[] {
    return this.events.flatMap((event) => event.data.changes ?? []);
  }

  close(): void {
    this.controller.abort();
  }
}
