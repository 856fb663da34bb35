/**
 * FieldService: field-level sync as a merge policy and a read projection of
 * the one engine. Pull, push and latest as plain objects; the one route table
 * and the one socket endpoint call these. The entities, their rules and their
 * read scopes are the entity service's: a user receives and writes only fields
 * of rows inside their scope, judged by the same rules as entity sync.
 */
import { checkWrite, inScope, scopedClientId, scopeFieldChanges, writerOf } from '../access.js';
import type { FieldMergeStrategy, ResolvedEntity, SyncLimits, SyncUser } from '../config.js';
import { badRequest } from '../errors.js';
import type { HybridClock } from '../hlc.js';
import type { FieldChange, FieldPullResponse, FieldPushResponse, FieldPushResult, LatestFieldsResponse, Row } from '../protocol.js';
import { toSchemaIssues } from '../standard-schema.js';
import {
  type FieldOutcome,
  type FieldStore,
  type FieldTarget,
  type FieldValue,
  fieldClientKey,
  type RowWrite,
  type RowWriteCheck,
} from '../store.js';
import { decodeSnapshotToken, encodeSnapshotToken, type PullParams, SnapshotCursors, type SyncService } from '../sync-service.js';
import { normaliseId } from '../validation.js';
import { decideField, type FieldPolicy } from './merge.js';
import { coerceFieldValue, fieldColumns, validateFieldPush } from './validation.js';

/** A field-synced entity: its table, writable columns and configuration (rules, schema). */
type EntityTarget = FieldTarget & { config: ResolvedEntity };

export class FieldService {
  private readonly targets = new Map<string, EntityTarget>();
  private readonly policy: FieldPolicy;
  /** What a snapshot page with more behind it reports as `version` (docs/protocol.md, "Pull"). */
  private readonly cursors: SnapshotCursors;

  constructor(
    readonly store: FieldStore,
    /** The entity-level service: the one place that knows the synced entities and their real columns. */
    private readonly entities: SyncService,
    clock: HybridClock,
    readonly strategy: FieldMergeStrategy,
    private readonly limits: SyncLimits,
  ) {
    this.policy = { strategy, clock };
    this.cursors = new SnapshotCursors(
      (entity, lowest) => this.fieldFloor(entity, lowest),
      (entity) => entities.store.retainedSince(entity),
      limits.maxPullLimit,
    );
    for (const name of entities.entityNames) {
      const { schema, config } = entities.entity(name);
      this.targets.set(name, { schema, config, fields: fieldColumns(schema.columns) });
    }
  }

  get entityNames(): string[] {
    return [...this.targets.keys()];
  }

  /** The entity's table changed shape (the entity service adopted it first): its fields are the new columns. */
  adoptSchema(name: string): void {
    if (!this.targets.has(name)) return;
    const { schema, config } = this.entities.entity(name);
    this.targets.set(name, { schema, config, fields: fieldColumns(schema.columns) });
  }

  /** How live field changes look to `user`: the entity service's read scopes, applied to fields. */
  liveScope(user: SyncUser | null) {
    return this.entities.liveScope(user);
  }

  /** Every synced entity with the columns field sync may write. */
  allTargets(): FieldTarget[] {
    return [...this.targets.values()];
  }

  /** The entity's target, or the engine's 404 `unknown_entity`. */
  target(name: string): EntityTarget {
    const target = this.targets.get(name);
    if (!target) {
      this.entities.entity(name); // throws the 404 naming the entity
      throw badRequest(`entity ${name} is not field-synced`);
    }
    return target;
  }

  /** Validate an entity list from a subscribe message. */
  entityList(names: unknown): string[] {
    const list = this.entities.entityList(names);
    for (const name of list) this.target(name);
    return list;
  }

  /**
   * Pull as `user` sees it: snapshot pages leave out rows outside the read
   * scope, and in the log a row that left the scope becomes a row delete.
   */
  async pull(entity: string, params: PullParams, user: SyncUser | null = null): Promise<FieldPullResponse> {
    const target = this.target(entity);
    const retained = params.since > 0 && !params.snapshot ? await this.entities.store.retainedSince(entity) : 0;
    if (params.snapshot || params.since === 0 || params.since < retained) {
      // A snapshot page holds every field of each row: size pages in rows so `limit` bounds changes.
      const rows = Math.max(1, Math.floor(params.limit / Math.max(1, target.fields.length)));
      const token = params.snapshot ? decodeSnapshotToken(params.snapshot) : null;
      const page = await this.store.snapshot(entity, rows, token?.after, token?.version);
      const response: FieldPullResponse = {
        entity,
        version: page.version,
        changes: await this.visible(target, page.changes, user, true),
        has_more: page.after !== undefined,
      };
      if (!token) response.reset = true;
      if (page.after !== undefined) {
        response.next = encodeSnapshotToken(page.version, page.after);
        // More follows: `version` is where a since-pull continues (SnapshotCursors); `next` keeps the snapshot's.
        const rows = token ? undefined : await this.entities.store.countRows(entity);
        response.version = await this.cursors.cursor(entity, page.version, rows);
      }
      return response;
    }
    const page = await this.store.readChanges(params.since, params.limit, entity);
    return { entity, version: page.version, changes: await this.visible(target, page.changes, user, false), has_more: page.hasMore };
  }

