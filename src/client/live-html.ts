/**
 * Live HTML (docs/live-html.md): swap a row's pushed fragment into the page
 * with htmx's out-of-band rules, then let htmx process what came in.
 *
 * The row's element (the one with its `dom_id`) replaces the element of that
 * id; a row the page does not show yet goes where the page says: into the
 * target of an `hx-swap-oob="<strategy>:<selector>"` wrapper around it, else
 * into the element marked `data-rhtmx-live="<entity>"`, at the position of its
 * `data-rhtmx-live-swap` (default `beforeend`). Other top-level elements that
 * carry `hx-swap-oob` (a count, a badge) are swapped as htmx swaps them; a
 * delete removes the row's element and swaps only those.
 */
import type { ChangeAction } from '../core/protocol.js';

type Position = 'beforebegin' | 'afterbegin' | 'beforeend' | 'afterend';
const POSITIONS = ['beforebegin', 'afterbegin', 'beforeend', 'afterend'];
const OOB = 'hx-swap-oob';

const processed = (elements: Element[]) => {
  const htmx = (window as { htmx?: { process(element: Element): void } }).htmx;
  for (const element of elements) htmx?.process(element);
};

/** htmx's outer swap: the element itself replaces its target. */
const isOuter = (strategy: string) => strategy === 'true' || strategy === 'outerHTML';

/** Put `nodes` at `strategy` of `target`: an insert position, or innerHTML / outerHTML (true) / delete. */
function place(target: Element, strategy: string, nodes: Node[]): Element[] {
  const elements = nodes.filter((node): node is Element => node instanceof Element);
  if (strategy === 'delete') target.remove();
  else if (strategy === 'innerHTML') target.replaceChildren(...nodes);
  else if (POSITIONS.includes(strategy)) {
    // Inserted in order: each after the one before it.
    const position = strategy as Position;
    const fragment = document.createDocumentFragment();
    fragment.append(...nodes);
    if (position === 'beforebegin') target.before(fragment);
    else if (position === 'afterbegin') target.prepend(fragment);
    else if (position === 'beforeend') target.append(fragment);
    else target.after(fragment);
  } else if (isOuter(strategy)) target.replaceWith(...nodes);
  else return [];
  return elements;
}

/** Swap one top-level `hx-swap-oob` element as htmx would; returns whether it found its target. */
function outOfBand(element: Element, spec: string): Element[] | null {
  element.removeAttribute(OOB);
  const colon = spec.indexOf(':');
  const strategy = (colon < 0 ? spec : spec.slice(0, colon)) || 'true';
  const selector = colon < 0 ? null : spec.slice(colon + 1);
  const target = selector ? document.querySelector(selector) : element.id ? document.getElementById(element.id) : null;
  if (!target) return null;
  return place(target, strategy, isOuter(strategy) ? [element] : [...element.childNodes]);
}

/** Apply one row's fragment; true when the page now shows what the change says. */
export function swapFragment(entity: string, action: ChangeAction, domId: string, html: string | undefined): boolean {
  const current = document.getElementById(domId);
  if (action === 'delete') current?.remove();
  if (html === undefined) return action === 'delete';
  const template = document.createElement('template');
  template.innerHTML = html;
  // A delete's HTML holds only out-of-band elements (renderDeleted); a create or update's, the row too.
  const row = action === 'delete' ? null : template.content.getElementById(domId);
  if (!row && action !== 'delete') return false;
  let landed = action === 'delete';
  const added: Element[] = [];
  for (const top of [...template.content.children]) {
    const spec = top.getAttribute(OOB);
    if (row && (top === row || top.contains(row))) {
      if (current) {
        // The row alone replaces what the page shows (a wrapper around it is dropped).
        row.removeAttribute(OOB);
        current.replaceWith(row);
        added.push(row);
        landed = true;
      } else if (spec !== null && spec.includes(':')) {
        const swapped = outOfBand(top, spec);
        if (swapped) added.push(...swapped);
        landed = swapped !== null;
      } else {
        const list = document.querySelector(`[data-rhtmx-live="${CSS.escape(entity)}"]`);
        top.removeAttribute(OOB);
        if (list) added.push(...place(list, list.getAttribute('data-rhtmx-live-swap') || 'beforeend', [top]));
        landed = list !== null;
      }
    } else if (spec !== null) {
      added.push(...(outOfBand(top, spec) ?? []));
    }
  }
  processed(added);
  return landed;
}
