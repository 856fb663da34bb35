import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * Hostile raw traffic against a real server in a child process
 * (test/fixtures/hostile-server.ts): malformed WebSocket upgrades, TCP resets
 * at every moment of an upgrade, malformed Host headers on plain HTTP, and a
 * seeded random fuzzer of raw requests. Whatever arrives, the process must stay
 * up (Node's default crash on an uncaught exception or unhandled rejection is
 * what is detected), refusals must be 4xx, and the server must keep serving.
 *
 * When the child dies, the case that killed it is recorded with the child's
 * stderr, a fresh child is started and the phase goes on: every failure is
 * reported, not only the first. All traffic goes to 127.0.0.1.
 *
 * HOSTILE_SEED=<n> reruns the fuzzer with another seed; HOSTILE_N=<n> changes its request count.
 */

const FIXTURE = fileURLToPath(new URL('./fixtures/hostile-server.ts', import.meta.url));
const VALID_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const SEED = process.env.HOSTILE_SEED ? Number(process.env.HOSTILE_SEED) >>> 0 : 0x5eed_2024;
const FUZZ_COUNT = process.env.HOSTILE_N ? Number(process.env.HOSTILE_N) : 300;
/** Crash output of Node on stderr (engine log records are `LOG {json}` lines and checked apart). */
const CRASH_TEXT = /Unhandled|uncaught|ERR_/i;
/** A stack frame in a response body. */
const STACK_TEXT = /\bat \S.*:\d+:\d+|\n\s+at /;

type Mode = 'auth' | 'anonymous';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------
// The child process

class Child {
  readonly proc: ChildProcess;
  stderr = '';
  /** How much of stderr a phase already checked for crash output. */
  checkedUpTo = 0;
  /** How much of stderr was already checked for engine error logs. */
  loggedUpTo = 0;
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly closed: Promise<void>;
  readonly port: Promise<number>;

  constructor(mode: Mode, dir: string) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', FIXTURE, mode], {
      env: { ...process.env, HOSTILE_DB_DIR: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    this.proc.once('exit', (code, signal) => {
      this.exit = { code, signal };
    });
    this.closed = new Promise((resolve) => this.proc.once('close', () => resolve()));
    this.port = new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`hostile-server did not listen within 20 s\n${this.stderr}`)), 20_000);
      this.proc.stdout!.setEncoding('utf8');
      this.proc.stdout!.on('data', (chunk: string) => {
        out += chunk;
        const match = /PORT (\d+)/.exec(out);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      this.proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`hostile-server exited (${code ?? signal}) before listening\n${this.stderr}`));
      });
    });
    // A spare that is never used must not turn its failure into an unhandled rejection here.
    this.port.catch(() => {});
  }

  get alive(): boolean {
    return this.exit === null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** stderr without the engine's own log records. */
  crashOutput(from = 0): string {
    return this.stderr
      .slice(from)
      .split('\n')
      .filter((line) => !line.startsWith('LOG '))
      .join('\n')
      .trim();
  }

  /** The engine's error log records (handled errors it considers internal). */
  errorLogs(from = 0): string[] {
    return this.stderr
      .slice(from)
      .split('\n')
      .filter((line) => line.startsWith('LOG '))
      .map((line) => {
        try {
          const record = JSON.parse(line.slice(4)) as { level: string; msg: string; err?: string };
          return record.level === 'error' ? `${record.msg}: ${record.err ?? ''}` : '';
        } catch {
          return line;
        }
      })
      .filter(Boolean);
  }

  async kill(): Promise<void> {
    if (this.alive) this.proc.kill('SIGKILL');
    await Promise.race([this.closed, sleep(2000)]);
  }
}

interface Crash {
  label: string;
  exit: string;
  stderr: string;
  signature: string;
}

/** The error line (URLs and numbers blanked) plus the first frame in the project: what tells two crashes apart. */
function signatureOf(stderr: string): string {
  const lines = stderr.split('\n').map((line) => line.trim());
  const error = lines.find((line) => /^\w*Error\b/.test(line)) ?? lines.find((line) => /Unhandled|uncaught/i.test(line)) ?? lines[0] ?? '';
  const frames = lines.filter((line) => line.startsWith('at '));
  const frame = frames.find((line) => /\/(src|test)\//.test(line)) ?? frames[0] ?? '';
  const where = frame.replace(/\(?\/\S*\/((src|test)\/\S+?):\d+:\d+\)?$/, '($1)').replace(/:\d+:\d+\)?$/, ')');
  return `${error.replace(/\bhttps?:\/\/.*$/, '<url>')} ${where}`.slice(0, 240);
}

/**
 * The current child of one mode. A spare child is kept warm, so that replacing
 * one that crashed costs no start-up time.
 */
class Target {
  child!: Child;
  port = 0;
  private spare: Child | null = null;
  private readonly dirs: string[] = [];

  constructor(readonly mode: Mode) {}

  private spawnChild(): Child {
    const dir = mkdtempSync(join(tmpdir(), 'rhtmx-hostile-'));
    this.dirs.push(dir);
    return new Child(this.mode, dir);
  }

  async start(): Promise<void> {
    let next = this.spare?.alive ? this.spare : this.spawnChild();
    this.spare = null;
    try {
      this.port = await next.port;
    } catch {
      // The spare died idle (it never should): start one more, and let its failure fail the test.
      next = this.spawnChild();
      this.port = await next.port;
    }
    this.child = next;
    this.spare = this.spawnChild();
  }

