/**
 * DOM events on `document.body` (bubbling, so `document` listeners and htmx's
 * `from:body` triggers both see them). `rhtmx:<entity>:changed` is coalesced
 * per entity per animation frame: a snapshot of a thousand rows refreshes a
 * list once, not a thousand times.
 */
import type { ChangeAction } from '../core/protocol.js';
import { swapFragment } from './live-html.js';

/** Detail of `rhtmx:<entity>:changed`: every row of the batch, plus the original crate's single-row shape for the last one. */
export interface ChangedDetail {
  entity: string;
  ids: string[];
  id: string;
  action: ChangeAction;
  /** Live HTML: every row of the batch came with its fragment and the page shows it now (no refetch needed). */
  swapped: boolean;
}

/** A row's live HTML as the server sent it: its element id and fragment (none for deletes). */
export type Fragment = [domId: string, html?: string];

/** One changed row as it travels between tabs: `[entity, id, action]`, with its live HTML when it came with one. */
export type RowChange = [entity: string, id: string, action: ChangeAction, fragment?: Fragment];

/** Dispatch once the body exists: a `<script>` in `<head>` runs before it is parsed. */
export function dispatch(name: string, detail: unknown): void {
  const fire = () => document.body.dispatchEvent(new CustomEvent(name, { bubbles: true, detail }));
  if (document.body) fire();
  else document.addEventListener('DOMContentLoaded', fire, { once: true });
}

/**
 * Coalesces row changes and fires one `rhtmx:<entity>:changed` per entity per
 * frame, after swapping in the frame's live HTML fragments, in order.
 */
export function changeEvents(): (changes: RowChange[]) => void {
  /** Each entity's rows of this frame, in order (`id` and `action` of the event are the last one's). */
  const batches = new Map<string, RowChange[]>();
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    for (const [entity, rows] of batches) {
      let swapped = true;
      for (const [, , action, fragment] of rows) {
        swapped = (fragment ? swapFragment(entity, action, fragment[0], fragment[1]) : false) && swapped;
      }
      const [, id, action] = rows[rows.length - 1] as RowChange;
      const ids = [...new Set(rows.map((row) => row[1]))];
      dispatch(`rhtmx:${entity}:changed`, { entity, ids, id, action, swapped } satisfies ChangedDetail);
    }
    batches.clear();
  };
  return (changes) => {
    for (const change of changes) {
      const rows = batches.get(change[0]);
      if (rows) rows.push(change);
      else batches.set(change[0], [change]);
    }
    if (scheduled || batches.size === 0) return;
    scheduled = true;
    // Hidden tabs get no animation frames; a (throttled) timer still delivers there.
    if (document.hidden) setTimeout(flush, 50);
    else requestAnimationFrame(flush);
  };
}
