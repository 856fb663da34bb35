/**
 * FieldService: field-level pull, push and latest as plain objects; the
 * HTTP routes and the WebSocket both call these.
 */
import type { FieldMergeStrategy, SyncLimits } from '../core/config.js';
import { badRequest } from '../core/errors.js';
import type { HybridClock } from '../core/hlc.js';
import { decodeSnapshotToken, encodeSnapshotToken, type SyncService } from '../core/sync-service.js';
import { normaliseId } from '../core/validation.js';
import { decideField, type FieldPolicy } from './merge.js';
import type { FieldPullResponse, FieldPushResponse, FieldPushResult, LatestFieldsResponse } from './protocol.js';
import type { FieldOutcome, FieldStore, FieldTarget } from './store.js';
import { fieldColumns, validateFieldPush } from './validation.js';

export interface FieldPullParams {
  since: number;
  limit: number;
  /** Snapshot continuation token (`next` of the previous page). */
  snapshot?: string | null;
}

export class FieldService {
  private readonly targets = new Map<string, FieldTarget>();
  private readonly policy: FieldPolicy;

  constructor(
    readonly store: FieldStore,
    /** The entity-level service: the one place that knows the synced entities and their real columns. */
    private readonly entities: SyncService,
    clock: HybridClock,
    readonly strategy: FieldMergeStrategy,
    private readonly limits: SyncLimits,
  ) {
    this.policy = { strategy, clock };
    for (const name of entities.entityNames) {
      const { schema } = entities.entity(name);
      this.targets.set(name, { schema, fields: fieldColumns(schema.columns) });
    }
  }

  get entityNames(): string[] {
    return [...this.targets.keys()];
  }

  /** Every synced entity with the columns field sync may write. */
  allTargets(): FieldTarget[] {
    return [...this.targets.values()];
  }

  /** The entity's target, or the engine's 404 `unknown_entity`. */
  target(name: string): FieldTarget {
    const target = this.targets.get(name);
    if (target) return target;
    this.entities.entity(name); // throws the 404 naming the entity
    throw badRequest(`entity ${name} is not field-synced`);
  }

  /** Validate an entity list from a subscribe message. */
  entityList(names: unknown): string[] {
    return this.entities.entityList(names);
  }

  async pull(entity: string, params: FieldPullParams): Promise<FieldPullResponse> {
    const target = this.target(entity);
    if (params.snapshot || params.since === 0) {
      // A snapshot page holds every field of each row: size pages in rows so `limit` bounds changes.
      const rows = Math.max(1, Math.floor(params.limit / Math.max(1, target.fields.length)));
      const token = params.snapshot ? decodeSnapshotToken(params.snapshot) : null;
      const page = await this.store.snapshot(entity, rows, token?.after, token?.version);
      const response: FieldPullResponse = { entity, version: page.version, changes: page.changes, has_more: page.after !== undefined };
      if (!token) response.reset = true;
      if (page.after !== undefined) response.next = encodeSnapshotToken(page.version, page.after);
      return response;
    }
    const page = await this.store.readChanges(params.since, params.limit, entity);
    return { entity, version: page.version, changes: page.changes, has_more: page.hasMore };
  }

  async push(entity: string, body: unknown): Promise<FieldPushResponse> {
    const target = this.target(entity);
    const { clientId, changes } = validateFieldPush(body, target, this.limits);
    const outcomes = await this.store.push({
      entity,
      clientId,
      changes,
      decide: (change, state) => decideField(this.policy, clientId, change, state),
    });
    const results = outcomes.map(toResult);
    return {
      entity,
      results,
      applied: results.filter((result) => result.status === 'applied').length,
      conflicts: results.filter((result) => result.status === 'conflict').length,
      rejected: results.filter((result) => result.status === 'rejected').length,
      version: await this.store.currentVersion(),
    };
  }

  async latest(entity: string, rawId: unknown): Promise<LatestFieldsResponse | null> {
    this.target(entity);
    const entityId = normaliseId(rawId, 'latest');
    if (entityId === null) throw badRequest('latest needs an entity_id');
    const state = await this.store.latest(entity, entityId);
    return state && { entity, entity_id: entityId, ...state };
  }
}

function toResult(outcome: FieldOutcome): FieldPushResult {
  const { change } = outcome;
  const result: FieldPushResult = { entity_id: change.entityId, field: change.field, status: outcome.status };
  if (change.mutationId !== null) result.mutation_id = change.mutationId;
  if (outcome.version !== undefined) result.version = outcome.version;
  if (outcome.hlc !== undefined) result.hlc = outcome.hlc;
  if (outcome.duplicate) result.duplicate = true;
  if (outcome.status === 'applied') result.value = outcome.value ?? null;
  if (outcome.status === 'conflict') {
    result.server_value = outcome.value ?? null;
    result.client_value = change.clientValue ?? null;
  }
  if (outcome.reason !== undefined) result.reason = outcome.reason;
  return result;
}
