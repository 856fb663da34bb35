// The demo's sync panel: shows what rhtmx-sync is doing in this tab.
// Every call into window.rhtmxSync is guarded, so the page also works without
// the client (or with an older one). Handles htmx 4 and htmx 2 event names.
(() => {
  const $ = (id) => document.getElementById(id);
  const panel = $('sync-panel');
  const pill = $('sync-connection');
  const versionOut = $('sync-version');
  const pendingOut = $('sync-pending');
  const lastOut = $('sync-last');
  const activity = $('sync-activity');
  const banner = $('offline-banner');
  const badge = $('pending-badge');
  const progress = $('sync-progress');
  const list = $('todo-list');
  const form = $('add-form');
  if (!panel || !list) return;

  const ENTITY = 'todos';
  const MAX_ENTRIES = 14;
  const LABELS = {
    websocket: 'Live · WebSocket',
    sse: 'Live · SSE',
    polling: 'Polling',
    connecting: 'Connecting…',
    reconnecting: 'Reconnecting…',
    offline: 'Offline',
    unavailable: 'Sync client not loaded',
  };

  const api = (name) => {
    const sync = window.rhtmxSync;
    return sync && typeof sync[name] === 'function' ? sync[name].bind(sync) : null;
  };
  const time = (date = new Date()) => date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

  // Connection pill ------------------------------------------------------------
  let heardFromClient = false;

  /** The client's `rhtmx:connection:state` detail may be a string or an object; reduce it to one word. */
  function connectionKey(detail) {
    if (typeof detail === 'string') return detail;
    if (!detail || typeof detail !== 'object') return 'connecting';
    const state = detail.state ?? detail.status;
    const transport = detail.transport ?? detail.mode;
    if (state === 'offline' || detail.online === false) return 'offline';
    if (transport && (state === undefined || ['connected', 'open', 'online', 'live'].includes(state))) return transport;
    if (state === 'disconnected' || state === 'closed') return navigator.onLine ? 'reconnecting' : 'offline';
    return state ?? transport ?? 'connecting';
  }

  function setConnection(key) {
    key = String(key).toLowerCase();
    pill.dataset.state = key;
    pill.textContent = LABELS[key] ?? key.charAt(0).toUpperCase() + key.slice(1);
    if (banner) banner.hidden = key !== 'offline';
  }

  document.addEventListener('rhtmx:connection:state', (event) => {
    heardFromClient = true;
    setConnection(connectionKey(event.detail));
    refreshPending();
  });
  document.addEventListener('rhtmx:sync:ready', () => {
    heardFromClient = true;
    refreshPending();
  });
  window.addEventListener('offline', () => setConnection('offline'));
  window.addEventListener('online', () => {
    if (pill.dataset.state === 'offline') setConnection('connecting');
    refreshPending();
  });
  if (!navigator.onLine) setConnection('offline');
  else {
    const current = api('state')?.();
    if (current?.state) {
      heardFromClient = true;
      setConnection(connectionKey(current));
    }
  }
  // Without a client nothing will ever report a connection: say so instead of "Connecting…" forever.
  setTimeout(() => {
    if (!heardFromClient && !api('pending') && !api('push') && pill.dataset.state === 'connecting') setConnection('unavailable');
  }, 3000);

  // Version and pending count --------------------------------------------------
  let version = Number(panel.dataset.version) || 0;

  function showVersion(value, { exact = false } = {}) {
    const next = Number(value);
    if (!Number.isFinite(next) || next < 0) return;
    if (!exact && next <= version) return;
    version = next;
    versionOut.textContent = String(next);
  }

  let pendingCount = 0;
  function setPending(count) {
    pendingCount = count;
    pendingOut.textContent = String(count);
    pendingOut.parentElement.classList.toggle('has-pending', count > 0);
    if (badge) {
      badge.hidden = count === 0;
      badge.textContent = `${count} change${count === 1 ? '' : 's'} waiting to sync`;
    }
  }

  async function refreshPending() {
    const pending = api('pending');
    if (!pending) return;
    try {
      const value = await pending();
      const count = Array.isArray(value) ? value.length : typeof value === 'object' && value ? Number(value.count) : Number(value);
      if (Number.isFinite(count)) setPending(count);
    } catch {
      // The outbox is unreadable right now (IndexedDB blocked); the next event retries.
    }
  }

  // An htmx form the client took over (offline, or the request failed on the network): it waits in the outbox.
  // htmx saw it complete as 204 No Content, so the add form clears itself (afterRequest below).
  document.addEventListener('rhtmx:offline:queued', (event) => {
    const count = event.detail?.count;
    if (typeof count === 'number') setPending(count);
    else refreshPending();
  });
  // The outbox drains when the server answers; poll it while something waits.
  setInterval(() => {
    if (pendingCount > 0 || !navigator.onLine) refreshPending();
  }, 1000);
  setInterval(refreshPending, 5000);

  // First load progress ----------------------------------------------------------
  // A table too big for one pull page arrives in pages; the client reports each one.
  document.addEventListener('rhtmx:sync:progress', (event) => {
    const { loaded, total } = event.detail ?? {};
    if (!progress || !(total > 0)) return;
    const done = loaded >= total;
    progress.hidden = done;
    progress.querySelector('progress').value = Math.min(1, loaded / total);
    progress.querySelector('.progress-text').textContent = `Loading into this browser: ${loaded} of ${total} rows`;
  });
  document.addEventListener('rhtmx:sync:ready', () => {
    if (progress) progress.hidden = true;
  });

  // Activity log ---------------------------------------------------------------
  /** Titles of rows as last drawn, so a delete can still be named after its row is gone. */
  const titles = new Map();
  /**
   * Rows as the server rendered them into this page (id → "done|title"). The first time such a row
   * reaches IndexedDB unchanged, that is the local copy being filled ("loaded"), not an edit. Decided by
   * the data, never by timing: a list re-fetched before an edit's event arrives must not hide the edit.
   */
  const rendered = new Map([...list.querySelectorAll('.todo[data-id]')].map((row) => [row.dataset.id, signatureOf(row)]));
  function signatureOf(row) {
    return `${row.classList.contains('done')}|${row.querySelector('.title')?.getAttribute('value') ?? ''}`;
  }

  async function describe(id) {
    const known = titles.get(String(id));
    if (known !== undefined) return known;
    const get = api('get');
    if (get) {
      try {
        const row = await get(ENTITY, String(id));
        if (row && typeof row.title === 'string') return row.title;
      } catch {}
    }
    return `#${String(id).slice(0, 8)}`;
  }

  function addEntry(kind, label, text, tooltip) {
    const entry = document.createElement('li');
    const stamp = document.createElement('time');
    stamp.textContent = time();
    const badge = document.createElement('span');
    badge.className = 'action';
    badge.dataset.action = kind;
    badge.textContent = label;
    const what = document.createElement('span');
    what.className = 'what';
    what.textContent = text;
    if (tooltip) what.title = tooltip;
    entry.append(stamp, badge, what);
    activity.querySelector('.idle')?.remove();
    activity.prepend(entry);
    while (activity.children.length > MAX_ENTRIES) activity.lastElementChild.remove();
  }

  /** Split a batch into rows that only filled the local copy and real changes. */
  async function loadedRows(ids) {
    const candidates = ids.filter((id) => rendered.has(id));
    if (!candidates.length) return [];
    let rows = [];
    try {
      rows = (await api('all')?.(ENTITY)) ?? [];
    } catch {}
    const stored = new Map(rows.map((row) => [String(row.id), `${truthy(row.done)}|${row.title ?? ''}`]));
    return candidates.filter((id) => {
      const same = stored.get(id) === rendered.get(id);
      rendered.delete(id);
      return same;
    });
  }

  async function logChange(detail) {
    const ids = (Array.isArray(detail.ids) && detail.ids.length > 0 ? detail.ids : detail.id != null ? [detail.id] : []).map(String);
    const loaded = await loadedRows(ids);
    const edits = ids.filter((id) => !loaded.includes(id));
    if (loaded.length)
      addEntry('load', 'loaded', `${loaded.length} row${loaded.length === 1 ? '' : 's'} into IndexedDB`, loaded.join(', '));
    if (edits.length) {
      const named = await Promise.all(edits.slice(0, 3).map(describe));
      // Which path the change took into this page: its rendered row pushed by the server, or a refetch of the list.
      const path = detail.swapped ? ' · pushed HTML' : ' · list refetched';
      const text = named.join(', ') + (edits.length > 3 ? ` +${edits.length - 3} more` : '') + path;
      if (edits.length > 1) addEntry('batch', `${edits.length} changes`, text, edits.join(', '));
      else addEntry(String(detail.action ?? 'change'), String(detail.action ?? 'change'), text, edits.join(', '));
    }
    lastOut.textContent = time();
  }

  document.addEventListener(`rhtmx:${ENTITY}:changed`, (event) => {
    const detail = event.detail ?? {};
    // Pushed HTML is already in the list (no htmx swap event follows): highlight it now.
    if (detail.swapped) highlightChanges();
    showVersion(detail.version);
    logChange(detail);
    refreshPending();
  });
  document.addEventListener('rhtmx:sync:conflict', (event) => {
    const detail = event.detail ?? {};
    addEntry('conflict', 'conflict', `${detail.entity ?? ENTITY} ${detail.id ?? ''}: server kept its version`.trim());
  });
  document.addEventListener('rhtmx:field:conflict', (event) => {
    const detail = event.detail ?? {};
    addEntry('conflict', 'conflict', `field ${detail.field ?? '?'} of ${detail.entity_id ?? detail.id ?? '?'}`);
  });
  document.addEventListener('rhtmx:sync:error', (event) => {
    const detail = event.detail ?? {};
    addEntry('error', 'error', `${detail.op ?? 'sync'}: ${detail.message ?? detail.name ?? 'failed'}`);
  });

  // Highlight rows that are new or whose title or state changed since the list was last drawn.
  let drawn = null;
  function highlightChanges() {
    const next = new Map();
    for (const row of list.querySelectorAll('.todo[data-id]')) {
      const input = row.querySelector('.title');
      const title = input?.getAttribute('value') ?? '';
      const signature = `${row.classList.contains('done')}|${title}`;
      next.set(row.dataset.id, signature);
      titles.set(row.dataset.id, title);
      if (drawn && drawn.get(row.dataset.id) !== signature) {
        row.classList.remove('flash');
        void row.offsetWidth; // restart the animation
        row.classList.add('flash');
        row.addEventListener('animationend', () => row.classList.remove('flash'), { once: true });
      }
    }
    drawn = next;
  }
  highlightChanges();

  // After every swap of the list: its version, and highlight rows that just changed.
  const afterSwap = () => {
    const stamped = list.querySelector('[data-version]');
    if (stamped) showVersion(stamped.dataset.version, { exact: true });
    list.dataset.source = 'server';
    highlightChanges();
  };
  document.addEventListener('htmx:after:swap', afterSwap);
  document.addEventListener('htmx:afterSwap', afterSwap);

  // Clear the add form once the server accepted the todo.
  const afterRequest = (event) => {
    if (event.target !== form) return;
    const detail = event.detail ?? {};
    const status = detail.ctx?.response?.status ?? detail.xhr?.status;
    if (status >= 200 && status < 300) {
      form.reset();
      form.querySelector('input[name="title"]')?.focus();
    }
  };
  document.addEventListener('htmx:after:request', afterRequest);
  document.addEventListener('htmx:afterRequest', afterRequest);

  // Offline: the list's GET fails, so draw it from this browser's IndexedDB copy.
  // A write to /todos that cannot reach the server is taken over by the sync client (queued in the outbox;
  // htmx sees a 204 and reports no error). Anything else that fails is said, not dropped silently.
  let takenOverAt = 0;
  const tookOver = () => {
    takenOverAt = Date.now();
  };
  document.addEventListener(`rhtmx:${ENTITY}:changed`, tookOver);
  document.addEventListener('rhtmx:offline:queued', tookOver);
  const onRequestError = (event) => {
    if (event.target === list) {
      renderLocal();
      return;
    }
    const failedAt = Date.now();
    setTimeout(() => {
      const slot = $('form-error');
      if (takenOverAt >= failedAt || !slot) return;
      const message = document.createElement('p');
      message.className = 'error';
      message.textContent = navigator.onLine
        ? 'Could not reach the server. Please try again.'
        : 'You are offline and this change could not be saved.';
      slot.replaceChildren(message);
    }, 600);
  };
  document.addEventListener('htmx:error', onRequestError);
  document.addEventListener('htmx:sendError', onRequestError);

  const truthy = (value) => value === true || value === 1 || value === '1' || value === 'true' || value === 'on';

  async function renderLocal() {
    const all = api('all');
    if (!all) return;
    let rows;
    try {
      rows = await all(ENTITY);
    } catch {
      return;
    }
    if (!Array.isArray(rows)) return;
    // Rows with changes still in the outbox are marked: they exist here, not yet on the server.
    let waiting = new Set();
    try {
      waiting = new Set(((await api('pending')?.()) ?? []).filter((entry) => entry.entity === ENTITY).map((entry) => String(entry.id)));
    } catch {}
    rows = rows
      .filter((row) => row && row.id != null)
      .sort((a, b) => (String(a.id) < String(b.id) ? -1 : String(a.id) > String(b.id) ? 1 : 0));
    const swap = list.getAttribute('hx-swap') ?? 'innerHTML';
    const ul = document.createElement('ul');
    ul.className = 'todos';
    for (const row of rows) ul.append(localRow(row, swap, waiting.has(String(row.id))));
    const note = document.createElement('p');
    const left = rows.filter((row) => !truthy(row.done)).length;
    note.className = rows.length ? 'count' : 'empty';
    note.textContent = rows.length ? `${left} of ${rows.length} left · ` : 'Nothing here yet. ';
    const local = document.createElement('span');
    local.className = 'local-note';
    local.textContent = 'local copy from IndexedDB';
    note.append(local);
    list.replaceChildren(ul, note);
    list.dataset.source = 'local';
    window.htmx?.process?.(list);
    highlightChanges();
  }

  /** The same markup as the server's todoItem (views.ts), built without innerHTML. */
  function localRow(row, swap, pending) {
    const id = String(row.id);
    const title = String(row.title ?? '');
    const done = truthy(row.done);
    const url = `/todos/${encodeURIComponent(id)}`;
    const li = document.createElement('li');
    li.className = `todo${done ? ' done' : ''}${pending ? ' pending' : ''}`;
    li.id = `todo-${id}`;
    li.dataset.id = id;
    const common = { 'hx-target': '#todo-list', 'hx-swap': swap };
    const check = element('button', {
      type: 'button',
      class: 'check',
      role: 'checkbox',
      'aria-checked': String(done),
      'aria-label': `${done ? 'Mark as not done' : 'Mark as done'}: ${title}`,
      'hx-patch': url,
      'hx-vals': JSON.stringify({ done: done ? 'false' : 'true' }),
      ...common,
    });
    const input = element('input', {
      class: 'title',
      name: 'title',
      value: title,
      'aria-label': 'Title',
      maxlength: '200',
      required: '',
      autocomplete: 'off',
      spellcheck: 'false',
      'hx-patch': url,
      'hx-trigger': 'change',
      ...common,
    });
    const remove = element('button', {
      type: 'button',
      class: 'delete',
      'aria-label': `Delete: ${title}`,
      title: 'Delete',
      'hx-delete': url,
      ...common,
    });
    remove.textContent = '×';
    li.append(check, input);
    if (pending) {
      const tag = document.createElement('span');
      tag.className = 'pending-tag';
      tag.title = 'Saved in this browser, waiting to reach the server';
      tag.textContent = 'pending';
      li.append(tag);
    }
    li.append(remove);
    return li;
  }

  function element(tag, attributes) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  refreshPending();
})();
