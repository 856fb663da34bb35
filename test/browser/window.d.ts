/** Page-side globals the browser tests read through `page.evaluate`. */
import type { SyncClient } from '../../src/client/sync-client.js';

declare global {
  interface Window {
    rhtmxSync: SyncClient;
  }
}