  /**
   * Let the server finish acting on what it got, then: if the child died,
   * collect its crash output, switch to a fresh child and return the crash.
   *
   * The barrier is a pull whose authorize waits `delayMs`: timers fire in
   * order, so once it answers every slower authorize of the case before it has
   * run (and whatever it wrote has failed or not), even on a loaded machine.
   */
  async settle(label: string, delayMs = 60): Promise<Crash | null> {
    const passed = await this.barrier(delayMs);
    if (!passed) await Promise.race([this.child.closed, sleep(1000)]);
    else await sleep(5);
    if (this.child.alive) return null;
    await Promise.race([this.child.closed, sleep(1000)]);
    const { exit } = this.child;
    const stderr = this.child.crashOutput();
    await this.start();
    return { label, exit: `code ${exit?.code ?? 'null'}, signal ${exit?.signal ?? 'null'}`, stderr, signature: signatureOf(stderr) };
  }

  private async barrier(delayMs: number): Promise<boolean> {
    if (this.mode === 'anonymous') await sleep(Math.min(delayMs, 20));
    try {
      const response = await fetch(`http://127.0.0.1:${this.port}/api/sync/todos?since=0&limit=1`, {
        headers: { 'x-user': 'u1', 'x-delay': String(delayMs) },
        signal: AbortSignal.timeout(3000),
      });
      await response.arrayBuffer();
      return true;
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    await Promise.all([this.child?.kill(), this.spare?.kill()]);
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// Raw requests

interface Plan {
  /** Reset as soon as the TCP connection is up, before sending a byte. */
  resetOnConnect?: boolean;
  /** Send only this many bytes of the request, then reset. */
  resetAtByte?: number;
  /** Send the whole request, then reset this many ms later. */
  resetAfterMs?: number;
  /** Reset as soon as the first bytes of the answer arrive. */
  resetOnAnswer?: boolean;
  /** `status`: done once the status line is in; `complete`: once the whole answer is (or the server closed). */
  until?: 'status' | 'complete';
  timeoutMs?: number;
}

interface Outcome {
  statusLine: string | null;
  status: number | null;
  head: string;
  body: string;
  timedOut: boolean;
  error: string | null;
}

function parseAnswer(data: Buffer): { statusLine: string | null; status: number | null; head: string; body: Buffer; headDone: boolean } {
  const lineEnd = data.indexOf('\r\n');
  const statusLine = lineEnd >= 0 ? data.subarray(0, lineEnd).toString('latin1') : null;
  const status = statusLine ? Number(/^HTTP\/\d\.\d (\d{3})/.exec(statusLine)?.[1] ?? Number.NaN) : null;
  const headEnd = data.indexOf('\r\n\r\n');
  if (headEnd < 0) return { statusLine, status, head: data.toString('latin1'), body: Buffer.alloc(0), headDone: false };
  return { statusLine, status, head: data.subarray(0, headEnd).toString('latin1'), body: data.subarray(headEnd + 4), headDone: true };
}

/** The payload of a chunked body (or the bytes as they are when they are not well-formed chunks). */
function dechunk(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', at);
    if (lineEnd < 0) return body;
    const size = Number.parseInt(body.subarray(at, lineEnd).toString('latin1'), 16);
    if (!Number.isFinite(size)) return body;
    if (size === 0) return Buffer.concat(parts);
    parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
    at = lineEnd + 2 + size + 2;
  }
}

function answerComplete(data: Buffer, method: string): boolean {
  const { status, head, body, headDone } = parseAnswer(data);
  if (!headDone || status === null) return false;
  if (status === 101 || status === 204 || status === 304 || method === 'HEAD') return true;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length) return body.length >= Number(length[1]);
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head))
    return body.includes('0\r\n\r\n') && /(^|\r\n)0\r\n\r\n$/.test(body.toString('latin1'));
  return false;
}

/** One raw exchange on its own TCP connection to the child. Never rejects. */
function exchange(port: number, request: Buffer, plan: Plan = {}): Promise<Outcome> {
  const method = request.subarray(0, Math.max(0, request.indexOf(' '))).toString('latin1');
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = Buffer.alloc(0);
    let error: string | null = null;
    let done = false;
    let reset = false;
    const finish = (timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const answer = parseAnswer(data);
      const chunked = /\r\ntransfer-encoding:\s*chunked/i.test(answer.head);
      resolve({
        statusLine: answer.statusLine,
        status: answer.status,
        head: answer.head,
        body: (chunked ? dechunk(answer.body) : answer.body).toString('utf8'),
        timedOut,
        error,
      });
      if (!socket.destroyed) {
        if (timedOut) socket.destroy();
        else {
          socket.end();
          setTimeout(() => socket.destroy(), 200).unref();
        }
      }
    };
    const doReset = () => {
      if (reset || socket.destroyed) return;
      reset = true;
      socket.resetAndDestroy();
    };
    const timer = setTimeout(() => finish(true), plan.timeoutMs ?? 1000);
    socket.on('error', (err) => {
      error = (err as NodeJS.ErrnoException).code ?? err.message;
    });
    socket.on('close', () => finish(false));
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      if (plan.resetOnAnswer) return doReset();
      if (plan.until === 'status' && data.includes('\r\n')) return finish(false);
      if (plan.resetAtByte === undefined && plan.resetAfterMs === undefined && answerComplete(data, method)) finish(false);
    });
    socket.once('connect', () => {
      if (plan.resetOnConnect) return doReset();
      if (plan.resetAtByte !== undefined) {
        const part = request.subarray(0, plan.resetAtByte);
        // Let the bytes reach the server before the reset.
        if (part.length === 0) return doReset();
        socket.write(part, () => setTimeout(doReset, 2));
        return;
      }
      socket.write(request);
      if (plan.resetAfterMs !== undefined) setTimeout(doReset, plan.resetAfterMs);
    });
  });
}

