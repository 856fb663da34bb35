import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { prometheusMetrics } from '../src/adapters/prometheus.js';
import type { SyncLogger } from '../src/core/config.js';
import { SyncEngine } from '../src/engine.js';
import { postJson, SseClient, startServer, type TestServer, tempDb, WsClient, waitFor } from './helpers.js';

// A real OpenTelemetry SDK with an in-memory exporter: spans the engine makes end up here.
const exporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));

describe('metrics, Prometheus, tracing and logging', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  test('engine.metrics() counts connections, push outcomes, fan-out and log size', async () => {
    const ws = await WsClient.connect(server.wsUrl);
    await ws.request({ type: 'subscribe', entities: ['todos'] });
    const sse = new SseClient(`${server.url}/api/sync/events`);
    await waitFor(() => sse.status === 200);
    await postJson(`${server.url}/api/sync/todos`, {
      client_id: 'm1',
      changes: [
        { mutation_id: 1, id: 'm1', action: 'create', data: { title: 'a', done: false } },
        { mutation_id: 2, id: 'm2', action: 'create', data: { title: null, done: false } },
      ],
    });
    await postJson(`${server.url}/api/sync/todos`, {
      client_id: 'm1',
      changes: [{ mutation_id: 1, id: 'm1', action: 'create', data: { title: 'a', done: false } }],
    });
    await waitFor(() => ws.changes().length >= 1 && sse.changes().length >= 1);
    const metrics = await waitFor(async () => {
      const current = await server.engine.metrics();
      return current.fanout.count > 0 ? current : null;
    });
    assert.deepEqual(metrics.connections, { websocket: 1, sse: 1 });
    assert.deepEqual(metrics.pushOutcomes, { applied: 1, duplicate: 1, conflict: 0, rejected: 1 });
    assert.ok(metrics.changesFannedOut >= 1);
    assert.ok(metrics.changesPerSecond > 0);
    assert.equal(metrics.logSize, 1);
    assert.equal(metrics.latestVersion, await server.engine.currentVersion());
    assert.equal(metrics.lag, 0);
    ws.close();
    sse.close();
  });

  test('with nobody subscribed, writes are not fanned out; a subscriber that comes later catches up on them', async () => {
    const idle = await startServer();
    try {
      const changes = Array.from({ length: 20 }, (_, index) => ({ id: `n${index}`, action: 'create', data: { title: 'n', done: false } }));
      await postJson(`${idle.url}/api/sync/todos`, { changes });
      await idle.engine.fannedOut(await idle.engine.currentVersion());
      assert.equal((await idle.engine.metrics()).changesFannedOut, 0, 'nothing was read for nobody');
      const late = await WsClient.connect(idle.wsUrl);
      await late.request({ type: 'subscribe', entities: ['todos'], since: 0 });
      await waitFor(() => late.changes().length === 20, 5000, 'the catch-up');
      late.close();
    } finally {
      await idle.close();
    }
  });

  test('the Prometheus endpoint exposes the same figures', async () => {
    const prometheus = await prometheusMetrics(server.engine);
    // A live connection, so the write is fanned out (with nobody subscribed the hub only moves its cursor).
    const listener = await WsClient.connect(server.wsUrl);
    await listener.request({ type: 'subscribe', entities: ['todos'] });
    await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 'p1', action: 'create', data: { title: 'p', done: false } }] });
    await waitFor(async () => (await server.engine.metrics()).lag === 0 && (await server.engine.metrics()).logSize === 2);
    await server.engine.fannedOut(await server.engine.currentVersion());
    const response = await prometheus.fetch();
    assert.match(response.headers.get('content-type') ?? '', /text\/plain/);
    const text = await response.text();
    assert.match(text, /^rhtmx_connections\{transport="websocket"\} \d+$/m);
    assert.match(text, /^rhtmx_push_results_total\{outcome="applied"\} 2$/m);
    assert.match(text, /^rhtmx_log_size 2$/m);
    assert.match(text, /^rhtmx_lag_versions 0$/m);
    assert.match(text, /^rhtmx_lagged_consumers_total 0$/m);
    assert.match(text, /^rhtmx_fanout_seconds_count [1-9]\d*$/m);
    listener.close();
    prometheus.stop();
  });

  test('pull, push and fan-out run inside OpenTelemetry spans', async () => {
    exporter.reset();
    // Fan-out runs for listeners: with nobody subscribed the hub only moves its cursor.
    const listener = await WsClient.connect(server.wsUrl);
    await listener.request({ type: 'subscribe', entities: ['todos'] });
    await fetch(`${server.url}/api/sync/todos?since=0`);
    await postJson(`${server.url}/api/sync/todos`, { changes: [{ id: 't1', action: 'create', data: { title: 't', done: false } }] });
    await server.engine.fannedOut(await server.engine.currentVersion());
    const fanout = await waitFor(() => exporter.getFinishedSpans().find((span) => span.name === 'rhtmx.fanout'));
    listener.close();
    assert.equal(fanout.attributes['rhtmx.type'], 'change');
    assert.ok(Number(fanout.attributes['rhtmx.changes']) >= 1);
    const spans = exporter.getFinishedSpans();
    const pull = spans.find((span) => span.name === 'rhtmx.pull');
    const push = spans.find((span) => span.name === 'rhtmx.push');
    assert.ok(pull && push, `spans: ${spans.map((span) => span.name).join(', ')}`);
    assert.equal(pull.attributes['rhtmx.entity'], 'todos');
    assert.equal(push.attributes['rhtmx.changes'], 1);
  });

  test('a structured logger receives debug logs when debug is on, and nothing below warn otherwise', async () => {
    const lines: Array<[string, unknown, string | undefined]> = [];
    const logger: SyncLogger = {
      debug: (obj, msg) => lines.push(['debug', obj, msg]),
      info: (obj, msg) => lines.push(['info', obj, msg]),
      warn: (obj, msg) => lines.push(['warn', obj, msg]),
      error: (obj, msg) => lines.push(['error', obj, msg]),
    };
    const quiet = tempDb();
    const loud = tempDb();
    try {
      const engine = await SyncEngine.create({ db: quiet.db, entities: ['todos'], logger });
      await engine.close();
      assert.equal(lines.length, 0);
      const debugEngine = await SyncEngine.create({ db: loud.db, entities: ['todos'], logger, debug: true });
      assert.ok(lines.some(([level, obj]) => level === 'debug' && JSON.stringify(obj).includes('todos')));
      await debugEngine.close();
    } finally {
      quiet.dispose();
      loud.dispose();
    }
  });
});
