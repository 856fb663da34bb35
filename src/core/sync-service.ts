/**
 * SyncService: the transport-free heart of the engine. Pull, push and schema
 * answers as plain objects; HTTP and WebSocket both call these.
 */
import {
  checkWrite,
  inScope,
  type LiveScope,
  scopeChange,
  scopedClientId,
  scopeFieldChanges,
  snapshotUser,
  stableJson,
  writerOf,
} from './access.js';
import type { ResolvedEntity, SyncLimits, SyncUser } from './config.js';
import { decideWrite } from './conflict.js';
import { badRequest, SyncError } from './errors.js';
import type { HybridClock } from './hlc.js';
import { SyncMetrics } from './metrics.js';
import {
  type Change,
  ErrorCode,
  type PullResponse,
  type PushResponse,
  type PushResult,
  type Row,
  type SchemaResponse,
} from './protocol.js';
import { type StandardSchemaV1, toSchemaIssues } from './standard-schema.js';
import { type AppliedChange, type ServerRowState, type Store, snapshotChanges, type TableSchema, type WriteDecision } from './store.js';
import { traced } from './tracing.js';
import { type ValidatedPush, validatePush } from './validation.js';

export interface PullParams {
  since: number;
  limit: number;
  /** Continuation token of a snapshot (`next` of the previous page). */
  snapshot?: string | null;
  /**
   * A page of a streamed pull, whose reader follows `next`: a snapshot page
   * with more behind it reports cursor 0 instead of looking for one.
   */
  streamed?: boolean;
}

interface SyncedEntity {
  config: ResolvedEntity;
  schema: TableSchema;
}

export class SyncService {
  private readonly entities = new Map<string, SyncedEntity>();
  /** What a snapshot page with more behind it reports as `version` (docs/protocol.md, "Pull"). */
  private readonly cursors: SnapshotCursors;

  constructor(
    readonly store: Store,
    configs: ResolvedEntity[],
    schemas: TableSchema[],
    private readonly clock: HybridClock,
    readonly limits: SyncLimits,
    private readonly fieldSync: boolean,
    readonly metrics: SyncMetrics = new SyncMetrics(),
  ) {
    this.cursors = new SnapshotCursors(
      (entity, lowest) => this.rowFloor(entity, lowest),
      (entity) => this.store.retainedSince(entity),
      limits.maxPullLimit,
    );
    for (const config of configs) {
      const schema = schemas.find((candidate) => candidate.entity === config.name);
      if (!schema) throw new Error(`rhtmx-sync: no schema for ${config.name}`);
      this.entities.set(config.name, { config, schema });
    }
  }

  get entityNames(): string[] {
    return [...this.entities.keys()];
  }

  /** The store followed a schema change: validate, write and publish with the table's new columns from now on. */
  adoptSchema(schema: TableSchema): void {
    const entity = this.entities.get(schema.entity);
    if (entity) this.entities.set(schema.entity, { config: entity.config, schema });
  }

  /** The entity, or a 404 that names the known ones. */
  entity(name: string): SyncedEntity {
    const entity = typeof name === 'string' ? this.entities.get(name) : undefined;
    if (!entity) {
      throw new SyncError(ErrorCode.UnknownEntity, `unknown entity ${JSON.stringify(String(name).slice(0, 64))}`, 404);
    }
    return entity;
  }

  /** Validate an entity list from a query string or a subscribe message. */
  entityList(names: unknown): string[] {
    if (!Array.isArray(names) || names.some((name) => typeof name !== 'string')) {
      throw badRequest('entities must be a list of entity names');
    }
    for (const name of names) this.entity(name);
    return names as string[];
  }

  /** Pull as `user` sees it: rows outside their read scope are left out of snapshots and become deletes in the log. */
  async pull(entityName: string, params: PullParams, user: SyncUser | null = null): Promise<PullResponse> {
    return (await this.pullEncoded(entityName, params, user, false)).response;
  }

  /** One pull page as the JSON text of its PullResponse (what HTTP sends). */
  async pullJson(entityName: string, params: PullParams, user: SyncUser | null = null): Promise<{ page: PullResponse; text: string }> {
    const { response, json } = await this.pullEncoded(entityName, params, user, true);
    return { page: response, text: json === undefined ? JSON.stringify(response) : spliceChanges(response, json) };
  }

