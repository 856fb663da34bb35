/**
 * Server-rendered HTML for the demo. Every interpolated value is escaped by
 * the `html` tag; only fragments built by `html` itself pass through raw.
 */
import { readFileSync } from 'node:fs';
import type { Todo } from './db.js';

/** A string that is already HTML (built by `html`), so it is not escaped again. */
export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (char) => ESCAPES[char] as string);
}

function render(value: unknown): string {
  if (value instanceof SafeHtml) return value.value;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value === null || value === undefined || value === false) return '';
  return escapeHtml(String(value));
}

/** Tagged template: escapes every value except nested `html` fragments (and arrays of them). */
export function html(strings: TemplateStringsArray, ...values: unknown[]): SafeHtml {
  let out = strings[0] ?? '';
  values.forEach((value, index) => {
    out += render(value) + (strings[index + 1] ?? '');
  });
  return new SafeHtml(out);
}

const STYLE = readFileSync(new URL('./style.css', import.meta.url), 'utf8');

/** Which htmx the page loads: 4 (npm's latest, the default) or 2 (still the most used). */
export type HtmxMajor = 2 | 4;

export interface ViewOptions {
  htmx: HtmxMajor;
  /** Passed to the sync client's `data-debug`. */
  debug: boolean;
}

/** htmx 4 morphs the list in place (focus, caret and typed text survive live updates); htmx 2 cannot. */
const listSwap = (options: ViewOptions) => (options.htmx === 4 ? 'innerMorph' : 'innerHTML');

/** JSON for an `hx-vals` attribute (escaped by `html` like any other value). */
const vals = (value: Record<string, string>) => JSON.stringify(value);

export function todoItem(todo: Todo, options: ViewOptions): SafeHtml {
  const url = `/todos/${encodeURIComponent(todo.id)}`;
  const swap = listSwap(options);
  // A button, not <input type="checkbox">: once clicked, a checkbox's `checked`
  // property no longer follows its attribute, so a live update from another tab
  // could leave it showing the old state. A button's aria-checked always follows.
  return html`<li class="todo${todo.done ? ' done' : ''}" id="todo-${todo.id}" data-id="${todo.id}">
  <button type="button" class="check" role="checkbox" aria-checked="${todo.done ? 'true' : 'false'}"
    aria-label="${todo.done ? 'Mark as not done' : 'Mark as done'}: ${todo.title}"
    hx-patch="${url}" hx-vals="${vals({ done: todo.done ? 'false' : 'true' })}" hx-target="#todo-list" hx-swap="${swap}"></button>
  <input class="title" name="title" value="${todo.title}" aria-label="Title" maxlength="200" required autocomplete="off"
    spellcheck="false" hx-patch="${url}" hx-trigger="change" hx-target="#todo-list" hx-swap="${swap}">
  <button type="button" class="delete" aria-label="Delete: ${todo.title}" title="Delete"
    hx-delete="${url}" hx-target="#todo-list" hx-swap="${swap}">&times;</button>
</li>`;
}

/**
 * The list fragment: what GET /todos returns and every write answers with.
 * `data-version` is the sync version the list was read at (shown in the sync panel).
 */
export function todoList(todos: Todo[], version: number, options: ViewOptions): SafeHtml {
  const left = todos.filter((todo) => !todo.done).length;
  // data-rhtmx-live: where live HTML puts a todo this page does not show yet (docs/live-html.md).
  return html`<ul class="todos" data-version="${version}" data-rhtmx-live="todos">
${todos.map((todo) => todoItem(todo, options))}
</ul>
${todoCount(todos.length, left)}`;
}

/** The count line under the list; live HTML sends it out of band with each pushed todo. */
export function todoCount(total: number, left: number, outOfBand = false): SafeHtml {
  const oob = outOfBand ? new SafeHtml(' hx-swap-oob="true"') : '';
  return total === 0
    ? html`<p id="todo-count" class="empty"${oob}>Nothing to do yet. Add something above, or from another tab.</p>`
    : html`<p id="todo-count" class="count"${oob}>${left === 0 ? 'All done' : `${left} of ${total} left`}</p>`;
}

