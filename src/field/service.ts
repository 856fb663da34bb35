/**
 * FieldService: field-level pull, push and latest as plain objects; the
 * HTTP routes and the WebSocket both call these.
 */
import { checkWrite, scopedClientId } from '../core/access.js';
import type { FieldMergeStrategy, ResolvedEntity, SyncLimits, SyncUser } from '../core/config.js';
import { badRequest, SyncError } from '../core/errors.js';
import type { HybridClock } from '../core/hlc.js';
import type { FieldPullResponse, FieldPushResponse, FieldPushResult, LatestFieldsResponse } from '../core/protocol.js';
import { ErrorCode, type Row } from '../core/protocol.js';
import { toSchemaIssues } from '../core/standard-schema.js';
import type { FieldOutcome, FieldStore, FieldTarget, FieldValue, RowWrite, RowWriteCheck } from '../core/store.js';
import { decodeSnapshotToken, encodeSnapshotToken, type SyncService } from '../core/sync-service.js';
import { normaliseId } from '../core/validation.js';
import { decideField, type FieldPolicy } from './merge.js';
import { coerceFieldValue, fieldColumns, validateFieldPush } from './validation.js';

/** A field-synced entity: its table, writable columns and configuration (rules, schema). */
type EntityTarget = FieldTarget & { config: ResolvedEntity };

export interface FieldPullParams {
  since: number;
  limit: number;
  /** Snapshot continuation token (`next` of the previous page). */
  snapshot?: string | null;
}

export class FieldService {
  private readonly targets = new Map<string, EntityTarget>();
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
      const { schema, config } = entities.entity(name);
      this.targets.set(name, { schema, config, fields: fieldColumns(schema.columns) });
    }
  }

  get entityNames(): string[] {
    return [...this.targets.keys()];
  }

  /** Every synced entity with the columns field sync may write. */
  allTargets(): FieldTarget[] {
    return [...this.targets.values()];
  }

  /**
   * The entity's target, or the engine's 404 `unknown_entity`. Entities with a
   * row read rule are refused (403): field changes carry no row to judge them
   * by, and failing closed is the only way not to leak a row. Their clients
   * use entity-level sync, which applies the rule.
   */
  target(name: string): EntityTarget {
    const target = this.targets.get(name);
    if (!target) {
      this.entities.entity(name); // throws the 404 naming the entity
      throw badRequest(`entity ${name} is not field-synced`);
    }
    if (target.config.read) {
      throw new SyncError(
        ErrorCode.Forbidden,
        `${name} has a row read rule; field-level sync does not serve it (use /api/sync, which applies the rule)`,
        403,
      );
    }
    return target;
  }

  /** Validate an entity list from a subscribe message. */
  entityList(names: unknown): string[] {
    const list = this.entities.entityList(names);
    for (const name of list) this.target(name);
    return list;
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

  /** Apply a field push as `user` (null without an authorize hook). */
  async push(entity: string, body: unknown, user: SyncUser | null = null): Promise<FieldPushResponse> {
    const target = this.target(entity);
    const { clientId, changes } = validateFieldPush(body, target, this.limits);
    const { config } = target;
    const outcomes = await this.store.push({
      entity,
      // Exactly-once bookkeeping is per user: the same client id from two users never collides.
      clientId: scopedClientId(clientId, user),
      origin: clientId,
      changes,
      decide: (change, state) => decideField(this.policy, clientId, change, state),
      prepareWrite: config.write || config.schema ? (write) => checkRowWrite(target, write, user) : undefined,
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

/**
 * The entity's write rule and Standard Schema, applied to a field write as to
 * an entity push: the rule sees the columns written and the current row (a
 * refusal is a 403 for the whole push); the schema sees the whole row after
 * the write, and its output, coerced to the column types, is what is written.
 */
function checkRowWrite(target: EntityTarget, write: RowWrite, user: SyncUser | null): RowWriteCheck {
  const { config, schema } = target;
  if (config.write) {
    checkWrite(
      { mutationId: null, id: write.entityId, action: write.action, data: write.json, baseVersion: null, timestamp: null },
      { row: write.current, version: 0, hlc: 0, base: null },
      schema.primaryKey,
      config,
      user,
      write.index,
    );
  }
  if (!config.schema || write.action === 'delete') return { ok: true, values: write.values };
  const row: Row = { ...(write.current ?? {}), ...write.json, [schema.primaryKey]: write.current?.[schema.primaryKey] ?? write.entityId };
  const result = config.schema['~standard'].validate(row);
  if (result instanceof Promise) return { ok: false, reason: 'schema validation must be synchronous' };
  if (result.issues) return { ok: false, reason: 'schema validation failed', issues: toSchemaIssues(result.issues) };
  const output = (result.value ?? {}) as Row;
  const values: Record<string, FieldValue> = {};
  for (const field of Object.keys(write.values)) {
    const column = target.fields.find((candidate) => candidate.name === field);
    if (!column || !(field in output)) {
      values[field] = write.values[field] ?? null;
      continue;
    }
    const coerced = coerceFieldValue(column, output[field]);
    if (!coerced.ok) return { ok: false, reason: `schema output ${field}: ${coerced.reason}` };
    values[field] = coerced.value;
  }
  return { ok: true, values };
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
  if (outcome.issues) result.issues = outcome.issues;
  return result;
}
