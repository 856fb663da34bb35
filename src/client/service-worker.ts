/**
 * Page side of the opt-in offline service worker (`data-service-worker="true"`):
 * registers `<base>/sw.js` with scope `/`.
 *
 * The page that registers the worker was loaded before the worker existed, so
 * none of it went through the worker's cache. On that first visit the page
 * hands the worker its own URL and the scripts and styles it loaded; a reload
 * or a new tab while offline then still opens. Later visits are cached by the
 * worker itself (network first).
 */
export function registerWorker(url: string, log: (...args: unknown[]) => void): void {
  const workers = navigator.serviceWorker;
  if (!workers) return;
  workers.register(url, { scope: '/' }).catch(log);
  if (workers.controller) return;
  const seed = () =>
    workers.ready.then((registration) =>
      registration.active?.postMessage([
        location.href,
        ...performance
          .getEntriesByType('resource')
          .filter((entry) => /^(script|link|css)$/.test((entry as PerformanceResourceTiming).initiatorType))
          .map((entry) => entry.name),
      ]),
    );
  if (document.readyState === 'complete') seed();
  else addEventListener('load', seed);
}
