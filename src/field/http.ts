/**
 * Field-level HTTP routes under `/api/field-sync`, as a Web-standard handler:
 *
 * - `GET  /api/field-sync/:entity?since=V&limit=N` — field changes (or a snapshot for `since=0`)
 * - `POST /api/field-sync/:entity` — push field changes
 * - `GET  /api/field-sync/:entity/:entity_id/latest` — every field of one row
 *
 * Errors follow the engine's shape: `{error: {code, message}}` with a 4xx.
 */
import type { SyncLimits } from '../core/config.js';
import { SyncError, toSyncError } from '../core/errors.js';
import { ErrorCode } from '../core/protocol.js';
import { parseCursor, parseJson, parseLimit } from '../core/validation.js';
import { type Access, admit } from '../transports/gate.js';
import { errorResponse, jsonResponse, readBody, requireJson, upgradeRequired } from '../transports/http.js';
import type { FieldService } from './service.js';

export interface FieldHttpOptions extends Access {
  basePath: string;
  limits: SyncLimits;
  /** Called after every push that reached the store, so live subscribers hear of it at once. */
  onPush: () => void;
  onError?: (error: unknown) => void;
}

const notFound = (path: string) => new SyncError(ErrorCode.NotFound, `no field-sync route ${JSON.stringify(path.slice(0, 100))}`, 404);
const methodNotAllowed = (method: string, path: string) =>
  new SyncError(ErrorCode.MethodNotAllowed, `${method.slice(0, 16)} is not allowed on ${path.slice(0, 64)}`, 405);

export class FieldHttpRoutes {
  constructor(
    private readonly service: FieldService,
    private readonly options: FieldHttpOptions,
  ) {}

  /** Answer a request under the field base path; null when the path is not ours. */
  async handle(request: Request, url: URL): Promise<Response | null> {
    const base = this.options.basePath;
    if (url.pathname !== base && !url.pathname.startsWith(`${base}/`)) return null;
    try {
      return await this.route(request, url, url.pathname.slice(base.length + 1));
    } catch (error) {
      const syncError = toSyncError(error);
      if (syncError.status >= 500) this.options.onError?.(error);
      return errorResponse(syncError);
    }
  }

  private async route(request: Request, url: URL, rest: string): Promise<Response> {
    const method = request.method.toUpperCase();
    // Same gate as the entity routes: cross-site state changes are refused, and every field route is data.
    const user = await admit(request, this.options, method === 'GET' || method === 'HEAD' ? 'read' : 'write');
    if (rest === 'ws') throw upgradeRequired();
    let segments: string[];
    try {
      segments = rest.split('/').map((segment) => decodeURIComponent(segment));
    } catch {
      throw new SyncError(ErrorCode.NotFound, 'malformed path', 404);
    }
    if (segments.some((segment) => segment === '')) throw notFound(url.pathname);
    const [entity, id, tail] = segments;
    if (segments.length === 1 && entity !== undefined) {
      if (method === 'GET' || method === 'HEAD') {
        const since = parseCursor(url.searchParams.get('since'), 'since', 0);
        const limit = parseLimit(url.searchParams.get('limit'), this.options.limits);
        const page = await this.service.pull(entity, { since, limit, snapshot: url.searchParams.get('snapshot') });
        return jsonResponse(request, page);
      }
      if (method === 'POST') {
        this.service.target(entity); // unknown entity: 404 before reading the body
        requireJson(request);
        const body = parseJson(await readBody(request, this.options.limits.maxBodyBytes), this.options.limits);
        const response = await this.service.push(entity, body, user);
        this.options.onPush();
        return jsonResponse(request, response);
      }
      throw methodNotAllowed(method, entity);
    }
    if (segments.length === 3 && entity !== undefined && tail === 'latest') {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, 'latest');
      const latest = await this.service.latest(entity, id);
      if (!latest) throw new SyncError(ErrorCode.NotFound, `${entity} ${JSON.stringify(String(id).slice(0, 64))} does not exist`, 404);
      return jsonResponse(request, latest);
    }
    throw notFound(url.pathname);
  }
}
