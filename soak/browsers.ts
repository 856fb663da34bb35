/**
 * Browser participants: real headless Chromium pages on the demo app, running
 * the real `client.js` (IndexedDB replica, outbox, leader tab, WebSocket with
 * SSE fallback). Each page has its own browser context, so its own IndexedDB,
 * client id and network switch.
 *
 * The client does not expose push answers, so an init script records them
 * as they arrive, before the client sees them: `push_ack` messages on the
 * WebSocket and the bodies of HTTP pushes, into localStorage (which survives
 * the page's reloads).
 */
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import type { Ledger, MutationRecord, WriteAction } from './ledger.js';
import { createShare, type Random, sleep } from './random.js';

/** Same flags as the browser tests (test/browser/browser.ts). */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

const ANSWERS_KEY = 'soak:answers';

/**
 * Runs in the page before any of its scripts: records every push answer the
 * client is about to receive, and delays the WebSocket ones by a random
 * `least`..`most` ms while later live batches pass: the window in which a
 * server sends a live batch before the answer of an earlier push, widened.
 * A string, not a function: tsx's transform would wrap a function's inner
 * class in helpers the page does not have.
 */
const answerScript = ([least, most]: [number, number]) => `(() => {
  const key = ${JSON.stringify(ANSWERS_KEY)};
  const record = (results) => {
    if (!Array.isArray(results)) return;
    try {
      const list = JSON.parse(localStorage.getItem(key) || '[]');
      for (const result of results) {
        if (typeof result.mutation_id !== 'number') continue;
        list.push([result.mutation_id, result.status, result.duplicate === true, typeof result.version === 'number' ? result.version : null]);
      }
      localStorage.setItem(key, JSON.stringify(list));
    } catch (error) {
      // storage unavailable: the answers of this page are not recorded
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      // Registered before the client's onmessage, so it runs first.
      this.addEventListener('message', (event) => {
        if (event.soakDelayed) return;
        let message;
        try {
          message = JSON.parse(String(event.data));
        } catch (error) {
          return; // not JSON: not ours to judge
        }
        if (message.type !== 'push_ack') return;
        record(message.results);
        if (${most} <= 0) return;
        event.stopImmediatePropagation();
        setTimeout(() => {
          // Closed meanwhile: the answer is lost, as with a dropped connection.
          if (this.readyState !== NativeWebSocket.OPEN) return;
          const late = new MessageEvent('message', { data: event.data });
          late.soakDelayed = true;
          this.dispatchEvent(late);
        }, ${least} + Math.random() * ${most - least});
      });
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = async function (input, init) {
    const response = await nativeFetch.call(this, input, init);
    const method = String((init && init.method) || (input instanceof Request ? input.method : 'GET')).toUpperCase();
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (method === 'POST' && new URL(url, location.href).pathname.endsWith('/api/sync/todos') && response.ok) {
      response.clone().json().then((body) => record(body.results), () => {});
    }
    return response;
  };
})();`;

/** How often a participant does what, per action of its loop. */
export interface BrowserBehaviour {
  /** Pause between two actions, ms (uniform). */
  thinkMs: [number, number];
  /** Probability per action of going offline for `offlineMs`. */
  offline: number;
  offlineMs: [number, number];
  /** Probability per action of a reload (from the durable store). */
  reload: number;
  /** Rows the writers steer the table towards. */
  tableRows: number;
  /** Extra delay of push answers (WebSocket and HTTP), ms (uniform), while live batches run ahead. */
  answerDelayMs: [number, number];
}

export const DEFAULT_BROWSER_BEHAVIOUR: BrowserBehaviour = {
  thinkMs: [100, 700],
  offline: 0.03,
  offlineMs: [500, 4000],
  reload: 0.02,
  tableRows: 20,
  answerDelayMs: [0, 300],
};

export interface BrowserStats {
  mutations: number;
  reloads: number;
  offlinePeriods: number;
  /** Page operations that failed (a reload hitting a node that is down, a closed page...). */
  pageErrors: number;
  /** Recorded answers for mutation ids the ledger does not know (must stay 0). */
  unknownAnswers: number;
}

type PageRow = Record<string, unknown>;

export class BrowserClient {
  readonly stats: BrowserStats = { mutations: 0, reloads: 0, offlinePeriods: 0, pageErrors: 0, unknownAnswers: 0 };
  private context: BrowserContext | null = null;
  private page: Page | null = null;
  private offline = false;

  constructor(
    readonly name: string,
    private readonly browser: Browser,
    /** The node this page's origin is on (IndexedDB is per origin: a browser stays with its node). */
    private readonly node: { url: string; up: boolean },
    private readonly ledger: Ledger,
    private readonly random: Random,
    private readonly behaviour: BrowserBehaviour = DEFAULT_BROWSER_BEHAVIOUR,
  ) {}

  async open(): Promise<void> {
    this.context = await this.browser.newContext();
    await this.context.addInitScript({ content: answerScript(this.behaviour.answerDelayMs) });
    const [least, most] = this.behaviour.answerDelayMs;
    if (most > 0) {
      await this.context.route(
        (url) => url.pathname === '/api/sync/todos',
        async (route) => {
          if (route.request().method() !== 'POST') return route.fallback();
          try {
            const response = await route.fetch();
            await sleep(this.random.int(least, most));
            await route.fulfill({ response });
          } catch {
            // the node died under the request: the page sees a network failure
            await route.abort('connectionreset').catch(() => {});
          }
        },
      );
    }
    this.page = await this.context.newPage();
    this.page.on('pageerror', () => {
      this.stats.pageErrors++;
    });
    await this.load();
  }

