/**
 * One value semantics on both stores (docs/protocol.md, "Values"): one table
 * of (column type, input, stored value or 400) run on SQLite and PostgreSQL,
 * through entity pushes (/api/sync/:entity) and field pushes
 * (/api/field-sync/:entity) over real HTTP, each stored value read back by
 * pull; a value a column cannot hold is a 400 naming the column and the rule,
 * with nothing written. Constraint failures are rejected changes worded
 * alike on both stores and both families, naming the constraint or the
 * columns and never SQL text.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { FieldMergeStrategy } from '../src/core/config.js';
import type { Row } from '../src/core/protocol.js';
import type { StandardSchemaV1 } from '../src/core/standard-schema.js';
import { VALUE_RULES } from '../src/core/values.js';
import { getJson, postJson, type TestServer } from './helpers.js';
import { STORES, type StoreUnderTest } from './stores.js';

/** One column of every wire type; BIGINT so the whole safe-integer range fits on PostgreSQL too. */
const VALS_SQL = `CREATE TABLE vals (id TEXT PRIMARY KEY, txt TEXT, whole BIGINT, num REAL, flag BOOLEAN, doc JSON, bytes BLOB)`;
/** A row a custom resolver merges: the server row's values go back through the same rules. */
const MERGED_SQL = `CREATE TABLE merged (id TEXT PRIMARY KEY, txt TEXT, whole BIGINT, flag BOOLEAN, doc JSON, bytes BLOB)`;
/** A row an entity schema reshapes: its output goes through the same rules. */
const SHAPED_SQL = `CREATE TABLE shaped (id TEXT PRIMARY KEY, txt TEXT, whole BIGINT)`;
/** Hands `whole` back as text (decided to an integer again); for a row whose text is `poison`, as a word no integer column holds. */
const SHAPE: StandardSchemaV1 = {
  '~standard': {
    version: 1,
    vendor: 'value-matrix',
    validate: (input) => {
      const row = input as Row;
      return { value: { ...row, whole: row.txt === 'poison' ? 'lots' : row.whole == null ? row.whole : String(row.whole) } };
    },
  },
};
/** Every kind of constraint, named and unnamed. */
const CONS_SQL = `CREATE TABLE parents (id TEXT PRIMARY KEY);
CREATE TABLE cons (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  email TEXT UNIQUE,
  code TEXT,
  qty INTEGER CHECK (qty >= 0),
  size INTEGER CONSTRAINT size_small CHECK (size < 10),
  parent TEXT REFERENCES parents (id),
  a INTEGER,
  b INTEGER,
  small SMALLINT,
  label VARCHAR(5),
  "Mixed" TEXT UNIQUE,
  "odd name" TEXT UNIQUE,
  UNIQUE (a, b)
);
CREATE UNIQUE INDEX cons_code_lower ON cons (lower(code));`;
/** A trigger that refuses a value, in each dialect (SQLite enforces foreign keys once the app's connection asks). */
const DIALECT_SQL: Record<StoreUnderTest['name'], string> = {
  sqlite: `PRAGMA foreign_keys = ON;
CREATE TRIGGER cons_unlucky BEFORE INSERT ON cons WHEN NEW.qty = 13 BEGIN SELECT RAISE(ABORT, 'no 13 in qty > 12'); END;`,
  postgres: `CREATE FUNCTION cons_unlucky() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.qty = 13 THEN RAISE EXCEPTION 'no 13 in qty > 12'; END IF; RETURN NEW; END $$;
CREATE TRIGGER cons_unlucky BEFORE INSERT ON cons FOR EACH ROW EXECUTE FUNCTION cons_unlucky();
CREATE TABLE arrays (id TEXT PRIMARY KEY, tags INTEGER[]);`,
};
/** A column named like the table alias the PostgreSQL store's row JSON uses (`to_jsonb(t)` … `FROM table t`). */
const ALIASED_SQL = `CREATE TABLE aliased (id TEXT PRIMARY KEY, t TEXT)`;
/** An integer key: an id that is no integer is the database's to refuse. */
const COUNTED_SQL = `CREATE TABLE counted (id INTEGER PRIMARY KEY, n INTEGER)`;