type HeaderList = Array<[string, string]>;

function rawRequest(method: string, target: string, headers: HeaderList, body: Buffer | string = '', version = 'HTTP/1.1'): Buffer {
  const head = `${method} ${target} ${version}\r\n${headers.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), Buffer.isBuffer(body) ? body : Buffer.from(body)]);
}

type UpgradeOverrides = Partial<
  Record<'host' | 'upgrade' | 'connection' | 'sec-websocket-key' | 'sec-websocket-version' | 'x-user' | 'x-delay' | 'origin', string | null>
>;

/** A valid WebSocket upgrade for u1 (no authorize wait), with some headers replaced (null: left out). */
function upgrade(port: number, path: string, overrides: UpgradeOverrides = {}, method = 'GET'): Buffer {
  const defaults: Required<UpgradeOverrides> = {
    host: `127.0.0.1:${port}`,
    upgrade: 'websocket',
    connection: 'Upgrade',
    'sec-websocket-key': VALID_KEY,
    'sec-websocket-version': '13',
    'x-user': 'u1',
    'x-delay': '0',
    origin: null,
  };
  const headers: HeaderList = [];
  for (const [name, value] of Object.entries({ ...defaults, ...overrides })) if (value !== null) headers.push([name, value]);
  return rawRequest(method, path, headers);
}

const PUSH_BODY = JSON.stringify({
  client_id: 'hostile',
  changes: [{ mutation_id: 1, action: 'create', id: 'h1', data: { title: 'hostile', done: false } }],
});

/** Open a WebSocket for `user` and keep it open (to fill the per-user connection limit). */
function holdSocket(port: number, user: string): Promise<net.Socket | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(null);
    }, 2000);
    socket.on('error', () => {});
    socket.once('data', (chunk: Buffer) => {
      clearTimeout(timer);
      if (chunk.toString('latin1').startsWith('HTTP/1.1 101')) resolve(socket);
      else {
        socket.destroy();
        resolve(null);
      }
    });
    socket.once('connect', () => socket.write(upgrade(port, '/api/sync/ws', { 'x-user': user })));
  });
}

// ---------------------------------------------------------------------------
// Phases: every case is recorded, then the phase checks the server is healthy

class Phase {
  readonly problems: string[] = [];
  readonly crashes: Crash[] = [];

  constructor(
    readonly target: Target,
    readonly name: string,
  ) {}

  fail(label: string, message: string): void {
    this.problems.push(`${label}: ${message}`);
  }

  /**
   * After a case: returns true when it killed the child (recorded, and a fresh child started).
   * `delayMs` must exceed the longest authorize wait (x-delay) the case asked for.
   */
  async settle(label: string, delayMs = 10): Promise<boolean> {
    const crash = await this.target.settle(label, delayMs);
    if (!crash) {
      this.checkLogs(label);
      return false;
    }
    this.crashes.push(crash);
    return true;
  }

  /** Error records the engine logged since the last check are blamed on `label`. */
  checkLogs(label: string): void {
    const { child } = this.target;
    const logged = [...new Set(child.errorLogs(child.loggedUpTo).map((line) => line.split('\n').slice(0, 3).join('\n')))];
    child.loggedUpTo = child.stderr.length;
    if (logged.length > 0) this.fail(label, `engine logged an internal error:\n${indent(logged.slice(0, 3).join('\n'))}`);
  }

  expect4xx(label: string, outcome: Outcome): void {
    if (outcome.status !== null && outcome.status >= 400 && outcome.status < 500) return;
    this.fail(label, describeOutcome(outcome, 'a 4xx'));
  }

  /** Alive, pulls and opens sockets normally, no crash output on stderr; then fail with everything recorded. */
  async finish(): Promise<void> {
    await this.settle(`${this.name}: after the last case`, 50);
    const { child, port } = this.target;
    const pull = await healthyPull(port);
    if (pull) this.fail('health check after the phase', pull);
    for (const path of ['/api/sync/ws', '/api/field-sync/ws']) {
      const outcome = await exchange(port, upgrade(port, path), { until: 'status', timeoutMs: 2000 });
      if (outcome.status !== 101) this.fail(`health check after the phase: upgrade ${path} for u1`, describeOutcome(outcome, '101'));
    }
    if (!child.alive) await this.settle(`${this.name}: health check`, 0);
    const fresh = this.target.child;
    const crashText = fresh.crashOutput(fresh.checkedUpTo);
    if (CRASH_TEXT.test(crashText)) this.fail('child stderr', `crash output:\n${indent(crashText.slice(0, 3000))}`);
    this.checkLogs('health check after the phase');
    fresh.checkedUpTo = fresh.stderr.length;

    const report: string[] = [];
    if (this.crashes.length > 0) {
      const bySignature = new Map<string, Crash[]>();
      for (const crash of this.crashes) bySignature.set(crash.signature, [...(bySignature.get(crash.signature) ?? []), crash]);
      report.push(`${this.crashes.length} case(s) crashed the server process (${bySignature.size} distinct crash(es)):`);
      for (const [signature, crashes] of bySignature) {
        report.push(`  CRASH ${signature}`);
        for (const crash of crashes.slice(0, 30)) report.push(`    by: ${crash.label} [${crash.exit}]`);
        if (crashes.length > 30) report.push(`    ... and ${crashes.length - 30} more`);
        report.push(`    stderr:\n${indent(crashes[0]!.stderr.split('\n').slice(0, 30).join('\n'), 6)}`);
      }
    }
    if (this.problems.length > 0) {
      report.push(`${this.problems.length} wrong answer(s):`);
      for (const problem of this.problems) report.push(`  ${problem}`);
    }
    if (report.length > 0) {
      const message = `[${this.target.mode}] ${this.name} (fuzz seed ${SEED}):\n${report.join('\n')}`;
      assert.fail(message);
    }
  }
}

function indent(text: string, by = 4): string {
  return text
    .split('\n')
    .map((line) => `${' '.repeat(by)}${line}`)
    .join('\n');
}

function describeOutcome(outcome: Outcome, wanted: string): string {
  if (outcome.statusLine) return `wanted ${wanted}, got ${JSON.stringify(outcome.statusLine)}`;
  if (outcome.timedOut) return `wanted ${wanted}, got no answer (socket left open)`;
  return `wanted ${wanted}, got no answer (connection closed${outcome.error ? `, ${outcome.error}` : ''})`;
}

async function healthyPull(port: number): Promise<string | null> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/api/sync/todos?since=0`, {
      headers: { 'x-user': 'u1', 'x-delay': '0' },
      signal: AbortSignal.timeout(5000),
    });
    const text = await response.text();
    if (response.status !== 200) return `pull answered ${response.status}: ${text.slice(0, 200)}`;
    JSON.parse(text);
    return null;
  } catch (error) {
    return `pull failed: ${(error as Error).message}`;
  }
}

