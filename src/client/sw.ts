/**
 * The offline service worker, served at `/api/sync/sw.js` with
 * `Service-Worker-Allowed: /` and registered by the client when the script
 * tag says `data-service-worker="true"`.
 *
 * Network first: same-origin page navigations, scripts, styles and fonts are
 * fetched as usual and a copy kept; only when the network fails is the copy
 * served, so a reload or a new tab while offline still opens the app (which
 * then draws its data from IndexedDB).
 *
 * Never cached: anything but GET, other origins, htmx and `fetch()` requests
 * (their answers are data, and a stale copy would hide offline changes), and
 * everything under the sync base path except the client scripts.
 */

// The client's tsconfig has the DOM library; the few worker types used here are declared instead of `lib: webworker`.
interface ExtendableEvent extends Event {
  waitUntil(promise: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  request: Request;
  respondWith(response: Promise<Response>): void;
}
interface MessageEventInWorker extends ExtendableEvent {
  data: unknown;
}
interface WorkerScope {
  location: Location;
  skipWaiting(): Promise<void>;
  clients: { claim(): Promise<void> };
  addEventListener(type: 'install' | 'activate', listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: 'message', listener: (event: MessageEventInWorker) => void): void;
  addEventListener(type: 'fetch', listener: (event: FetchEvent) => void): void;
}
const worker = self as unknown as WorkerScope;

const CACHE = 'rhtmx-sync-pages';
/** The sync base path, from where this worker is served: `/api/sync/sw.js` → `/api/sync/`. */
const base = worker.location.pathname.replace(/[^/]*$/, '');

const cacheable = (url: URL) =>
  url.origin === worker.location.origin && (!url.pathname.startsWith(base) || /client\.js$/.test(url.pathname));

worker.addEventListener('install', () => void worker.skipWaiting());
worker.addEventListener('activate', (event) => event.waitUntil(worker.clients.claim()));

// The first page hands over what it loaded before this worker controlled it.
worker.addEventListener('message', (event) => {
  const urls = (Array.isArray(event.data) ? event.data : []).filter((url) => typeof url === 'string' && cacheable(new URL(url)));
  event.waitUntil(caches.open(CACHE).then((cache) => Promise.all(urls.map((url: string) => cache.add(url).catch(() => {})))));
});

worker.addEventListener('fetch', (event) => {
  const { request } = event;
  const page = request.mode === 'navigate';
  if (
    request.method !== 'GET' ||
    !cacheable(new URL(request.url)) ||
    !(page || /^(script|style|font|manifest)$/.test(request.destination))
  ) {
    return;
  }
  event.respondWith(
    fetch(request).then(
      (response) => {
        if (response.ok && response.type === 'basic') {
          const copy = response.clone();
          event.waitUntil(
            caches
              .open(CACHE)
              .then((cache) => cache.put(request, copy))
              .catch(() => {}),
          );
        }
        return response;
      },
      async (error) => {
        // A new tab may ask for the page with another query string than the one kept.
        const copy =
          (await caches.match(request, { ignoreVary: true })) ??
          (page ? await caches.match(request, { ignoreVary: true, ignoreSearch: true }) : undefined);
        if (copy) return copy;
        throw error;
      },
    ),
  );
});