type Column = 'txt' | 'whole' | 'num' | 'flag' | 'doc' | 'bytes';
type Rule = keyof typeof VALUE_RULES;
/** A case: this input in this column is stored as `stored`, or refused with 400 quoting `refused`. */
type Case = { column: Column; input: unknown; stored: unknown } | { column: Column; input: unknown; refused: Rule };

const ok = (column: Column, input: unknown, stored: unknown): Case => ({ column, input, stored });
const no = (column: Column, input: unknown, refused: Rule): Case => ({ column, input, refused });

const MATRIX: Case[] = [
  // text: strings as sent, numbers and booleans as text, objects refused, no NUL, no unpaired surrogate.
  ok('txt', 'hello', 'hello'),
  ok('txt', '', ''),
  ok('txt', '💥 ünï "quoted"', '💥 ünï "quoted"'),
  ok('txt', 4.5, '4.5'),
  ok('txt', 42, '42'),
  ok('txt', 1e21, '1e+21'),
  ok('txt', true, 'true'),
  ok('txt', false, 'false'),
  ok('txt', null, null),
  no('txt', { a: 1 }, 'object'),
  no('txt', ['a'], 'object'),
  no('txt', 'a\u0000b', 'nul'),
  no('txt', 'a\ud800b', 'surrogate'),
  no('txt', '\udc00', 'surrogate'),
  no('txt', 'pair reversed \udc00\ud800', 'surrogate'),
  // integer: safe integers, integer text, booleans as 1/0.
  ok('whole', 42, 42),
  ok('whole', -7, -7),
  ok('whole', '42', 42),
  ok('whole', ' -7 ', -7),
  ok('whole', 9007199254740991, 9007199254740991),
  ok('whole', true, 1),
  ok('whole', false, 0),
  ok('whole', null, null),
  no('whole', 2.5, 'integer'),
  no('whole', '2.5', 'integer'),
  no('whole', 'lots', 'integer'),
  no('whole', '', 'integer'),
  no('whole', 'yes', 'integer'),
  no('whole', 9007199254740992, 'integer'),
  no('whole', '0x10', 'integer'),
  no('whole', { n: 1 }, 'object'),
  no('whole', [1], 'object'),
  // number: finite numbers, numeric text, booleans as 1/0.
  ok('num', 4.5, 4.5),
  ok('num', 0.1 + 0.2, 0.30000000000000004),
  ok('num', '4.5', 4.5),
  ok('num', '1e3', 1000),
  ok('num', ' .5 ', 0.5),
  ok('num', 3, 3),
  ok('num', true, 1),
  ok('num', null, null),
  no('num', 'abc', 'number'),
  no('num', '', 'number'),
  no('num', '0x10', 'number'),
  no('num', 'Infinity', 'number'),
  no('num', '1e309', 'number'),
  no('num', { n: 1 }, 'object'),
  // boolean: true/false, 1/0, and the form words.
  ok('flag', true, true),
  ok('flag', false, false),
  ok('flag', 1, true),
  ok('flag', 0, false),
  ok('flag', 'true', true),
  ok('flag', 'false', false),
  ok('flag', '1', true),
  ok('flag', '0', false),
  ok('flag', 'yes', true),
  ok('flag', 'no', false),
  ok('flag', 'on', true),
  ok('flag', 'off', false),
  ok('flag', ' YES ', true),
  ok('flag', 'Off', false),
  ok('flag', '', false),
  ok('flag', null, null),
  no('flag', 2, 'boolean'),
  no('flag', -1, 'boolean'),
  no('flag', 'maybe', 'boolean'),
  no('flag', 'y', 'boolean'),
  no('flag', 't', 'boolean'),
  no('flag', { on: true }, 'object'),
  no('flag', [], 'object'),
  // json: any JSON value, a string stays a string; no NUL or unpaired surrogate in any string or key.
  ok('doc', { a: 1, list: [1, 'x', null], nested: { ok: true } }, { a: 1, list: [1, 'x', null], nested: { ok: true } }),
  ok('doc', [1, 'two', { three: 3 }], [1, 'two', { three: 3 }]),
  ok('doc', 'text', 'text'),
  ok('doc', '{"a":1}', '{"a":1}'),
  ok('doc', 42, 42),
  ok('doc', 0.1 + 0.2, 0.30000000000000004),
  ok('doc', true, true),
  ok('doc', { emoji: '💥' }, { emoji: '💥' }),
  ok('doc', null, null),
  no('doc', { text: 'a\u0000' }, 'nul'),
  no('doc', { 'key\u0000': 1 }, 'nul'),
  no('doc', 'a\u0000', 'nul'),
  no('doc', ['\ud800'], 'surrogate'),
  no('doc', { '\udfff': 1 }, 'surrogate'),
  // blob: hex text of even length, read back as upper-case hex.
  ok('bytes', 'cafe', 'CAFE'),
  ok('bytes', '00FF10', '00FF10'),
  ok('bytes', '', ''),
  ok('bytes', null, null),
  no('bytes', 'caf', 'blob'),
  no('bytes', 'zz', 'blob'),
  no('bytes', 12, 'blob'),
  no('bytes', { hex: 'cafe' }, 'object'),
];

