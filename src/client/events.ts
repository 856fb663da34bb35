/**
 * DOM events on `document.body` (bubbling, so `document` listeners and htmx's
 * `from:body` triggers both see them). `rhtmx:<entity>:changed` is coalesced
 * per entity per animation frame: a snapshot of a thousand rows refreshes a
 * list once, not a thousand times.
 */
import type { ChangeAction } from '../core/protocol.js';

/** Detail of `rhtmx:<entity>:changed`: every row of the batch, plus the original crate's single-row shape for the last one. */
export interface ChangedDetail {
  entity: string;
  ids: string[];
  id: string;
  action: ChangeAction;
}

/** One changed row as it travels between tabs: `[entity, id, action]`. */
export type RowChange = [entity: string, id: string, action: ChangeAction];

/** Dispatch once the body exists: a `<script>` in `<head>` runs before it is parsed. */
export function dispatch(name: string, detail: unknown): void {
  const fire = () => document.body.dispatchEvent(new CustomEvent(name, { bubbles: true, detail }));
  if (document.body) fire();
  else document.addEventListener('DOMContentLoaded', fire, { once: true });
}

/** Coalesces row changes and fires one `rhtmx:<entity>:changed` per entity per frame. */
export function changeEvents(): (changes: RowChange[]) => void {
  const batches = new Map<string, { ids: Set<string>; id: string; action: ChangeAction }>();
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    for (const [entity, { ids, id, action }] of batches) {
      dispatch(`rhtmx:${entity}:changed`, { entity, ids: [...ids], id, action } satisfies ChangedDetail);
    }
    batches.clear();
  };
  return (changes) => {
    for (const [entity, id, action] of changes) {
      const ids = batches.get(entity)?.ids ?? new Set<string>();
      batches.set(entity, { ids: ids.add(id), id, action });
    }
    if (scheduled || batches.size === 0) return;
    scheduled = true;
    // Hidden tabs get no animation frames; a (throttled) timer still delivers there.
    if (document.hidden) setTimeout(flush, 50);
    else requestAnimationFrame(flush);
  };
}
