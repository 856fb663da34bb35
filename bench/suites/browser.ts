/**
 * Benchmark 6: the browser side, in headless Chromium (Debian's, driven by
 * playwright-core).
 *   - Catch-up into IndexedDB through our real client (`client.js` with
 *     `data-sync-entities`), from page start to `rhtmxSync.ready`, against a
 *     raw IndexedDB `put` of the same rows (the floor: no network, no JSON)
 *     and against PouchDB replicating the same documents into IndexedDB.
 *   - Client size, gzipped (level 9, as served), next to Electric's,
 *     Replicache's and PouchDB's browser clients bundled and gzipped here.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { type BenchContext, bytes, ms, rate, type SuiteResult, times } from '../lib/context.js';
import { ROOT, Worker } from '../lib/proc.js';
import { median } from '../lib/stats.js';

const SERVER = join(ROOT, 'bench/http/server.ts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-sync'];

const gz = (data: Uint8Array) => gzipSync(data, { level: 9 }).byteLength;

async function withServer<T>(start: Record<string, unknown>, body: (server: Worker, origin: string) => Promise<T>): Promise<T> {
  const server = await Worker.start('browser-server', SERVER);
  try {
    const { port } = await server.call<{ port: number }>('start', start);
    return await body(server, `http://127.0.0.1:${port}`);
  } finally {
    await server.call('stop').catch(() => {});
    await server.stop();
  }
}

/** A fresh browser context (empty IndexedDB) per measurement. */
async function inPage<T>(browser: Browser, url: string, run: (page: import('playwright-core').Page) => Promise<T>): Promise<T> {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error('[bench page]', error.message));
    await page.goto(url);
    return await run(page);
  } finally {
    await context.close();
  }
}