// ---------------------------------------------------------------------------
// Seeded fuzzer

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  int(below: number): number {
    return Math.floor(this.next() * below);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  /** A value from the list, or null (left out) with probability `omit`. */
  maybe<T>(omit: number, items: readonly T[]): T | null {
    return this.chance(omit) ? null : this.pick(items);
  }
  bytes(length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) out[i] = this.int(256);
    return out;
  }
}

/** `{own}` in a header value becomes the child's `127.0.0.1:<port>` when sent. */
const OWN = '{own}';

interface FuzzCase {
  index: number;
  method: string;
  target: string;
  version: string;
  headers: HeaderList;
  body: Buffer;
  reset: { kind: 'none' } | { kind: 'byte'; fraction: number } | { kind: 'delay'; ms: number };
}

const FUZZ_METHODS = [
  'GET',
  'GET',
  'GET',
  'GET',
  'POST',
  'POST',
  'POST',
  'PUT',
  'DELETE',
  'PATCH',
  'HEAD',
  'OPTIONS',
  'TRACE',
  'PROPFIND',
  'FOO',
];
const FUZZ_PATHS = [
  '/api/sync/todos',
  '/api/sync/todos',
  '/api/sync/events',
  '/api/sync/ws',
  '/api/sync/ws',
  '/api/sync/ws',
  '/api/field-sync/ws',
  '/api/field-sync/ws',
  '/api/field-sync/todos',
  '/api/field-sync/todos/h1/latest',
  '/api/sync/schema',
  '/api/sync/client.js',
  '/api/sync/field-client.js',
  '/api/sync/sw.js',
  '/api/sync',
  '/api/sync/',
  '/api/field-sync',
  '/api/sync/nope',
  '/api/sync/%zz',
  '/api/sync/%E2%82',
  '/api/sync/__proto__',
  '/api/sync/todos/extra',
  '/api/sync/ws/',
  '//api/sync/ws',
  '/api/sync/../sync/ws',
  `/api/sync/${'a'.repeat(3000)}`,
  '/nope',
  '/',
  '*',
  'http://evil.example/api/sync/ws',
];
const FUZZ_QUERIES = [
  '',
  '',
  '',
  '?since=0',
  '?since=-1',
  '?since=abc',
  '?since=1e309',
  '?limit=0',
  '?limit=99999999',
  '?entities=todos,nope',
  '?entities=',
  '?snapshot=%zz',
  '?lastEventId=x',
  '?%zz',
  '?since=0&since=1',
];
const FUZZ_HOSTS = [
  OWN,
  OWN,
  OWN,
  'localhost',
  'x:99999',
  'a b',
  '[',
  '',
  '[::1]:1',
  'a/b',
  'a?b',
  'a#b',
  '%zz',
  '\u00e9vil',
  '127.0.0.1:0',
  ':80',
  'user@host',
  'x'.repeat(300),
];
const FUZZ_USERS = ['u1', 'u1', 'u2', 'none', 'forbidden', '', '__proto__', 'x'.repeat(200), 'fz1', 'fz2'];
const VALID_PUSH = Buffer.from(PUSH_BODY);

