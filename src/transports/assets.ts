/**
 * Serves the built browser files (`client.js`, `field-client.js`, `sw.js`)
 * with a strong ETag and a gzip copy made once, not per request.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { SyncError } from '../core/errors.js';
import { ErrorCode } from '../core/protocol.js';

/** URL name → file name in the client build folder. */
const FILES: Record<string, string> = {
  'client.js': 'rhtmx-sync.js',
  // The original crate's field-level client: everything client.js does plus window.RHTMXFieldSync.
  'field-client.js': 'rhtmx-field.js',
  'sw.js': 'rhtmx-sw.js',
};

interface Asset {
  body: Uint8Array<ArrayBuffer>;
  gzipped: Uint8Array<ArrayBuffer>;
  etag: string;
}

/** Finds dist/client whether we run from src/ (tsx) or from dist/src/ (built). */
export function defaultClientDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, '../../dist/client'), join(here, '../../client')];
  return candidates.find((dir) => existsSync(join(dir, FILES['client.js'] as string))) ?? (candidates[0] as string);
}

export class ClientAssets {
  private readonly cache = new Map<string, Asset>();

  constructor(private readonly dir: string = defaultClientDir()) {}

  private load(name: string): Asset {
    const cached = this.cache.get(name);
    if (cached) return cached;
    const file = FILES[name];
    const path = file ? join(this.dir, file) : '';
    if (!file || !existsSync(path)) {
      throw new SyncError(ErrorCode.NotFound, `${name} is not built: run \`npm run build\` in rhtmx-sync`, 404);
    }
    const body = new Uint8Array(readFileSync(path));
    const asset: Asset = {
      body,
      gzipped: new Uint8Array(gzipSync(body, { level: 9 })),
      etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`,
    };
    this.cache.set(name, asset);
    return asset;
  }

  respond(request: Request, name: string): Response {
    const asset = this.load(name);
    const headers: Record<string, string> = {
      'content-type': 'text/javascript; charset=utf-8',
      etag: asset.etag,
      // Revalidate every time: a deploy must reach clients, and a 304 is cheap.
      'cache-control': 'no-cache',
      vary: 'accept-encoding',
    };
    if (name === 'sw.js') headers['service-worker-allowed'] = '/';
    if (request.headers.get('if-none-match') === asset.etag) return new Response(null, { status: 304, headers });
    if (/\bgzip\b/.test(request.headers.get('accept-encoding') ?? '')) {
      headers['content-encoding'] = 'gzip';
      return new Response(request.method === 'HEAD' ? null : asset.gzipped, { headers });
    }
    return new Response(request.method === 'HEAD' ? null : asset.body, { headers });
  }

  /** Size of a built file, raw and gzipped (for the size budget test and the README). */
  size(name = 'client.js'): { raw: number; gzip: number } {
    const asset = this.load(name);
    return { raw: asset.body.byteLength, gzip: asset.gzipped.byteLength };
  }
}
