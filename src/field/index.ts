/**
 * Field-level sync (issue 5). Stub until the module lands: the engine calls
 * `createFieldSync` when `fieldSync` is configured.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FieldMergeStrategy, SyncLimits, SyncLogger } from '../core/config.js';
import type { HybridClock } from '../core/hlc.js';
import type { ChangeHub } from '../core/hub.js';
import type { Store } from '../core/store.js';
import type { SyncService } from '../core/sync-service.js';

/** What the engine hands the field-sync module. */
export interface FieldSyncDeps {
  store: Store;
  service: SyncService;
  hub: ChangeHub;
  clock: HybridClock;
  strategy: FieldMergeStrategy;
  limits: SyncLimits;
  /** `/api/field-sync` unless configured otherwise. */
  basePath: string;
  logger: SyncLogger;
}

/** The field-sync routes, mounted by the engine. */
export interface FieldSyncModule {
  /** Answer `/api/field-sync/*` HTTP requests; null for other paths. */
  handle(request: Request, url: URL): Promise<Response | null>;
  /** Take over `/api/field-sync/ws` upgrades; false for other paths. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  close(): Promise<void>;
}

export async function createFieldSync(_deps: FieldSyncDeps): Promise<FieldSyncModule> {
  return {
    async handle() {
      return null;
    },
    handleUpgrade() {
      return false;
    },
    async close() {},
  };
}
