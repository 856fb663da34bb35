/**
 * Prometheus metrics through prom-client (an optional peer dependency).
 *
 * @example
 * ```ts
 * const metrics = await prometheusMetrics(engine);
 * // node:http: if (req.url === '/metrics') return metrics.handleNode(req, res);
 * // Hono / fetch: app.get('/metrics', (c) => metrics.fetch(c.req.raw));
 * ```
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { FANOUT_BUCKETS } from '../core/metrics.js';
import type { SyncEngine } from '../engine.js';

export interface PrometheusOptions {
  /** Register into this registry instead of a new one (e.g. prom-client's global `register`). */
  register?: Registry;
  /** Metric name prefix, default `rhtmx_`. */
  prefix?: string;
}

export interface PrometheusMetrics {
  register: Registry;
  /** Exposition text in the registry's content type. */
  fetch(request?: Request): Promise<Response>;
  handleNode(req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Stop following the engine (unregisters nothing; drop the registry to forget the metrics). */
  stop(): void;
}

export async function prometheusMetrics(engine: SyncEngine, options: PrometheusOptions = {}): Promise<PrometheusMetrics> {
  const client = await import('prom-client');
  const register = options.register ?? new client.Registry();
  const prefix = options.prefix ?? 'rhtmx_';
  // One snapshot per scrape, shared by every collector of that scrape.
  let pending: ReturnType<SyncEngine['metrics']> | null = null;
  const snapshot = () => {
    pending ??= engine.metrics().finally(() => {
      setImmediate(() => {
        pending = null;
      });
    });
    return pending;
  };
  const gauge = (name: string, help: string, read: (g: import('prom-client').Gauge) => Promise<void>, labelNames: string[] = []) =>
    new client.Gauge({
      name: `${prefix}${name}`,
      help,
      labelNames,
      registers: [register],
      async collect() {
        await read(this);
      },
    });

  gauge(
    'connections',
    'Open live connections by transport',
    async (g) => {
      const { connections } = await snapshot();
      g.set({ transport: 'websocket' }, connections.websocket);
      g.set({ transport: 'sse' }, connections.sse);
    },
    ['transport'],
  );
  gauge('changes_fanned_out_total', 'Changes handed to live connections since start', async (g) =>
    g.set((await snapshot()).changesFannedOut),
  );
  gauge('changes_per_second', 'Changes fanned out per second over the last 10 s', async (g) => g.set((await snapshot()).changesPerSecond));
  gauge(
    'push_results_total',
    'Pushed changes by outcome since start',
    async (g) => {
      for (const [outcome, count] of Object.entries((await snapshot()).pushOutcomes)) g.set({ outcome }, count);
    },
    ['outcome'],
  );
  gauge('log_size', 'Rows in the change log', async (g) => g.set((await snapshot()).logSize));
  gauge('latest_version', 'Newest change-log version in the database', async (g) => g.set((await snapshot()).latestVersion));
  gauge('lag_versions', 'Versions this node is behind the database', async (g) => g.set((await snapshot()).lag));
  gauge('lagged_consumers_total', 'Times a live connection fell behind and was caught up from the log', async (g) =>
    g.set((await snapshot()).laggedConsumers),
  );
  const fanout = new client.Histogram({
    name: `${prefix}fanout_seconds`,
    help: 'Time to hand one batch of changes to every live connection',
    buckets: [...FANOUT_BUCKETS],
    registers: [register],
  });
  const stop = await engine.onFanout((_changes, seconds) => fanout.observe(seconds));

  const text = async () => ({ body: await register.metrics(), type: register.contentType });
  return {
    register,
    async fetch() {
      const { body, type } = await text();
      return new Response(body, { headers: { 'content-type': type } });
    },
    async handleNode(_req, res) {
      const { body, type } = await text();
      res.writeHead(200, { 'content-type': type });
      res.end(body);
    },
    stop,
  };
}