/** The floor: `put` rows already in memory (fetched and parsed before the clock starts), `perTx` rows per transaction. */
async function rawPut(browser: Browser, origin: string, perTx: number): Promise<number> {
  return inPage(browser, `${origin}/bench/blank.html`, (page) =>
    page.evaluate(async (perTx) => {
      const rows = (await (await fetch('/rows')).json()) as Array<Record<string, unknown>>;
      for (const row of rows) row.id = String(row.id);
      const db = await new Promise<IDBDatabase>((resolve, reject) => {
        const request = indexedDB.open('floor', 1);
        request.onupgradeneeded = () => request.result.createObjectStore('items', { keyPath: 'id' });
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
      const start = performance.now();
      for (let from = 0; from < rows.length; from += perTx) {
        await new Promise<void>((resolve, reject) => {
          const tx = db.transaction('items', 'readwrite');
          const store = tx.objectStore('items');
          for (let i = from; i < Math.min(rows.length, from + perTx); i++) store.put(rows[i]);
          tx.oncomplete = () => resolve();
          tx.onerror = () => reject(tx.error);
        });
      }
      const elapsed = performance.now() - start;
      const count = await new Promise<number>((resolve) => {
        const request = db.transaction('items').objectStore('items').count();
        request.onsuccess = () => resolve(request.result);
      });
      if (count !== rows.length) throw new Error(`floor stored ${count} of ${rows.length}`);
      return elapsed;
    }, perTx),
  );
}

/** Our client from a script tag: page start → `rhtmxSync.ready` (every row pulled and committed to IndexedDB). */
async function ourCatchUp(browser: Browser, origin: string, rows: number): Promise<number> {
  return inPage(browser, `${origin}/bench/client.html`, (page) =>
    page.evaluate(async (rows) => {
      const w = window as unknown as { rhtmxSync?: { ready: Promise<void> }; __t0: number };
      if (!w.rhtmxSync?.ready) throw new Error('window.rhtmxSync.ready is missing');
      await w.rhtmxSync.ready;
      const elapsed = performance.now() - w.__t0;
      const count = await new Promise<number>((resolve, reject) => {
        const request = indexedDB.open('rhtmx-sync');
        request.onsuccess = () => {
          const counted = request.result.transaction('items').objectStore('items').count();
          counted.onsuccess = () => resolve(counted.result);
          counted.onerror = () => reject(counted.error);
        };
        request.onerror = () => reject(request.error);
      });
      if (count !== rows) throw new Error(`client stored ${count} of ${rows} rows`);
      return elapsed;
    }, rows),
  );
}

/** PouchDB (its browser build, IndexedDB adapter) replicating from express-pouchdb on the same origin. */
async function pouchCatchUp(browser: Browser, origin: string, rows: number): Promise<number> {
  return inPage(browser, `${origin}/bench/pouch.html`, (page) =>
    page.evaluate(async (rows) => {
      const PouchDB = (window as unknown as { PouchDB: any }).PouchDB;
      const local = new PouchDB(`local-${Date.now()}`);
      const start = performance.now();
      await PouchDB.replicate(`${location.origin}/items`, local);
      const elapsed = performance.now() - start;
      const info = await local.info();
      if (info.doc_count !== rows) throw new Error(`PouchDB stored ${info.doc_count} of ${rows}`);
      return elapsed;
    }, rows),
  );
}

async function bundleSize(entry: string): Promise<{ minified: number; gzipped: number }> {
  const result = await build({
    stdin: { contents: `import * as peer from '${entry}'; globalThis.__peer = peer;`, resolveDir: join(ROOT, 'bench'), loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2020'],
    write: false,
    logLevel: 'silent',
    legalComments: 'none',
    define: { 'process.env.NODE_ENV': '"production"', global: 'globalThis' },
  });
  const code = result.outputFiles[0]?.contents ?? new Uint8Array();
  return { minified: code.byteLength, gzipped: gz(code) };
}

async function clientSizes() {
  const ours = readFileSync(join(ROOT, 'dist/client/rhtmx-sync.js'));
  const version = (pkg: string) =>
    (JSON.parse(readFileSync(join(ROOT, 'bench/node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
  const pouchDist = readFileSync(join(ROOT, 'bench/node_modules/pouchdb/dist/pouchdb.min.js'));
  const peers = [
    {
      name: '@electric-sql/client',
      version: version('@electric-sql/client'),
      how: 'esbuild bundle of the package, minified',
      ...(await bundleSize('@electric-sql/client')),
    },
    {
      name: 'replicache',
      version: version('replicache'),
      how: 'esbuild bundle of the package, minified',
      ...(await bundleSize('replicache')),
    },
    {
      name: 'pouchdb-browser',
      version: version('pouchdb-browser'),
      how: 'esbuild bundle of the package, minified',
      ...(await bundleSize('pouchdb-browser')),
    },
    {
      name: 'pouchdb (dist/pouchdb.min.js)',
      version: version('pouchdb'),
      how: 'as shipped',
      minified: pouchDist.byteLength,
      gzipped: gz(pouchDist),
    },
  ];
  return { ours: { name: 'rhtmx-sync client.js', minified: ours.byteLength, gzipped: gz(ours) }, peers };
}

export async function browserSuite(ctx: BenchContext): Promise<SuiteResult> {
  const rows = ctx.quick ? 10_000 : 100_000;
  const rounds = ctx.quick ? 1 : 3;
  const n = rows.toLocaleString('en-US');
  const todo: string[] = [];
  const sizes = await clientSizes();
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  const floor1k: number[] = [];
  const floor10k: number[] = [];
  const ours: number[] = [];
  const pouch: number[] = [];
  let clientError: string | null = null;
  try {
    for (let round = 1; round <= rounds; round++) {
      ctx.log(`browser ${n} rows, round ${round}/${rounds}: raw IndexedDB put`);
      await withServer({ mode: 'plain', rows }, async (server, origin) => {
        await server.call('file', { path: '/bench/blank.html', type: 'text/html', text: '<!doctype html><title>floor</title>' });
        floor1k.push(await rawPut(browser, origin, 1000));
        floor10k.push(await rawPut(browser, origin, 10_000));
      });
      ctx.log(`  ${ms(floor1k.at(-1) ?? Number.NaN)} ms (1,000/tx), ${ms(floor10k.at(-1) ?? Number.NaN)} ms (10,000/tx); rhtmx client`);
      if (clientError === null) {
        await withServer({ mode: 'rhtmx', rows }, async (server, origin) => {
          await server.call('file', {
            path: '/bench/client.html',
            type: 'text/html',
            text: '<!doctype html><title>rhtmx</title><script>window.__t0 = performance.now()</script><script src="/api/sync/client.js" data-sync-entities="items"></script>',
          });
          try {
            ours.push(await ourCatchUp(browser, origin, rows));
          } catch (error) {
            clientError = (error as Error).message.split('\n')[0] ?? 'failed';
          }
        });
        ctx.log(clientError ? `  client not measurable: ${clientError}` : `  ${ms(ours.at(-1) ?? Number.NaN)} ms`);
      }
      // PouchDB into IndexedDB takes tens of seconds for 100k rows: once per run is enough.
      if (round === 1) {
        ctx.log('  PouchDB into IndexedDB');
        await withServer({ mode: 'pouch', rows }, async (server, origin) => {
          await server.call('file', {
            path: '/bench/pouchdb.min.js',
            type: 'text/javascript',
            from: join(ROOT, 'bench/node_modules/pouchdb/dist/pouchdb.min.js'),
          });
          await server.call('file', {
            path: '/bench/pouch.html',
            type: 'text/html',
            text: '<!doctype html><title>pouch</title><script src="/bench/pouchdb.min.js"></script>',
          });
          pouch.push(await pouchCatchUp(browser, origin, rows));
        });
        ctx.log(`  ${ms(pouch.at(-1) ?? Number.NaN)} ms`);
      }
    }
  } finally {
    await browser.close();
  }
  const f1 = median(floor1k);
  const f10 = median(floor10k);
  const o = ours.length ? median(ours) : Number.NaN;
  const p = median(pouch);
  if (clientError) {
    todo.push(`the browser client could not be measured (${clientError}); only the raw IndexedDB floor is reported.`);
  }
  const perSecond = (value: number) => rate(rows / (value / 1000));
  const rowsTable: Array<Array<string | number>> = [
    [`rhtmx-sync client: page start → \`rhtmxSync.ready\` (HTTP pull + IndexedDB)`, ms(o), perSecond(o), times(o / f1), times(p / o)],
    [`PouchDB ${sizes.peers[3]?.version} replicate → IndexedDB (1 run)`, ms(p), perSecond(p), times(p / f1), times(1)],
    ['raw IndexedDB put, 1,000 rows/tx (floor)', ms(f1), perSecond(f1), times(1), times(p / f1)],
    ['raw IndexedDB put, 10,000 rows/tx', ms(f10), perSecond(f10), times(f10 / f1), times(p / f10)],
  ];
  const sizeRows = [
    [sizes.ours.name, bytes(sizes.ours.minified), bytes(sizes.ours.gzipped), times(1)],
    ...sizes.peers.map((peer) => [
      `${peer.name} ${peer.version}`,
      bytes(peer.minified),
      bytes(peer.gzipped),
      times(peer.gzipped / sizes.ours.gzipped),
    ]),
  ];
  return {
    id: 'browser',
    title: `6. Browser: catch-up of ${n} rows into IndexedDB, and client size`,
    method: `Headless Chromium (${CHROMIUM}), a fresh browser context (empty IndexedDB) per measurement, server in its own process. Ours: the page loads \`/api/sync/client.js\` with \`data-sync-entities="items"\`; timed from the first script to \`rhtmxSync.ready\` (every row pulled and committed, cursor included), then the stored rows are counted. Floor: the same rows already parsed in the page, \`put\` into one object store. Median of ${rounds} round(s) (PouchDB: 1 run).`,
    table: { columns: ['what', 'ms', 'rows/s', 'vs raw put floor', 'speed-up vs PouchDB'], rows: rowsTable },
    extraTables: [
      {
        title: 'Client size (gzip -9, as served)',
        columns: ['client', 'minified', 'gzipped', 'vs ours'],
        rows: sizeRows,
      },
    ],
    notes: [
      "Peers are bundled here with esbuild (minified, ESM, every export kept) from their npm packages in bench/node_modules; PouchDB's own dist file is listed as shipped.",
    ],
    targets: clientError
      ? []
      : [
          {
            what: `browser catch-up of ${n} rows, page start → ready, vs the raw IndexedDB put floor (1,000 rows/tx)`,
            ratio: o / f1,
            goal: '≤ 1.2× the floor',
            met: o / f1 <= 1.2,
          },
        ],
    todo,
    data: { rows, ms: { ours: o, pouch: p, floor1k: f1, floor10k: f10 }, runs: { ours, pouch, floor1k, floor10k }, sizes, clientError },
  };
}
