/**
 * Script-tag bootstrap: `<script src="/api/sync/client.js" data-sync-entities="todos">`
 * creates `window.rhtmxSync`.
 *
 * `document.currentScript` is read at load time: it is only set while this
 * script runs (plain `<script>` in `<head>`, `defer` and `async` alike) and is
 * null afterwards, which broke the original crate's client when read later.
 * `data-conflict-strategy` is accepted and not read: the server's per-entity
 * strategy decides.
 */
import { createSyncClient, type SyncClient } from './sync-client.js';

declare global {
  interface Window {
    rhtmxSync: SyncClient;
  }
}

/** The tag running this bundle (field-index.ts reads it too). */
export const script = (document.currentScript ?? document.querySelector('script[data-sync-entities]')) as HTMLScriptElement | null;
/** One of its `data-*` attributes. */
export const attribute = (name: string): string | null | undefined => script?.getAttribute(`data-${name}`);
/** `data-sync-entities`, as a list. */
export const entities = (attribute('sync-entities') ?? '')
  .split(',')
  .map((entity) => entity.trim())
  .filter(Boolean);

// The script included twice must not start a second client.
window.rhtmxSync ??= createSyncClient({
  // …/api/sync/client.js?v=1 → …/api/sync
  baseUrl: script?.src ? script.src.replace(/\/[^/]*$/, '') : `${location.origin}/api/sync`,
  entities,
  useWebSocket: attribute('use-websocket') !== 'false',
  debug: attribute('debug') === 'true',
  serviceWorker: attribute('service-worker') === 'true',
});
