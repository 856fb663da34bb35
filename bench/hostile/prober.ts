/**
 * The normal client of the hostile benchmark, in its own process: sequential
 * HTTP pulls over one keep-alive connection, as a browser tab catching up
 * would make them (gzip accepted, body decoded and parsed), each timed from
 * the request to the parsed body on the shared monotonic clock.
 */
import http from 'node:http';
import { gunzipSync } from 'node:zlib';
import { now, sleep } from '../lib/clock.js';
import { serve } from '../lib/proc.js';

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function get(url: string): Promise<{ status: number; changes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, headers: { accept: 'application/json', 'accept-encoding': 'gzip' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        try {
          const raw = Buffer.concat(chunks);
          const text = (res.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8');
          const body = JSON.parse(text) as { changes?: unknown[] };
          resolve({ status: res.statusCode ?? 0, changes: body.changes?.length ?? -1 });
        } catch (error) {
          reject(error);
        }
      });
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error('pull timed out')));
    req.on('error', reject);
  });
}

serve({
  /**
   * `count` rounds; each round pulls every url once, in order, `gapMs` apart.
   * Returns the latencies per url (ms) and anything unexpected.
   */
  async pulls(args: { urls: string[]; count: number; gapMs: number; expect: number[] }) {
    const latencies = args.urls.map(() => [] as number[]);
    const problems: string[] = [];
    const start = now();
    for (let round = 0; round < args.count; round++) {
      for (let u = 0; u < args.urls.length; u++) {
        const sent = now();
        try {
          const { status, changes } = await get(args.urls[u] as string);
          latencies[u]?.push(now() - sent);
          if (status !== 200 || changes !== args.expect[u]) problems.push(`${args.urls[u]}: ${status}, ${changes} changes`);
        } catch (error) {
          problems.push(`${args.urls[u]}: ${(error as Error).message}`);
        }
        if (args.gapMs > 0) await sleep(args.gapMs);
      }
    }
    return { latencies, problems: problems.slice(0, 20), problemCount: problems.length, ms: now() - start };
  },
});
