/**
 * Shared headless Chromium launcher for the browser tests (Debian's
 * chromium, driven by playwright-core; nothing is downloaded). $CHROMIUM_PATH
 * picks another binary; scripts/preflight.mjs checks (or installs) it first.
 */
import { type Browser, chromium, type Page } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

/** The Chromium the browser tests launch: $CHROMIUM_PATH when set (and not empty), else Debian's. */
export function chromiumPath(): string {
  return process.env.CHROMIUM_PATH || '/usr/bin/chromium';
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumPath(), args: CHROMIUM_ARGS });
}

/** Print the page's console and errors when RHTMX_BROWSER_LOG is set (debugging failing tests). */
export function forwardConsole(page: Page, label: string): void {
  page.on('pageerror', (error) => console.error(`[${label}] pageerror`, error));
  if (!process.env.RHTMX_BROWSER_LOG) return;
  page.on('console', (message) => console.log(`[${label}] ${message.type()}: ${message.text()}`));
}

/** Poll a page-side function (sync or async) until it returns something truthy (arrival, never timing). */
export async function waitInPage<T, A = undefined>(
  page: Page,
  fn: (arg: A) => T | Promise<T>,
  ms = 10_000,
  what = 'page condition',
  arg?: A,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = (await page.evaluate(fn as (arg: unknown) => unknown, arg as unknown)) as T;
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