  /** A pull page; with `asText`, a snapshot page nobody filters stays the JSON text the store built (`json`). */
  private pullEncoded(entityName: string, params: PullParams, user: SyncUser | null, asText: boolean): Promise<EncodedPull> {
    this.entity(entityName);
    return traced('pull', { entity: entityName, since: params.since }, () => this.pullPage(entityName, params, user, asText));
  }

  private async pullPage(entityName: string, params: PullParams, user: SyncUser | null, asText: boolean): Promise<EncodedPull> {
    const { schema, config } = this.entity(entityName);
    if (params.snapshot) {
      const encoded = await this.snapshotResponse(entityName, params.limit, false, user, asText, params.snapshot);
      return this.continuable(schema.entity, encoded, params.streamed);
    }
    const retained = params.since > 0 ? await this.store.retainedSince(schema.entity) : 0;
    if (params.since === 0 || params.since < retained) {
      // A fresh client, or a cursor older than the pruned log: send the current rows, marked as a reset.
      const encoded = await this.snapshotResponse(entityName, params.limit, true, user, asText);
      if (encoded.response.has_more) encoded.response.total = await this.store.countRows(schema.entity);
      return this.continuable(schema.entity, encoded, params.streamed);
    }
    const page = await this.store.readEntityLog(schema.entity, params.since, params.limit);
    const changes = latestPerRow(page.changes);
    return {
      response: {
        entity: entityName,
        version: page.version,
        changes: config.read ? changes.map((change) => scopeChange(change, config.read, user)) : changes,
        has_more: page.hasMore,
      },
    };
  }

  /**
   * How a live change looks to `user`, and the key of that view: connections
   * with equal keys share one encoding of each batch. The key is what the read
   * rules select (each scoped entity's `scopeKey`, or the whole user context),
   * never the user id alone, so a user whose rights changed gets a new view.
   * Null when no entity has a read scope: everyone sees the same.
   */
  liveScope(user: SyncUser | null): LiveScope | null {
    const scoped = [...this.entities.values()].filter(({ config }) => config.read);
    if (scoped.length === 0) return null;
    // A copy: an app that mutates its user object in place must not change a view already keyed.
    const frozen = snapshotUser(user);
    const keys = new Map(scoped.map(({ config }) => [config.name, config.scopeKey ? config.scopeKey(frozen) : stableJson(frozen)]));
    const key = [...keys].map(([name, part]) => `${name}=${part}`).join('&');
    const readOf = (entity: string) => this.entities.get(entity)?.config.read;
    return {
      key,
      keyFor: (entity) => keys.get(entity) ?? null,
      apply: (change) => scopeChange(change, readOf(change.entity), frozen),
      applyFields: (changes, rowOf) => scopeFieldChanges(changes, readOf, frozen, rowOf),
    };
  }

  /** A snapshot page as `user` sees it: filtered by the read scope, or (nobody filters, `asText`) as the JSON text the store built. */
  private async snapshotResponse(
    entity: string,
    limit: number,
    first: boolean,
    user: SyncUser | null,
    asText: boolean,
    token?: string,
  ): Promise<EncodedPull> {
    const { config, schema } = this.entity(entity);
    const { after, version } = token ? decodeSnapshotToken(token) : { after: undefined, version: undefined };
    const page =
      asText && !config.read
        ? await this.store.snapshotJson(schema.entity, limit, after, version)
        : await this.store.snapshot(schema.entity, limit, after, version);
    const response: PullResponse = { entity, version: page.version, changes: [], has_more: page.after !== undefined };
    if (first) response.reset = true;
    if (page.after !== undefined) response.next = encodeSnapshotToken(page.version, page.after);
    if ('json' in page) return { response, json: page.json };
    response.changes = snapshotChanges(entity, page).filter((change) => inScope(change.data, config.read, user));
    return { response };
  }

  /**
   * A snapshot page with more behind it reports the cursor a since-pull
   * continues from (`next` keeps the snapshot's version); in a stream, whose
   * reader follows `next`, it reports 0 without looking for one.
   */
  private async continuable(entity: string, encoded: EncodedPull, streamed = false): Promise<EncodedPull> {
    const { response } = encoded;
    if (response.has_more) response.version = streamed ? 0 : await this.cursors.cursor(entity, response.version, response.total);
    return encoded;
  }