function fuzzCase(rng: Rng, index: number): FuzzCase {
  const method = rng.pick(FUZZ_METHODS);
  const target = rng.pick(FUZZ_PATHS) + rng.pick(FUZZ_QUERIES);
  const version = rng.chance(0.9) ? 'HTTP/1.1' : rng.pick(['HTTP/1.0', 'HTTP/2.0', 'HTTP/1.x']);
  const headers: HeaderList = [];
  const add = (name: string, value: string | null) => {
    if (value !== null) headers.push([name, value]);
  };
  add('Host', rng.maybe(0.08, FUZZ_HOSTS));
  if (rng.chance(0.05)) add('Host', rng.pick(FUZZ_HOSTS));
  const wantsUpgrade = rng.chance(0.6);
  add(
    'Upgrade',
    wantsUpgrade ? rng.pick(['websocket', 'websocket', 'WebSocket', 'websocket, h2c', 'h2c', 'foo', '']) : rng.maybe(0.9, ['websocket']),
  );
  add(
    'Connection',
    wantsUpgrade
      ? rng.pick(['Upgrade', 'Upgrade', 'upgrade', 'keep-alive, Upgrade', 'close', 'Upgrade, close', 'garbage'])
      : rng.maybe(0.5, ['keep-alive', 'close', 'Upgrade']),
  );
  add('Sec-WebSocket-Key', rng.maybe(0.2, [VALID_KEY, VALID_KEY, 'abc', '', '!!!!!!!!!!!!!!!!!!!!!!==', rng.bytes(15).toString('base64')]));
  add('Sec-WebSocket-Version', rng.maybe(0.2, ['13', '13', '8', '99', '-1', 'abc', '']));
  add(
    'Sec-WebSocket-Extensions',
    rng.maybe(0.7, [
      'permessage-deflate',
      'permessage-deflate; client_max_window_bits',
      'permessage-deflate; server_max_window_bits=99',
      'permessage-deflate; client_max_window_bits=abc',
      'x-garbage; ;;',
      '"',
    ]),
  );
  add('Sec-WebSocket-Protocol', rng.maybe(0.85, ['chat', '', ',,,', 'a b']));
  add('Origin', rng.maybe(0.6, [`http://${OWN}`, 'null', 'http://evil.example', 'garbage', 'http://[', '']));
  add('Sec-Fetch-Site', rng.maybe(0.7, ['same-origin', 'cross-site', 'none', 'same-site', 'garbage']));
  add('x-user', rng.maybe(0.15, FUZZ_USERS));
  add('x-delay', rng.maybe(0.3, ['0', '0', '20', '50', '80']));
  add(
    'Content-Type',
    rng.maybe(0.5, ['application/json', 'text/plain', 'application/json; charset=utf-16', 'multipart/form-data; boundary=x']),
  );
  add('Accept-Encoding', rng.maybe(0.7, ['gzip', 'gzip, deflate, br', 'identity;q=0']));
  add('Last-Event-ID', rng.maybe(0.9, ['5', '-1', 'abc', '1e309']));
  add('Expect', rng.maybe(0.95, ['100-continue']));

  let body: Buffer;
  switch (rng.int(8)) {
    case 0:
    case 1:
      body = Buffer.alloc(0);
      break;
    case 2:
      body = VALID_PUSH;
      break;
    case 3:
      body = VALID_PUSH.subarray(0, 1 + rng.int(VALID_PUSH.length - 1));
      break;
    case 4:
      body = rng.bytes(rng.int(200));
      break;
    case 5:
      body = Buffer.from('['.repeat(100 + rng.int(200)));
      break;
    case 6:
      body = Buffer.from(`{"changes":[{"mutation_id":1,"action":"create","id":"x","data":{"title":"${'x'.repeat(20_000)}"}}]}`);
      break;
    default:
      body = Buffer.from(rng.pick(['{}', 'null', '{"changes":null}', '{"changes":[null]}', '{"__proto__":{"x":1}}']));
  }
  switch (rng.int(8)) {
    case 0:
      break; // no Content-Length
    case 1:
      add('Content-Length', String(Math.max(0, body.length - 1 - rng.int(10))));
      break;
    case 2:
      add('Content-Length', String(body.length + 1 + rng.int(100)));
      break;
    case 3:
      add('Content-Length', rng.pick(['-1', 'abc', '1e3', '', '99999999999999999999']));
      break;
    case 4:
      add('Content-Length', String(body.length));
      add('Content-Length', String(body.length + 1));
      break;
    case 5:
      add('Transfer-Encoding', 'chunked');
      if (rng.chance(0.5)) body = Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]);
      break;
    default:
      add('Content-Length', String(body.length));
  }
  if (rng.chance(0.04)) headers.splice(rng.int(headers.length + 1), 0, [rng.pick(['X-Bad\u0001', 'No Colon', '']), 'v']);
  for (let i = headers.length - 1; i > 0 && rng.chance(0.3); i--) {
    const j = rng.int(i + 1);
    [headers[i], headers[j]] = [headers[j]!, headers[i]!];
  }
  const roll = rng.float();
  const reset: FuzzCase['reset'] =
    roll < 0.4 ? { kind: 'none' } : roll < 0.7 ? { kind: 'byte', fraction: rng.float() } : { kind: 'delay', ms: rng.int(81) };
  return { index, method, target, version, headers, body, reset };
}

