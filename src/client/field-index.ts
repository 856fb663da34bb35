/**
 * Script-tag bootstrap of the original crate's field client:
 * `<script src="/api/sync/field-client.js" data-sync-entities="todos" data-field-strategy="last-write-wins">`
 * runs everything client.js does (`window.rhtmxSync`) and adds
 * `window.RHTMXFieldSync`. The field code lives only in this bundle, so
 * client.js does not grow.
 */
import { createFieldSync, type FieldSync } from './field/client.js';
import { attribute, entities, script } from './index.js';

declare global {
  interface Window {
    RHTMXFieldSync: FieldSync;
  }
}

window.RHTMXFieldSync ??= createFieldSync({
  sync: window.rhtmxSync,
  // The server's default field base path, on the script's origin, unless the page says otherwise.
  baseUrl: attribute('field-sync-url') ?? new URL('/api/field-sync', script?.src || location.href).href,
  entities,
  strategy: attribute('field-strategy') ?? undefined,
  useWebSocket: attribute('use-websocket') !== 'false',
});
