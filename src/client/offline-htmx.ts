/**
 * Offline htmx: unchanged `hx-post` / `hx-put` / `hx-patch` / `hx-delete`
 * requests to a synced entity's routes become outbox mutations when the
 * browser is offline or the request fails for a network reason.
 *
 * Invariants:
 * - A request is taken over only when it maps to a change (route or
 *   `data-sync-*` attributes, entity synced by this client, schema known);
 *   anything else goes on to htmx's own error handling, never swallowed.
 * - A taken-over request never reaches the network afterwards: htmx sees it
 *   complete as `204 No Content` (no swap, no error); the change travels
 *   only through the outbox, which the server applies exactly once.
 * - Online requests are sent as usual; only a network failure (fetch's
 *   `TypeError`, XHR `error`) is taken over. Timeouts and HTTP errors are
 *   not: the server may have applied them.
 */
import type { ColumnSchema, Row, SchemaResponse } from '../core/protocol.js';
import type { LocalChange } from './queue/outbox.js';

/** Form fields as htmx carries them (DELETE puts them in the URL instead). */
type Fields = URLSearchParams | FormData | null | undefined;

const WRITES = /^(POST|PUT|PATCH|DELETE)$/;
const WORDS: Record<string, boolean> = { on: true, true: true, yes: true, 1: true, off: false, false: false, no: false, 0: false };

/** A form string as the column's type: checkbox `on` → true (1 for integers), numbers, `''` → null when nullable. */
export function coerce({ type, nullable }: ColumnSchema, value: string): unknown {
  if (type === 'text' || type === 'blob') return value;
  if (value === '') return nullable ? null : type === 'boolean' ? false : value;
  if (type === 'json') {
    try {
      return JSON.parse(value);
    } catch {
      return value;
    }
  }
  const flag: boolean | undefined = WORDS[value.toLowerCase()];
  if (type === 'boolean') return flag ?? value;
  const number = Number(value);
  return Number.isFinite(number) ? number : flag === undefined ? value : +flag;
}

/**
 * The outbox change an htmx request stands for, or null when it is not one.
 * Routes: `POST <route>` creates, `PUT|PATCH <route>/:id` updates,
 * `DELETE <route>/:id` deletes (also under `/api`); `data-sync-entity`,
 * `data-sync-action` and `data-sync-id` on the element or an ancestor
 * override, `data-sync-action="none"` opts out.
 */
export function mapRequest(
  schema: SchemaResponse,
  synced: string[],
  elt: Element | null | undefined,
  method: string,
  url: string,
  fields: Fields,
): { entity: string; change: LocalChange } | null {
  const attr = (name: string) => elt?.closest(`[data-sync-${name}]`)?.getAttribute(`data-sync-${name}`);
  const target = new URL(url, location.href);
  if (target.origin !== location.origin) return null;
  const path = target.pathname.replace(/\/$/, '');
  let entity = attr('entity');
  let id: string | undefined;
  let collection = false;
  for (const info of schema.entities) {
    for (const route of info.routes) {
      for (const prefix of [route.replace(/\/$/, ''), `/api${route}`]) {
        const rest = path.startsWith(`${prefix}/`) ? path.slice(prefix.length + 1) : null;
        if (path === prefix || (rest && !rest.includes('/'))) {
          entity ??= info.name;
          collection = path === prefix;
          id = rest ? decodeURIComponent(rest) : undefined;
        }
      }
    }
  }
  const info = schema.entities.find((candidate) => candidate.name === entity);
  if (!info || !synced.includes(info.name)) return null;
  const action = attr('action') ?? (method === 'POST' ? (collection ? 'create' : '') : method === 'DELETE' ? 'delete' : 'update');
  const data: Row = {};
  for (const [name, value] of fields ?? target.searchParams) {
    const column = info.columns.find((candidate) => candidate.name === name);
    if (typeof value !== 'string' || !column) continue;
    if (column.primaryKey) id ??= value;
    else data[name] = coerce(column, value);
  }
  id = attr('id') ?? id;
  if (!/^(create|update|delete)$/.test(action) || (action !== 'create' && id === undefined)) return null;
  return { entity: info.name, change: { id, action: action as LocalChange['action'], data: action === 'delete' ? null : data } };
}

/** Takes a request over: resolves true once its change is durable in the outbox, false when it is not ours. */
export type TakeOver = (elt: Element | null | undefined, method: string, url: string, fields: Fields) => Promise<boolean>;

/** Hook into htmx 2 (`htmx:beforeRequest`, XHR) and htmx 4 (`htmx:before:request`, `ctx.fetch`). */
export function offlineHtmx(takeOver: TakeOver): void {
  // htmx 2: the XHR is opened but not sent. Offline it is never sent; a network error is taken over after the fact.
  document.addEventListener('htmx:beforeRequest', (event) => {
    const { xhr, requestConfig: config } = (event as CustomEvent).detail;
    const method = String(config?.verb).toUpperCase();
    if (!xhr || !WRITES.test(method)) return;
    const { send, onerror } = xhr as XMLHttpRequest;
    const run = (otherwise: () => void) =>
      takeOver(config.elt, method, config.path, config.formData).then((taken) => {
        if (!taken) return otherwise();
        // Completes like a `204 No Content` answer: no swap, no error, htmx releases the element.
        Object.defineProperty(xhr, 'status', { value: 204 });
        xhr.onload();
      });
    xhr.onerror = () => run(() => onerror?.call(xhr, new ProgressEvent('error')));
    xhr.send = (body?: XMLHttpRequestBodyInit) => (navigator.onLine ? send.call(xhr, body) : run(() => send.call(xhr, body)));
  });
  // htmx 4: `ctx.fetch` is set before this event; wrapping it keeps htmx's own flow (204 → no swap).
  document.addEventListener('htmx:before:request', (event) => {
    const { ctx } = (event as CustomEvent).detail;
    const request = ctx?.request;
    if (!request || !WRITES.test(request.method)) return;
    const fetch = ctx.fetch as typeof window.fetch;
    const run = (otherwise: () => Promise<Response>) =>
      takeOver(ctx.sourceElement, request.method, request.action, request.body).then((taken) =>
        taken ? new Response(null, { status: 204 }) : otherwise(),
      );
    ctx.fetch = (url: string, init: RequestInit) =>
      navigator.onLine
        ? fetch(url, init).catch((error) => {
            if (!(error instanceof TypeError)) throw error;
            return run(() => Promise.reject(error));
          })
        : run(() => fetch(url, init));
  });
}