  /**
   * A field since-pull reads the field bookkeeping, which records a row's
   * fields from its first write after field sync was installed on: rows not
   * written since carry the row's log version in snapshots but no record. So
   * a floor needs two passes: the version below every field of every current
   * row (never above the first pass's cursor), then proof that each of those
   * rows has records above it (a row with one has all). 0 when either fails
   * or the floor falls below `lowest`.
   */
  private async fieldFloor(entity: string, lowest: number): Promise<number> {
    const chunk = this.limits.maxPullLimit;
    const rows = Math.max(1, Math.floor(chunk / Math.max(1, this.target(entity).fields.length)));
    let page = await this.store.snapshot(entity, rows);
    const pinned = page.version;
    let floor = pinned;
    const unproven = new Set<string>();
    for (;;) {
      for (const change of page.changes) {
        floor = Math.min(floor, change.version - 1);
        unproven.add(change.entity_id);
      }
      if (floor < lowest) return 0;
      if (page.after === undefined) break;
      page = await this.store.snapshot(entity, rows, page.after, pinned);
    }
    for (let since = floor; unproven.size > 0; ) {
      // A row deleted meanwhile shows up as its tombstone.
      const records = await this.store.readChanges(since, chunk, entity);
      for (const change of records.changes) unproven.delete(change.entity_id);
      if (!records.hasMore) break;
      since = records.version;
    }
    return unproven.size === 0 ? floor : 0;
  }

  /** The changes `user` may see, judged by the rows as they are now. */
  private async visible(target: EntityTarget, changes: FieldChange[], user: SyncUser | null, snapshot: boolean): Promise<FieldChange[]> {
    const read = target.config.read;
    if (!read || changes.length === 0) return changes;
    const rows = await this.store.rows(target.schema.entity, [...new Set(changes.map((change) => change.entity_id))]);
    return scopeFieldChanges(
      changes,
      () => read,
      user,
      (_entity, id) => rows.get(id) ?? null,
      snapshot,
    );
  }

  /** Apply a field push as `user` (null without an authorize hook). */
  async push(entity: string, body: unknown, user: SyncUser | null = null): Promise<FieldPushResponse> {
    const target = this.target(entity);
    const { clientId, fresh, retry, changes } = validateFieldPush(body, target, this.limits);
    const { config } = target;
    const writer = await writerOf(clientId);
    const outcomes = await this.store.push({
      entity,
      // Exactly-once bookkeeping is per user: the same client id from two users never collides.
      clientId: clientId === null ? null : fieldClientKey(scopedClientId(clientId, user) as string),
      origin: writer,
      fresh,
      retry,
      changes,
      decide: (change, state) => decideField(this.policy, writer, change, state),
      prepareWrite: config.write || config.read || config.schema ? (write) => checkRowWrite(target, write, user) : undefined,
    });
    const results = outcomes.map(toResult);
    if (config.read) await this.hideOutOfScope(target, results, user);
    return {
      entity,
      results,
      applied: results.filter((result) => result.status === 'applied').length,
      conflicts: results.filter((result) => result.status === 'conflict').length,
      rejected: results.filter((result) => result.status === 'rejected').length,
      version: await this.store.currentVersion(),
    };
  }

  /** Every field of one row; null when it does not exist or is outside the user's scope. */
  async latest(entity: string, rawId: unknown, user: SyncUser | null = null): Promise<LatestFieldsResponse | null> {
    const target = this.target(entity);
    const entityId = normaliseId(rawId, 'latest');
    if (entityId === null) throw badRequest('latest needs an entity_id');
    if (target.config.read) {
      const row = (await this.store.rows(entity, [entityId])).get(entityId) ?? null;
      if (row && !inScope(row, target.config.read, user)) return null;
    }
    const state = await this.store.latest(entity, entityId);
    return state && { entity, entity_id: entityId, ...state };
  }

  /** Values in results (a conflict's server value, a duplicate's) are shown only for rows the user may see. */
  private async hideOutOfScope(target: EntityTarget, results: FieldPushResult[], user: SyncUser | null): Promise<void> {
    const rows = await this.store.rows(target.schema.entity, [...new Set(results.map((result) => result.entity_id))]);
    for (const result of results) {
      const row = rows.get(result.entity_id);
      if (!row || inScope(row, target.config.read, user)) continue;
      delete result.value;
      delete result.server_value;
    }
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
  if (config.write || config.read) {
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
