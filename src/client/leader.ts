/**
 * Tabs: one leader tab per browser holds the server connection; every tab
 * hears the others' row changes and events over BroadcastChannel.
 *
 * Election uses Web Locks, never localStorage (which elects several leaders
 * under races): the leader holds `rhtmx-sync-leader` for its whole life and
 * the browser hands it to the next waiting tab when the leader closes or
 * crashes.
 */
/** Lock name shared by every tab of the origin. */
export const LEADER_LOCK = 'rhtmx-sync-leader';

/**
 * Queue for leadership; `onLeader` runs when this tab gets it (maybe at once,
 * maybe when the current leader closes). Without Web Locks (old browsers,
 * insecure origins) every tab leads: `onLeader` runs now.
 */
export function electLeader(onLeader: () => void): void {
  const locks = navigator.locks;
  if (!locks) onLeader();
  else {
    void locks.request(LEADER_LOCK, () => {
      onLeader();
      // Never settles: the lock is held until the tab goes away.
      return new Promise<never>(() => {});
    });
  }
}

/** A tab-to-tab channel `name`; messages never come back to their sender. No-op where BroadcastChannel is missing. */
export function tabChannel<T>(name: string, onMessage: (message: T) => void): (message: T) => void {
  if (typeof BroadcastChannel !== 'function') return () => {};
  const channel = new BroadcastChannel(name);
  channel.onmessage = (event) => onMessage(event.data as T);
  return (message) => channel.postMessage(message);
}