function renderFuzz(fuzz: FuzzCase, port: number): Buffer {
  const own = `127.0.0.1:${port}`;
  return rawRequest(
    fuzz.method,
    fuzz.target,
    fuzz.headers.map(([name, value]) => [name, value.replaceAll(OWN, own)]),
    fuzz.body,
    fuzz.version,
  );
}

function describeFuzz(fuzz: FuzzCase): string {
  const headers = fuzz.headers
    .map(([name, value]) => `${name}=${JSON.stringify(value.length > 24 ? `${value.slice(0, 24)}…` : value)}`)
    .join(' ');
  const reset =
    fuzz.reset.kind === 'none'
      ? 'no reset'
      : fuzz.reset.kind === 'byte'
        ? `reset at ${Math.round(fuzz.reset.fraction * 100)}% of the request`
        : `reset ${fuzz.reset.ms} ms after sending`;
  const target = fuzz.target.length > 60 ? `${fuzz.target.slice(0, 60)}…` : fuzz.target;
  return `fuzz #${fuzz.index} ${fuzz.method} ${target} ${fuzz.version} [${headers}] body=${fuzz.body.length}B, ${reset}`;
}

function runFuzz(fuzz: FuzzCase, port: number, timeoutMs: number): Promise<Outcome> {
  const request = renderFuzz(fuzz, port);
  const plan: Plan = { timeoutMs };
  if (fuzz.reset.kind === 'byte') plan.resetAtByte = Math.floor(fuzz.reset.fraction * request.length);
  if (fuzz.reset.kind === 'delay') plan.resetAfterMs = fuzz.reset.ms;
  return exchange(port, request, plan);
}

const plainHeaders: HeaderList = [
  ['x-user', 'u1'],
  ['x-delay', '0'],
  ['connection', 'close'],
];

/** A Host header; NUL means "no Host header at all". */
function hostHeader(host: string): HeaderList {
  return host === '\u0000' ? [] : [['host', host]];
}

// ---------------------------------------------------------------------------

/** The whole file stays well under a minute however many cases crash the server: the fuzzers stop early. */
const SUITE_DEADLINE = Date.now() + 46_000;
const MODES: Array<{ mode: Mode; fuzzCount: number; fuzzBudgetMs: number; reserveMs: number }> = [
  // `reserveMs`: time left over for what runs after this fuzzer (the anonymous suite).
  { mode: 'auth', fuzzCount: FUZZ_COUNT, fuzzBudgetMs: 14_000, reserveMs: 14_000 },
  { mode: 'anonymous', fuzzCount: Math.ceil(FUZZ_COUNT / 2), fuzzBudgetMs: 8_000, reserveMs: 1_000 },
];

