/**
 * Script-tag bootstrap: `<script src="/api/sync/client.js" data-sync-entities="todos">`
 * creates `window.rhtmxSync`.
 *
 * `document.currentScript` is read at load time: it is only set while this
 * script runs (plain `<script>` in `<head>`, `defer` and `async` alike) and is
 * null afterwards, which broke the seed's client when read later.
 */
import { createSyncClient, type SyncClient } from './sync-client.js';

declare global {
  interface Window {
    rhtmxSync: SyncClient;
  }
}

const script = (document.currentScript ?? document.querySelector('script[data-sync-entities]')) as HTMLScriptElement | null;
const attribute = (name: string) => script?.getAttribute(`data-${name}`);

// The script included twice must not start a second client.
window.rhtmxSync ??= createSyncClient({
  // …/api/sync/client.js?v=1 → …/api/sync
  baseUrl: script?.src ? script.src.replace(/\/[^/]*$/, '') : `${location.origin}/api/sync`,
  entities: (attribute('sync-entities') ?? '')
    .split(',')
    .map((entity) => entity.trim())
    .filter(Boolean),
  conflictStrategy: attribute('conflict-strategy') ?? undefined,
  useWebSocket: attribute('use-websocket') !== 'false',
  debug: attribute('debug') === 'true',
  serviceWorker: attribute('service-worker') === 'true',
});
