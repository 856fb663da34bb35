/**
 * Server changes wait while a push is in flight.
 *
 * A push answer describes the row as the push left it: `applied` keeps the
 * optimistic row, `duplicate` and `conflict` carry the server row of that
 * moment. A newer change of the same row applied before the answer is
 * settled would be overwritten by it, and since the cursor has already moved
 * past that change it never comes again: the replica keeps a deleted row, or
 * its own value over a newer one, for good. The answer of an HTTP push and
 * the live stream travel on separate connections, and a WebSocket reply can
 * trail a live batch too, so arrival order proves nothing. Live batches and
 * pull pages therefore wait for the answer and are applied after it; they
 * are version-checked and idempotent, so applying them late is always right.
 */

interface Gate {
  held: number;
  waiters: Array<() => void>;
}

/** One gate per database handle (one per client). */
const gates = new WeakMap<object, Gate>();

/** A push is about to be sent: server changes for `db` wait until the returned release is called (once is enough). */
export function holdServerChanges(db: object): () => void {
  const held = gates.get(db) ?? { held: 0, waiters: [] };
  gates.set(db, held);
  held.held++;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--held.held > 0) return;
    const waiters = held.waiters;
    held.waiters = [];
    for (const resume of waiters) resume();
  };
}

/** Resolves once no push of `db` waits for its answer (at once when none does). */
export function serverChangesMayApply(db: object): Promise<void> {
  const gate = gates.get(db);
  if (!gate || gate.held === 0) return Promise.resolve();
  return new Promise((resolve) => gate.waiters.push(resolve));
}