for (const { mode, fuzzCount, fuzzBudgetMs, reserveMs } of MODES) {
  describe(`hostile raw requests never crash the server [${mode}]`, () => {
    const target = new Target(mode);
    before(() => target.start());
    after(() => target.stop());

    test('malformed WebSocket upgrades get a 4xx answer', async () => {
      const phase = new Phase(target, 'malformed upgrades');
      const paths = ['/api/sync/ws', '/api/field-sync/ws', `/api/sync/r${mulberry32(SEED)().toString(36).slice(2, 8)}`, '/nope'];
      const variants: Array<[string, UpgradeOverrides]> = [
        ['Host "x:99999"', { host: 'x:99999' }],
        ['Host "a b"', { host: 'a b' }],
        ['Host "["', { host: '[' }],
        ['empty Host', { host: '' }],
        ['no Host', { host: null }],
        ['no Upgrade header', { upgrade: null }],
        ['Upgrade "h2c"', { upgrade: 'h2c' }],
        ['Upgrade "foo"', { upgrade: 'foo' }],
        ['no Sec-WebSocket-Key', { 'sec-websocket-key': null }],
        ['Sec-WebSocket-Key "abc"', { 'sec-websocket-key': 'abc' }],
        ['Sec-WebSocket-Version 99', { 'sec-websocket-version': '99' }],
        ['no Sec-WebSocket-Version', { 'sec-websocket-version': null }],
      ];
      for (const path of paths) {
        for (const [what, overrides] of variants) {
          const label = `upgrade ${path} with ${what}`;
          const outcome = await exchange(target.port, upgrade(target.port, path, overrides), { until: 'status', timeoutMs: 250 });
          if (await phase.settle(label)) continue;
          phase.expect4xx(label, outcome);
        }
      }
      await phase.finish();
    });

    test('a TCP reset at every moment of an upgrade', async () => {
      const phase = new Phase(target, 'resets during upgrades');
      const run = async (label: string, build: (port: number) => Buffer, plan: Plan, expectStatus?: number, waitMs = 80) => {
        const outcome = await exchange(target.port, build(target.port), { timeoutMs: 1000, ...plan });
        if (await phase.settle(label, waitMs)) return;
        if (expectStatus !== undefined && outcome.status !== expectStatus)
          phase.fail(label, describeOutcome(outcome, String(expectStatus)));
      };
      for (const path of ['/api/sync/ws', '/api/field-sync/ws']) {
        const slow = (port: number) => upgrade(port, path, { 'x-delay': '50' });
        await run(`${path}: reset right after connect`, slow, { resetOnConnect: true });
        await run(`${path}: reset after a partial request line`, slow, { resetAtByte: 11 });
        await run(`${path}: reset after partial headers`, slow, { resetAtByte: 60 });
        await run(`${path}: reset right after the full headers`, slow, { resetAfterMs: 0 });
        await run(`${path}: reset after the headers, while authorize runs`, slow, { resetAfterMs: 15 });
        await run(`${path}: reset right after the 101 answer`, (port) => upgrade(port, path), { resetOnAnswer: true }, 101);
        await run(
          `${path}: reset right after a 400 (bad version)`,
          (port) => upgrade(port, path, { 'sec-websocket-version': '99' }),
          { resetOnAnswer: true },
          400,
        );
        await run(
          `${path}: reset right after a 403 (cross-site Origin)`,
          (port) => upgrade(port, path, { origin: 'http://evil.example' }),
          { resetOnAnswer: true },
          403,
        );
        if (mode === 'auth') {
          await run(`${path}: reset right after a 401`, (port) => upgrade(port, path, { 'x-user': 'none' }), { resetOnAnswer: true }, 401);
          await run(
            `${path}: reset right after a 403`,
            (port) => upgrade(port, path, { 'x-user': 'forbidden' }),
            { resetOnAnswer: true },
            403,
          );
        }
      }
      await run('/api/sync/nope: reset right after a 404', (port) => upgrade(port, '/api/sync/nope'), { resetOnAnswer: true }, 404);
      // Upgrades for paths that are not the engine's: nobody answers them, a reset must still be harmless.
      for (const path of ['/nope', '//api/sync/ws', 'http://evil.example/api/sync/ws']) {
        await run(`${path}: reset right after the full headers`, (port) => upgrade(port, path), { resetAfterMs: 0 });
        await run(`${path}: reset 15 ms after the full headers`, (port) => upgrade(port, path), { resetAfterMs: 15 });
      }

      if (mode === 'auth') {
        // 429: fill the per-user connection limit (32), then reset right after the refusal.
        for (const path of ['/api/sync/ws', '/api/field-sync/ws']) {
          const held = await Promise.all(Array.from({ length: 32 }, () => holdSocket(target.port, 'full')));
          if (held.some((socket) => socket === null)) phase.fail(`${path}: 429 setup`, 'could not open 32 sockets for user "full"');
          else
            await run(
              `${path}: reset right after a 429`,
              (port) => upgrade(port, path, { 'x-user': 'full' }),
              { resetOnAnswer: true },
              429,
            );
          for (const socket of held) socket?.destroy();
          await sleep(30);
        }

        // A refused handshake must give its connection slot back.
        let crashed = false;
        for (let i = 0; i < 33 && !crashed; i++) {
          await exchange(target.port, upgrade(target.port, '/api/sync/ws', { 'x-user': 'leak400', 'sec-websocket-version': '99' }), {
            until: 'status',
            timeoutMs: 1000,
          });
          crashed = await phase.settle('33 upgrades refused with 400 for one user', 0);
        }
        if (!crashed) {
          await sleep(50);
          const outcome = await exchange(target.port, upgrade(target.port, '/api/sync/ws', { 'x-user': 'leak400' }), { until: 'status' });
          if (outcome.status !== 101) {
            phase.fail(
              'after 33 upgrades refused with 400 (bad Sec-WebSocket-Version) for one user',
              describeOutcome(outcome, '101 (no slot leak)'),
            );
          }
        }
        // A client that resets while authorize runs must not hold a slot either.
        await Promise.all(
          Array.from({ length: 33 }, () =>
            exchange(target.port, upgrade(target.port, '/api/sync/ws', { 'x-user': 'leakreset', 'x-delay': '30' }), { resetAfterMs: 5 }),
          ),
        );
        if (!(await phase.settle('33 upgrades of one user reset while authorize runs', 120))) {
          const outcome = await exchange(target.port, upgrade(target.port, '/api/sync/ws', { 'x-user': 'leakreset' }), { until: 'status' });
          if (outcome.status !== 101) {
            phase.fail('after 33 upgrades of one user reset while authorize ran', describeOutcome(outcome, '101 (no slot leak)'));
          }
        }
      }
      await phase.finish();
    });

    test('plain HTTP with a malformed Host is a 400 without a stack trace', async () => {
      const phase = new Phase(target, 'malformed Host on plain HTTP');
      const requests: Array<[string, (host: string) => Buffer]> = [
        ['GET /api/sync/todos?since=0', (host) => rawRequest('GET', '/api/sync/todos?since=0', [...hostHeader(host), ...plainHeaders])],
        [
          'POST /api/sync/todos',
          (host) =>
            rawRequest(
              'POST',
              '/api/sync/todos',
              [
                ...hostHeader(host),
                ...plainHeaders,
                ['content-type', 'application/json'],
                ['content-length', String(Buffer.byteLength(PUSH_BODY))],
              ],
              PUSH_BODY,
            ),
        ],
        [
          'GET /api/field-sync/todos?since=0',
          (host) => rawRequest('GET', '/api/field-sync/todos?since=0', [...hostHeader(host), ...plainHeaders]),
        ],
        ['GET /api/sync/schema', (host) => rawRequest('GET', '/api/sync/schema', [...hostHeader(host), ...plainHeaders])],
      ];
      for (const host of ['x:99999', 'a b', '[']) {
        for (const [what, build] of requests) {
          const label = `${what} with Host ${JSON.stringify(host)}`;
          const outcome = await exchange(target.port, build(host), { timeoutMs: 2000 });
          if (await phase.settle(label)) continue;
          if (outcome.status !== 400)
            phase.fail(label, `${describeOutcome(outcome, '400')} body ${JSON.stringify(outcome.body.slice(0, 120))}`);
          if (STACK_TEXT.test(outcome.body)) phase.fail(label, `stack trace in the body: ${JSON.stringify(outcome.body.slice(0, 300))}`);
        }
      }
      for (const host of ['', null]) {
        for (const [what, build] of requests) {
          const label = `${what} with ${host === null ? 'no Host' : 'an empty Host'}`;
          const outcome = await exchange(target.port, host === null ? build('\u0000') : build(host), { timeoutMs: 2000 });
          if (await phase.settle(label)) continue;
          // Node itself accepts these (and answers 400 to a missing Host): any answer but a 5xx.
          if (outcome.status === null || outcome.status >= 500) phase.fail(label, describeOutcome(outcome, 'a non-5xx answer'));
          if (STACK_TEXT.test(outcome.body)) phase.fail(label, `stack trace in the body: ${JSON.stringify(outcome.body.slice(0, 300))}`);
        }
      }
      await phase.finish();
    });

    test('a TCP reset in the middle of an HTTP request is neither a crash nor an internal error', async () => {
      const phase = new Phase(target, 'resets during HTTP requests');
      for (const path of ['/api/sync/todos', '/api/field-sync/todos']) {
        const push = (port: number) =>
          rawRequest(
            'POST',
            path,
            [
              ['host', `127.0.0.1:${port}`],
              ['x-user', 'u1'],
              ['x-delay', '0'],
              ['content-type', 'application/json'],
              ['content-length', '1000'],
            ],
            '{"changes":[',
          );
        for (const afterMs of [0, 20]) {
          const label = `POST ${path}: Content-Length 1000, 12 bytes of body, reset ${afterMs} ms later`;
          await exchange(target.port, push(target.port), { resetAfterMs: afterMs });
          await phase.settle(label, 60);
        }
        const label = `POST ${path}: reset halfway through the headers`;
        const request = push(target.port);
        await exchange(target.port, request, { resetAtByte: Math.floor(request.indexOf('\r\n\r\n') / 2) });
        await phase.settle(label, 60);
      }
      const events = (port: number) =>
        rawRequest('GET', '/api/sync/events?since=0', [
          ['host', `127.0.0.1:${port}`],
          ['x-user', 'u1'],
          ['x-delay', '0'],
        ]);
      await exchange(target.port, events(target.port), { resetOnAnswer: true });
      await phase.settle('GET /api/sync/events: reset as soon as the stream opens', 60);
      await exchange(target.port, events(target.port), { resetAfterMs: 0 });
      await phase.settle('GET /api/sync/events: reset right after the request', 60);
      await phase.finish();
    });

    test(`seeded random raw requests (seed ${SEED}, up to ${fuzzCount})`, async () => {
      const phase = new Phase(target, 'seeded fuzzer');
      const rng = new Rng(SEED ^ (mode === 'auth' ? 0 : 0x9e3779b9));
      const cases = Array.from({ length: fuzzCount }, (_, index) => fuzzCase(rng, index));
      const started = Date.now();
      const BATCH = 10;
      let replays = 0;
      let sent = 0;
      for (let start = 0; start < cases.length; start += BATCH) {
        if (Date.now() - started > fuzzBudgetMs || Date.now() > SUITE_DEADLINE - reserveMs) {
          console.log(`[${mode}] fuzzer: time budget spent after ${sent} of ${cases.length} requests (seed ${SEED})`);
          break;
        }
        const batch = cases.slice(start, start + BATCH);
        const port = target.port;
        const outcomes = await Promise.all(batch.map((fuzz) => runFuzz(fuzz, port, 300)));
        sent += batch.length;
        const crash = await target.settle(`fuzz batch #${start}..#${start + batch.length - 1}`, 100);
        if (!crash) {
          phase.checkLogs(`fuzz batch #${start}..#${start + batch.length - 1}`);
          outcomes.forEach((outcome, i) => {
            if (outcome.status !== null && outcome.status >= 500)
              phase.fail(describeFuzz(batch[i]!), `answered ${JSON.stringify(outcome.statusLine)}`);
          });
          continue;
        }
        // Find which request(s) of the batch kill the server, one at a time (bounded).
        if (replays >= 4) {
          phase.crashes.push({ ...crash, label: `${crash.label} (not replayed): ${batch.map(describeFuzz).join(' | ')}` });
          continue;
        }
        replays++;
        let found = false;
        for (const fuzz of batch) {
          await runFuzz(fuzz, target.port, 150);
          if (await phase.settle(describeFuzz(fuzz), 100)) found = true;
        }
        if (!found)
          phase.crashes.push({
            ...crash,
            label: `${crash.label} (no single request reproduces it): ${batch.map(describeFuzz).join(' | ')}`,
          });
      }
      await phase.finish();
    });
  });
}