/** Live HTML: one todo's fragment as the server pushes it, with the count line out of band. */
export function liveTodo(todo: Todo, counts: { total: number; left: number }, options: ViewOptions): SafeHtml {
  return html`${todoItem(todo, options)}${todoCount(counts.total, counts.left, true)}`;
}

/** A successful write also clears any previous error message (out of band). */
export function afterWrite(todos: Todo[], version: number, options: ViewOptions): SafeHtml {
  return html`${todoList(todos, version, options)}
<div id="form-error" hx-swap-oob="innerHTML"></div>`;
}

/** The message shown in #form-error for a rejected write. */
export function errorMessage(message: string): SafeHtml {
  return html`<p class="error">${message}</p>`;
}

export interface PageData {
  todos: Todo[];
  version: number;
  /** Which database the server writes to, for the panel's footer. */
  store: string;
}

/** The whole page: header, add form, list and the live sync panel. */
export function page(data: PageData, options: ViewOptions): SafeHtml {
  const swap = listSwap(options);
  // htmx 2 does not swap 4xx answers by default; the demo's 400s carry the message to show.
  const htmx2Config = html`<meta name="htmx-config" content="${JSON.stringify({
    responseHandling: [
      { code: '204', swap: false },
      { code: '[23]..', swap: true },
      { code: '4..', swap: true, error: true },
      { code: '...', swap: false, error: true },
    ],
  })}">`;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Todos · rhtmx-sync</title>
<link rel="icon" href="data:,">
${options.htmx === 2 ? htmx2Config : ''}
<style>${new SafeHtml(STYLE)}</style>
<script src="/vendor/htmx.min.js"></script>
<script src="/api/sync/client.js" data-sync-entities="todos" data-service-worker="true" data-debug="${options.debug ? 'true' : 'false'}"></script>
<script src="/app.js" defer></script>
</head>
<body>
<main class="layout">
  <section class="card todos-card" aria-labelledby="title">
    <header class="head">
      <h1 id="title">Todos</h1>
      <p class="lede">Kept in this browser's IndexedDB by rhtmx-sync. Open a second tab, or write to the database
        directly, and watch changes arrive.</p>
    </header>
    <p id="offline-banner" class="banner" hidden>You are offline. Changes are kept in this browser and sync when you reconnect.</p>
    <p id="pending-badge" class="badge" role="status" hidden></p>
    <div id="sync-progress" class="progress" hidden>
      <progress max="1" value="0" aria-label="Loading into this browser"></progress>
      <span class="progress-text"></span>
    </div>
    <form id="add-form" class="add" hx-post="/todos" hx-target="#todo-list" hx-swap="${swap}" autocomplete="off">
      <input name="title" placeholder="What needs doing?" aria-label="New todo" required maxlength="200">
      <button type="submit">Add</button>
    </form>
    <div id="form-error" role="alert"></div>
    <div id="todo-list" hx-get="/todos" hx-trigger="load, rhtmx:todos:changed[!detail.swapped] from:body" hx-swap="${swap}">
${todoList(data.todos, data.version, options)}
    </div>
  </section>
  <aside class="card sync-card" id="sync-panel" aria-labelledby="sync-title" data-version="${data.version}">
    <div class="sync-head">
      <h2 id="sync-title">Sync</h2>
      <span id="sync-connection" class="pill" data-state="connecting">Connecting…</span>
    </div>
    <dl class="stats">
      <div><dt>Version</dt><dd id="sync-version">${data.version}</dd></div>
      <div><dt>Pending</dt><dd id="sync-pending">0</dd></div>
      <div><dt>Updated</dt><dd id="sync-last">–</dd></div>
    </dl>
    <h3>Live activity</h3>
    <ol id="sync-activity" class="activity" aria-live="polite">
      <li class="idle">Waiting for changes…</li>
    </ol>
    <p class="foot">Server: ${data.store} · htmx ${options.htmx}</p>
  </aside>
</main>
</body>
</html>
`;
}