  /**
   * One pass over the entity's rows: the version below every current row's
   * latest log entry, never above the pass's own cursor (rows committed after
   * it come above that); 0 as soon as it falls below `lowest` (a row written
   * before change capture was installed has version 0).
   */
  private async rowFloor(entity: string, lowest: number): Promise<number> {
    const chunk = this.limits.maxPullLimit;
    let page = await this.store.snapshot(entity, chunk);
    const pinned = page.version;
    let floor = pinned;
    for (;;) {
      for (const row of page.rows) floor = Math.min(floor, row.version - 1);
      if (floor < lowest) return 0;
      if (page.after === undefined) return floor;
      page = await this.store.snapshot(entity, chunk, page.after, pinned);
    }
  }

  async push(entityName: string, body: unknown, user: SyncUser | null = null): Promise<PushResponse> {
    const { schema } = this.entity(entityName);
    const validated = validatePush(body, schema, this.limits);
    const response = await traced('push', { entity: entityName, changes: validated.changes.length }, () =>
      this.applyPush(entityName, validated, user),
    );
    this.metrics.recordPush(response.results);
    return response;
  }

  private async applyPush(
    entityName: string,
    { clientId, fresh, retry, changes }: ValidatedPush,
    user: SyncUser | null,
  ): Promise<PushResponse> {
    const { config, schema } = this.entity(entityName);
    const policy = { strategy: config.strategy, resolve: config.resolve, clock: this.clock };
    const guarded = config.read !== undefined || config.write !== undefined;
    const applied = await this.store.push({
      schema,
      clientId: scopedClientId(clientId, user),
      origin: await writerOf(clientId),
      fresh,
      retry,
      changes,
      decide: (change, server, index) => {
        if (guarded) checkWrite(change, server, schema.primaryKey, config, user, index);
        const decision = decideWrite(policy, change, server);
        return config.schema ? validateDecision(config.schema, decision, server, schema.primaryKey, change.id) : decision;
      },
    });
    // A row returned with a result (conflict, duplicate) must be one the user may see.
    const results = applied.map((change) =>
      change.row && !inScope(change.row, config.read, user) ? toPushResult({ ...change, row: null }) : toPushResult(change),
    );
    return { entity: entityName, results, version: await this.store.currentVersion() };
  }

  async schema(): Promise<SchemaResponse> {
    return {
      version: await this.store.currentVersion(),
      field_sync: this.fieldSync,
      entities: [...this.entities.values()].map(({ config, schema }) => ({
        name: config.name,
        primaryKey: schema.primaryKey,
        columns: schema.columns,
        routes: config.routes,
      })),
    };
  }
}

/** A pull page whose changes (a snapshot page nobody filters) may still be the database's JSON text: `json` then stands for `changes`. */
interface EncodedPull {
  response: PullResponse;
  json?: string;
}

/** The JSON text of `response` with `changes` set to the array text `json`. */
function spliceChanges(response: PullResponse, json: string): string {
  const { changes: _changes, ...head } = response;
  return `{"changes":${json},${JSON.stringify(head).slice(1)}`;
}

/** Within one page only the newest entry per row matters; older ones are superseded. */
function latestPerRow(changes: Change[]): Change[] {
  if (changes.length < 2) return changes;
  const seen = new Set<string>();
  const kept: Change[] = [];
  for (let index = changes.length - 1; index >= 0; index--) {
    const change = changes[index] as Change;
    if (seen.has(change.id)) continue;
    seen.add(change.id);
    kept.push(change);
  }
  return kept.reverse();
}

function toPushResult(change: AppliedChange): PushResult {
  const result: PushResult = { id: change.id, status: change.status };
  if (change.mutationId !== null) result.mutation_id = change.mutationId;
  if (change.version !== undefined) result.version = change.version;
  if (change.duplicate) result.duplicate = true;
  if (change.row !== undefined) result.row = change.row;
  if (change.serverVersion !== undefined) result.server_version = change.serverVersion;
  if (change.reason !== undefined) result.reason = change.reason;
  if (change.merged) result.merged = true;
  if (change.issues) result.issues = change.issues;
  return result;
}

/**
 * Run the entity's Standard Schema on the row a write would produce. Its
 * output (coercions included) replaces the written columns.
 */
function validateDecision(
  schema: StandardSchemaV1,
  decision: WriteDecision,
  server: ServerRowState,
  primaryKey: string,
  id: string | null,
): WriteDecision {
  if (decision.kind !== 'write' || decision.action === 'delete') return decision;
  const row: Row = { ...(server.row ?? {}), ...decision.data };
  if (id !== null) row[primaryKey] = server.row?.[primaryKey] ?? id;
  const result = schema['~standard'].validate(row);
  if (result instanceof Promise) {
    return { kind: 'reject', reason: 'schema validation must be synchronous' };
  }
  if (result.issues) {
    return { kind: 'reject', reason: 'schema validation failed', issues: toSchemaIssues(result.issues) };
  }
  const data = { ...(result.value as Row) };
  delete data[primaryKey];
  return { ...decision, data };
}