  /** (Re)load the demo page and wait for the client's initial sync; retried while the node is down. */
  private async load(attempts = 60): Promise<void> {
    const page = this.page as Page;
    for (let attempt = 1; ; attempt++) {
      try {
        await page.goto(`${this.node.url}/`, { waitUntil: 'load', timeout: 15_000 });
        await page.waitForFunction(() => Boolean((window as unknown as { rhtmxSync?: unknown }).rhtmxSync), undefined, { timeout: 15_000 });
        const ready = await page.evaluate(() =>
          Promise.race([
            (window as unknown as { rhtmxSync: { ready: Promise<void> } }).rhtmxSync.ready.then(() => true),
            new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 20_000)),
          ]),
        );
        if (!ready) throw new Error(`${this.name}: the client never became ready`);
        return;
      } catch (error) {
        this.stats.pageErrors++;
        if (attempt >= attempts) throw error;
        await sleep(500);
      }
    }
  }

  /** Random writes, offline periods and reloads until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const { thinkMs, offline, offlineMs, reload } = this.behaviour;
    while (!signal.aborted) {
      await sleep(this.random.int(thinkMs[0], thinkMs[1]), signal);
      if (signal.aborted) break;
      const roll = this.random.next();
      try {
        if (roll < offline) {
          this.stats.offlinePeriods++;
          await this.setOffline(true);
          await sleep(this.random.int(offlineMs[0], offlineMs[1]), signal);
          await this.setOffline(false);
        } else if (roll < offline + reload) {
          // A reload while the node is down would show the browser's error page: the user would wait.
          if (this.node.up && !this.offline) {
            this.stats.reloads++;
            await this.load();
          }
        } else {
          await this.mutateRandomly();
        }
      } catch {
        this.stats.pageErrors++;
        await this.recover();
      }
    }
  }

  private async recover(): Promise<void> {
    if (this.offline) await this.setOffline(false);
    const alive = await this.page?.evaluate(() => Boolean((window as unknown as { rhtmxSync?: unknown }).rhtmxSync)).catch(() => false);
    if (!alive) await this.load();
  }

  async setOffline(offline: boolean): Promise<void> {
    this.offline = offline;
    await this.context?.setOffline(offline);
  }

  private async mutateRandomly(): Promise<void> {
    const page = this.page as Page;
    const ids = (await page.evaluate(() =>
      (window as unknown as { rhtmxSync: { all(entity: string): Promise<PageRow[]> } }).rhtmxSync
        .all('todos')
        .then((rows) => rows.map((row) => String(row.id))),
    )) as string[];
    const roll = this.random.next();
    const creates = createShare(ids.length, this.behaviour.tableRows);
    let action: WriteAction = 'create';
    let id: string | undefined;
    if (ids.length > 0 && roll >= creates) {
      id = this.random.pick(ids);
      action = roll < creates + 0.25 ? 'delete' : 'update';
    }
    const tag = this.ledger.nextTag(this.name);
    const record: MutationRecord = this.ledger.issue({
      participant: this.name,
      kind: 'browser',
      tag,
      id: id ?? null,
      action,
      mutationId: null,
    });
    const change =
      action === 'delete' ? { action, id } : { action, id, data: { title: tag, done: action === 'update' && this.random.chance(0.5) } };
    const entry = (await page.evaluate(
      (change) =>
        (
          window as unknown as { rhtmxSync: { push(entity: string, change: unknown): Promise<{ mutation_id: number; id: string }> } }
        ).rhtmxSync
          .push('todos', change)
          .then((entry) => ({ mutation_id: entry.mutation_id, id: entry.id })),
      change,
    )) as { mutation_id: number; id: string };
    record.id = entry.id;
    this.ledger.bind(record, entry.mutation_id);
    this.stats.mutations++;
  }

  /** Back online, and a working page, for the final drain. */
  async settle(): Promise<void> {
    if (this.offline) await this.setOffline(false);
    await this.recover().catch(() => this.load());
  }

  async rows(): Promise<PageRow[]> {
    return (await this.page?.evaluate(() =>
      (window as unknown as { rhtmxSync: { all(entity: string): Promise<PageRow[]> } }).rhtmxSync.all('todos'),
    )) as PageRow[];
  }

  async pendingCount(): Promise<number> {
    return (await this.page?.evaluate(() =>
      (window as unknown as { rhtmxSync: { pending(): Promise<unknown[]> } }).rhtmxSync.pending().then((entries) => entries.length),
    )) as number;
  }

  /** Pull over HTTP now (diagnosis of a divergent page: does a fresh pull fix it?). */
  async syncNow(): Promise<void> {
    await this.page?.evaluate(() =>
      (window as unknown as { rhtmxSync: { syncEntity(entity: string): Promise<void> } }).rhtmxSync.syncEntity('todos'),
    );
  }

  /** Copy the answers the page recorded into the ledger. */
  async collectAnswers(): Promise<void> {
    const raw = (await this.page?.evaluate((key) => localStorage.getItem(key), ANSWERS_KEY)) ?? '[]';
    for (const [mutationId, status, duplicate, version] of JSON.parse(raw) as Array<
      [number, 'applied' | 'conflict' | 'rejected', boolean, number | null]
    >) {
      const known = this.ledger.answer(this.name, mutationId, { status, duplicate, version: version ?? undefined });
      if (!known) this.stats.unknownAnswers++;
    }
  }

  async close(): Promise<void> {
    await this.context?.close().catch(() => {});
  }
}