/** Ids are checked like text values, wherever they arrive. */
const BAD_IDS: Array<{ id: string; refused: Rule }> = [
  { id: 'a\u0000b', refused: 'nul' },
  { id: 'lone \ud800', refused: 'surrogate' },
  { id: '\udc00', refused: 'surrogate' },
];

/** What each store answered, to compare the two stores with each other once both ran. */
const seen = new Map<string, unknown>();

async function pullRows(server: TestServer, entity: string): Promise<Map<string, Row>> {
  const pull = await getJson(`${server.url}/api/sync/${entity}?since=0&limit=10000`);
  assert.equal(pull.status, 200);
  assert.equal(pull.body.has_more, false);
  return new Map(pull.body.changes.map((change: { id: string; data: Row }) => [change.id, change.data]));
}

const label = (entry: Case) => `${entry.column} ← ${JSON.stringify(entry.input)}`;

for (const store of STORES) {
  describe(`one value semantics [${store.name}]`, () => {
    let server: TestServer;
    const entityPush = (entity: string, body: object) => postJson(`${server.url}/api/sync/${entity}`, body);
    const fieldPush = (entity: string, body: object) => postJson(`${server.url}/api/field-sync/${entity}`, body);

    before(async () => {
      server = await store.start({
        setupSql: [VALS_SQL, MERGED_SQL, SHAPED_SQL, COUNTED_SQL, ALIASED_SQL, CONS_SQL, DIALECT_SQL[store.name]].join(';\n'),
        entities: [
          'vals',
          'cons',
          'counted',
          'aliased',
          ...(store.name === 'postgres' ? ['arrays'] : []),
          { name: 'shaped', schema: SHAPE },
          {
            name: 'merged',
            // Keeps the server row, takes the client's text; `poison` makes it hand back a value no column holds.
            resolve: (serverRow, clientRow) =>
              clientRow.txt === 'poison' ? { ...serverRow, whole: 'lots' } : { ...(serverRow ?? {}), txt: clientRow.txt },
          },
        ],
        fieldSync: FieldMergeStrategy.LastWriteWins,
      });
    });
    after(() => server.close());

    test('entity pushes: each value is stored as the rules say, or refused with 400 naming the column and the rule', async () => {
      // The rules go by the column types the schema publishes: one column of each.
      const schema = await getJson(`${server.url}/api/sync/schema`);
      const vals = schema.body.entities.find((entity: { name: string }) => entity.name === 'vals');
      assert.deepEqual(
        vals.columns.map((column: { name: string; type: string }) => [column.name, column.type]),
        [
          ['id', 'text'],
          ['txt', 'text'],
          ['whole', 'integer'],
          ['num', 'number'],
          ['flag', 'boolean'],
          ['doc', 'json'],
          ['bytes', 'blob'],
        ],
      );
      for (const [index, entry] of MATRIX.entries()) {
        const id = `e${index}`;
        const push = await entityPush('vals', { changes: [{ id, action: 'create', data: { [entry.column]: entry.input } }] });
        if ('refused' in entry) {
          assert.equal(push.status, 400, `${label(entry)}: ${JSON.stringify(push.body)}`);
          assert.equal(push.body.error.code, 'bad_request');
          assert.equal(push.body.error.message, `changes[0]: ${entry.column} ${VALUE_RULES[entry.refused]}`, label(entry));
        } else {
          assert.equal(push.status, 200, `${label(entry)}: ${JSON.stringify(push.body)}`);
          assert.equal(push.body.results[0].status, 'applied', `${label(entry)}: ${JSON.stringify(push.body.results[0])}`);
        }
      }
      const rows = await pullRows(server, 'vals');
      for (const [index, entry] of MATRIX.entries()) {
        const row = rows.get(`e${index}`);
        if ('refused' in entry) {
          assert.equal(row, undefined, `${label(entry)}: a refused push writes nothing`);
          continue;
        }
        assert.deepEqual(row?.[entry.column], entry.stored, label(entry));
        seen.set(`${store.name} entity ${index}`, row?.[entry.column]);
      }
    });

    test('field pushes: the same values, the same answers, read back by both pulls', async () => {
      for (const [index, entry] of MATRIX.entries()) {
        const id = `f${index}`;
        const push = await fieldPush('vals', { changes: [{ entity_id: id, field: entry.column, value: entry.input }] });
        if ('refused' in entry) {
          assert.equal(push.status, 400, `${label(entry)}: ${JSON.stringify(push.body)}`);
          assert.equal(push.body.error.code, 'bad_request');
          assert.equal(push.body.error.message, `changes[0]: ${entry.column} ${VALUE_RULES[entry.refused]}`, label(entry));
        } else {
          assert.equal(push.status, 200, `${label(entry)}: ${JSON.stringify(push.body)}`);
          const [result] = push.body.results;
          assert.equal(result.status, 'applied', `${label(entry)}: ${JSON.stringify(result)}`);
          assert.deepEqual(result.value, entry.stored, `${label(entry)}: the answer carries the value as stored`);
        }
      }
      const rows = await pullRows(server, 'vals');
      const fields = await getJson(`${server.url}/api/field-sync/vals?since=0&limit=10000`);
      assert.equal(fields.status, 200);
      const fieldValues = new Map(
        fields.body.changes.map((change: { entity_id: string; field: string; value: unknown }) => [
          `${change.entity_id}.${change.field}`,
          change.value,
        ]),
      );
      for (const [index, entry] of MATRIX.entries()) {
        const id = `f${index}`;
        if ('refused' in entry) {
          assert.equal(rows.get(id), undefined, `${label(entry)}: a refused push writes nothing`);
          continue;
        }
        assert.deepEqual(rows.get(id)?.[entry.column], entry.stored, `${label(entry)} (entity pull)`);
        assert.deepEqual(fieldValues.get(`${id}.${entry.column}`), entry.stored, `${label(entry)} (field pull)`);
        seen.set(`${store.name} field ${index}`, rows.get(id)?.[entry.column]);
      }
    });

    test('a refused value refuses the whole push: the good changes beside it are not written either', async () => {
      const entity = await entityPush('vals', {
        changes: [
          { id: 'whole1', action: 'create', data: { txt: 'fine' } },
          { id: 'whole2', action: 'create', data: { whole: 'lots' } },
        ],
      });
      assert.equal(entity.status, 400);
      assert.equal(entity.body.error.message, `changes[1]: whole ${VALUE_RULES.integer}`);
      const field = await fieldPush('vals', {
        changes: [
          { entity_id: 'whole3', field: 'txt', value: 'fine' },
          { entity_id: 'whole3', field: 'flag', value: 'maybe' },
        ],
      });
      assert.equal(field.status, 400);
      assert.equal(field.body.error.message, `changes[1]: flag ${VALUE_RULES.boolean}`);
      const rows = await pullRows(server, 'vals');
      assert.deepEqual(
        ['whole1', 'whole2', 'whole3'].filter((id) => rows.has(id)),
        [],
      );
    });

    test('ids: NUL and unpaired surrogates are refused with 400 by both families; a surrogate pair is an id like any', async () => {
      for (const { id, refused } of BAD_IDS) {
        const entity = await entityPush('vals', { changes: [{ id, action: 'create', data: { txt: 'x' } }] });
        assert.equal(entity.status, 400, JSON.stringify(id));
        assert.equal(entity.body.error.message, `changes[0]: id ${VALUE_RULES[refused]}`);
        const inData = await entityPush('vals', { changes: [{ action: 'create', data: { id, txt: 'x' } }] });
        assert.equal(inData.status, 400, JSON.stringify(id));
        assert.equal(inData.body.error.message, `changes[0]: id ${VALUE_RULES[refused]}`);
        const field = await fieldPush('vals', { changes: [{ entity_id: id, field: 'txt', value: 'x' }] });
        assert.equal(field.status, 400, JSON.stringify(id));
        assert.equal(field.body.error.message, `changes[0]: id ${VALUE_RULES[refused]}`);
      }
      const pair = await entityPush('vals', { changes: [{ id: 'id 💥', action: 'create', data: { txt: 'pair' } }] });
      assert.equal(pair.body.results[0].status, 'applied');
      const fieldPair = await fieldPush('vals', { changes: [{ entity_id: 'id 💥', field: 'whole', value: 3 }] });
      assert.equal(fieldPair.body.results[0].status, 'applied');
      const rows = await pullRows(server, 'vals');
      const row = rows.get('id 💥');
      assert.deepEqual([row?.id, row?.txt, row?.whole], ['id 💥', 'pair', 3]);
    });

    test('a column named t reads back like any other (the row alias is never taken for it)', async () => {
      const push = await entityPush('aliased', { changes: [{ id: 'a1', action: 'create', data: { t: 'text' } }] });
      assert.equal(push.body.results[0].status, 'applied');
      const rows = await pullRows(server, 'aliased');
      assert.deepEqual(rows.get('a1'), { id: 'a1', t: 'text' });
    });

    test("a resolver's row goes through the same rules: the server row's values round-trip, a value no column holds rejects the change", async () => {
      const created = await entityPush('merged', {
        changes: [{ id: 'm1', action: 'create', data: { txt: 'first', whole: 5, flag: 'on', doc: { keep: [1, 2] }, bytes: 'beef' } }],
      });
      assert.equal(created.body.results[0].status, 'applied');
      const version = created.body.results[0].version;
      // base_version 0: the row moved on since, so the resolver decides.
      const merged = await entityPush('merged', { changes: [{ id: 'm1', action: 'update', data: { txt: 'second' }, base_version: 0 }] });
      assert.equal(merged.body.results[0].status, 'applied', JSON.stringify(merged.body.results[0]));
      assert.equal(merged.body.results[0].merged, true);
      assert.ok(merged.body.results[0].version > version);
      const poisoned = await entityPush('merged', { changes: [{ id: 'm1', action: 'update', data: { txt: 'poison' }, base_version: 0 }] });
      assert.equal(poisoned.status, 200);
      assert.deepEqual([poisoned.body.results[0].status, poisoned.body.results[0].reason], ['rejected', `whole ${VALUE_RULES.integer}`]);
      const rows = await pullRows(server, 'merged');
      assert.deepEqual(rows.get('m1'), { id: 'm1', txt: 'second', whole: 5, flag: true, doc: { keep: [1, 2] }, bytes: 'BEEF' });
    });

    test("an entity schema's output goes through the same rules, in entity and field pushes alike", async () => {
      const entity = await entityPush('shaped', {
        changes: [
          { id: 's1', action: 'create', data: { txt: 'fine', whole: 7 } },
          { id: 's2', action: 'create', data: { txt: 'poison', whole: 7 } },
        ],
      });
      assert.equal(entity.status, 200);
      assert.deepEqual(
        entity.body.results.map((result: { status: string; reason?: string }) => [result.status, result.reason]),
        [
          ['applied', undefined],
          ['rejected', `whole ${VALUE_RULES.integer}`],
        ],
      );
      const field = await fieldPush('shaped', {
        changes: [
          { entity_id: 's1', field: 'whole', value: '8' },
          { entity_id: 's3', field: 'txt', value: 'poison' },
          { entity_id: 's3', field: 'whole', value: 1 },
        ],
      });
      assert.equal(field.status, 200);
      const [fits, ...poisoned] = field.body.results;
      assert.deepEqual([fits.status, fits.value], ['applied', 8]);
      for (const result of poisoned) {
        assert.equal(result.status, 'rejected');
        assert.match(result.reason, new RegExp(`whole:? ${VALUE_RULES.integer.replace(/[()]/g, '\\$&')}$`));
      }
      const rows = await pullRows(server, 'shaped');
      assert.deepEqual([...rows.values()], [{ id: 's1', txt: 'fine', whole: 8 }]);
    });

    test('constraint failures are rejected changes naming the constraint or the columns, worded alike on both stores and both families', async () => {
      const seed = await entityPush('cons', {
        changes: [
          {
            id: 'c1',
            action: 'create',
            data: { title: 'one', email: 'one@example.com', code: 'AbC', a: 1, b: 1, Mixed: 'M', 'odd name': 'o' },
          },
          { id: 'c2', action: 'create', data: { title: 'two' } },
        ],
      });
      assert.deepEqual(
        seed.body.results.map((result: { status: string }) => result.status),
        ['applied', 'applied'],
      );
      // `create`: a new row with these values; `update`: the offending columns written into an existing row
      // (absent where only an insert fails: a missing column, a trigger on insert).
      const cases: Array<{ create: Row; update?: Row; reason: string }> = [
        { create: { email: 'x@example.com' }, reason: 'NOT NULL constraint failed: cons.title' },
        { create: { title: null }, update: { title: null }, reason: 'NOT NULL constraint failed: cons.title' },
        {
          create: { title: 't', email: 'one@example.com' },
          update: { email: 'one@example.com' },
          reason: 'UNIQUE constraint failed: cons.email',
        },
        { create: { title: 't', a: 1, b: 1 }, update: { a: 1, b: 1 }, reason: 'UNIQUE constraint failed: cons.a, cons.b' },
        { create: { title: 't', code: 'abc' }, update: { code: 'abc' }, reason: 'UNIQUE constraint failed: cons_code_lower' },
        { create: { title: 't', size: 11 }, update: { size: 11 }, reason: 'CHECK constraint failed: size_small' },
        { create: { title: 't', qty: -1 }, update: { qty: -1 }, reason: 'CHECK constraint failed' },
        { create: { title: 't', parent: 'nobody' }, update: { parent: 'nobody' }, reason: 'FOREIGN KEY constraint failed' },
        { create: { title: 't', qty: 13 }, reason: 'refused by a trigger' },
        // Names are shown as the database spells them when they are plain identifiers, and left out otherwise.
        { create: { title: 't', Mixed: 'M' }, update: { Mixed: 'M' }, reason: 'UNIQUE constraint failed: cons.Mixed' },
        { create: { title: 't', 'odd name': 'o' }, update: { 'odd name': 'o' }, reason: 'UNIQUE constraint failed' },
      ];
      const reasons: string[] = [];
      const fieldChanges = (id: string, data: Row) => Object.entries(data).map(([field, value]) => ({ entity_id: id, field, value }));
      for (const [index, { create, update, reason }] of cases.entries()) {
        const what = JSON.stringify(create);
        const created = await entityPush('cons', { changes: [{ id: `k${index}`, action: 'create', data: create }] });
        assert.equal(created.status, 200);
        assert.deepEqual([created.body.results[0].status, created.body.results[0].reason], ['rejected', reason], what);
        reasons.push(created.body.results[0].reason);
        // Field sync addresses plain column names only (core/field/validation.ts FIELD_NAME).
        const addressable = Object.keys(create).every((name) => /^[A-Za-z_]\w*$/.test(name));
        // A row created field by field (one INSERT) meets the same constraint, worded the same.
        if (addressable) {
          const fieldCreate = await fieldPush('cons', { changes: fieldChanges(`k${index}`, create) });
          assert.equal(fieldCreate.status, 200);
          for (const result of fieldCreate.body.results) {
            assert.deepEqual([result.status, result.reason], ['rejected', reason], `fields ${what}`);
          }
        }
        if (!update) continue;
        const updated = await entityPush('cons', { changes: [{ id: 'c2', action: 'update', data: update }] });
        assert.deepEqual([updated.body.results[0].status, updated.body.results[0].reason], ['rejected', reason], `update ${what}`);
        // One column per field change: a constraint over two columns is an entity push's to meet.
        if (Object.keys(update).length > 1 || !addressable) continue;
        const fieldUpdate = await fieldPush('cons', { changes: fieldChanges('c2', update) });
        const [result] = fieldUpdate.body.results;
        assert.deepEqual([result.status, result.reason], ['rejected', reason], `field update ${what}`);
        reasons.push(result.reason);
      }
      seen.set(`${store.name} constraints`, reasons);
      const rows = await pullRows(server, 'cons');
      assert.deepEqual([...rows.keys()].sort(), ['c1', 'c2'], 'nothing refused was written');
      assert.deepEqual(rows.get('c2'), {
        id: 'c2',
        title: 'two',
        email: null,
        code: null,
        qty: null,
        size: null,
        parent: null,
        a: null,
        b: null,
        small: null,
        label: null,
        Mixed: null,
        'odd name': null,
      });
    });

    test("an id that does not fit an integer key is the database's to refuse: a rejected change, in the same words", async () => {
      const push = await entityPush('counted', {
        changes: [
          { id: 'abc', action: 'create', data: { n: 1 } },
          { id: '7', action: 'create', data: { n: '2' } },
        ],
      });
      assert.deepEqual(
        push.body.results.map((result: { status: string; reason?: string }) => [result.status, result.reason]),
        [
          ['rejected', 'datatype mismatch'],
          ['applied', undefined],
        ],
      );
      const rows = await pullRows(server, 'counted');
      assert.deepEqual([...rows.values()], [{ id: 7, n: 2 }]);
    });

    test("PostgreSQL array columns are json: a JSON array is stored as the array; anything else is the database's to refuse", async (context) => {
      if (store.name !== 'postgres') return context.skip('SQLite has no array columns');
      const entity = await entityPush('arrays', {
        changes: [
          { id: 'a1', action: 'create', data: { tags: [1, 2, 3] } },
          { id: 'a2', action: 'create', data: { tags: { not: 'an array' } } },
        ],
      });
      assert.deepEqual(
        entity.body.results.map((result: { status: string; reason?: string }) => [result.status, result.reason]),
        [
          ['applied', undefined],
          ['rejected', 'datatype mismatch'],
        ],
      );
      const field = await fieldPush('arrays', { changes: [{ entity_id: 'a3', field: 'tags', value: ['4', 5] }] });
      assert.deepEqual([field.body.results[0].status, field.body.results[0].value], ['applied', [4, 5]]);
      const rows = await pullRows(server, 'arrays');
      assert.deepEqual([rows.get('a1')?.tags, rows.get('a2'), rows.get('a3')?.tags], [[1, 2, 3], undefined, [4, 5]]);
    });

    test("the database's own type limits are PostgreSQL's: smallint and varchar(n) refuse what SQLite holds", async () => {
      const push = await entityPush('cons', {
        changes: [
          { id: 'c1', action: 'update', data: { small: 40000 } },
          { id: 'c1', action: 'update', data: { label: 'longer than five' } },
        ],
      });
      const outcomes = push.body.results.map((result: { status: string; reason?: string }) => [result.status, result.reason]);
      if (store.name === 'postgres') {
        assert.deepEqual(outcomes, [
          ['rejected', 'value out of range'],
          ['rejected', 'value too long'],
        ]);
      } else {
        assert.deepEqual(outcomes, [
          ['applied', undefined],
          ['applied', undefined],
        ]);
      }
    });
  });
}

describe('one value semantics: both stores agree', () => {
  test('every stored value and every constraint reason is the same on SQLite and PostgreSQL', (context) => {
    if (STORES.length < 2) return context.skip('needs both stores (RHTMX_TEST_STORES narrows them)');
    const keys = [...seen.keys()].filter((key) => key.startsWith('sqlite '));
    assert.ok(keys.length > MATRIX.length, 'the matrix ran on SQLite');
    for (const key of keys) {
      const other = key.replace(/^sqlite /, 'postgres ');
      assert.ok(seen.has(other), `${other} ran`);
      assert.deepEqual(seen.get(other), seen.get(key), key);
    }
  });
});