/** How long a failed search for a snapshot cursor is believed before the rows are looked at again, ms. */
const NO_FLOOR_RETRY_MS = 5 * 60_000;

/**
 * The `version` a snapshot page reports while more pages follow, for clients
 * that never follow `next` and pull `since=version` instead (the original
 * crate's clients, which know no pagination): the highest cursor from which
 * such a pull, and the incremental pages after it, bring every row the
 * snapshot has not sent yet. That is a cursor below the latest write of every
 * current row (cleanup keeps each live row's newest entry, pruning only
 * superseded entries and deletes), at most the snapshot's own version (so the
 * rows already sent come again with whatever changed since), and served
 * incrementally (at or above the retained horizon, `retainedSince`). When
 * there is none (rows written before change capture was installed; cleanup or
 * a schema change raised the horizon past old rows), or it is not known yet,
 * it is 0: a since-pull starts the snapshot over, which loses nothing.
 *
 * A floor is read by one pass over the rows (`scan`). Rows only ever move to
 * higher versions and rows written later come above the pass's cursor, so a
 * floor once found stays true for the process's life; a failed search is
 * retried after NO_FLOOR_RETRY_MS. A page waits for the pass only when the
 * table is small enough for it to be one read (`waitRows`); for a bigger one
 * the pass runs behind the answer, which says 0 until it is done, so our own
 * client (which follows `next`) never waits for it. Shared by entity and
 * field pulls.
 */
export class SnapshotCursors {
  private readonly floors = new Map<string, { floor: Promise<number>; value?: number; until: number }>();

  constructor(
    /** A floor for the entity, or 0 once it would fall below `lowest`. */
    private readonly scan: (entity: string, lowest: number) => Promise<number>,
    private readonly retainedSince: (entity: string) => Promise<number>,
    private readonly waitRows: number,
  ) {}

  /** The cursor a page of a snapshot at `version` of a table of `rows` rows (when known) reports while more pages follow. */
  async cursor(entity: string, version: number, rows?: number): Promise<number> {
    const lowest = Math.max(1, await this.retainedSince(entity));
    const known = this.floor(entity, lowest);
    const floor = known.value ?? (rows !== undefined && rows <= this.waitRows ? await known.floor : 0);
    return Math.min(floor, version) >= lowest ? Math.min(floor, version) : 0;
  }

  private floor(entity: string, lowest: number): { floor: Promise<number>; value?: number } {
    const known = this.floors.get(entity);
    if (known && Date.now() < known.until) return known;
    const entry: { floor: Promise<number>; value?: number; until: number } = {
      floor: this.scan(entity, lowest).catch(() => 0),
      until: Number.POSITIVE_INFINITY,
    };
    this.floors.set(entity, entry);
    void entry.floor.then((floor) => {
      entry.value = floor;
      if (floor === 0) entry.until = Date.now() + NO_FLOOR_RETRY_MS;
    });
    return entry;
  }
}

/** base64url (RFC 4648 §5, unpadded) of a string's UTF-8 bytes, with Web APIs only (core runs beyond Node). */
function toBase64Url(text: string): string {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The string a base64url token encodes; throws on anything that is not base64url of UTF-8. */
function fromBase64Url(token: string): string {
  if (!/^[A-Za-z0-9_-]*$/.test(token)) throw new Error('not base64url');
  const bytes = Uint8Array.from(atob(token.replace(/-/g, '+').replace(/_/g, '/')), (char) => char.charCodeAt(0));
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
}

/** Snapshot continuation: the version the snapshot is pinned to and the last key served. */
export function encodeSnapshotToken(version: number, after: string): string {
  return toBase64Url(JSON.stringify([version, after]));
}

export function decodeSnapshotToken(token: string): { version: number; after: string } {
  try {
    if (token.length > 1024) throw new Error('too long');
    const [version, after] = JSON.parse(fromBase64Url(token)) as [unknown, unknown];
    if (!Number.isSafeInteger(version) || (version as number) < 0 || typeof after !== 'string' || after.includes('\u0000')) {
      throw new Error('shape');
    }
    return { version: version as number, after };
  } catch {
    throw new SyncError(ErrorCode.BadCursor, 'invalid snapshot token', 400);
  }
}
