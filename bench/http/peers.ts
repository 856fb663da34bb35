/**
 * Peer libraries, loaded from bench/node_modules (the benchmark's own
 * install, kept out of the main package). They ship no types we rely on.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { ROOT } from '../lib/proc.js';

const requireBench = createRequire(join(ROOT, 'bench/package.json'));

export interface PouchModule {
  Memory: any;
  PouchDB: any;
  expressPouchdb: (PouchDB: any, options?: Record<string, unknown>) => any;
}

let pouch: PouchModule | null = null;

/** PouchDB with the in-memory adapter, and express-pouchdb to serve it over CouchDB's HTTP API. */
export function loadPouch(): PouchModule {
  if (pouch) return pouch;
  const PouchDB = requireBench('pouchdb');
  PouchDB.plugin(requireBench('pouchdb-adapter-memory'));
  const Memory = PouchDB.defaults({ adapter: 'memory' });
  pouch = { PouchDB, Memory, expressPouchdb: requireBench('express-pouchdb') };
  return pouch;
}

/** Resolve a file inside one of the benchmark's packages. */
export const benchResolve = (specifier: string): string => requireBench.resolve(specifier);
