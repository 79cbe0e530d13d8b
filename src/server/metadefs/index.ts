/**
 * Metadata definitions (Glance's metadefs): the API under /v2/metadefs and
 * /v2/schemas/metadefs, and the definition files loaded into an empty database on start.
 */
import type { Services } from '../context.js';
import type { Router } from '../http.js';
import type { Identity } from '../identity/keystone.js';
import { MetadefApi } from './api.js';
import { loadMetadefsOnce } from './loader.js';

export interface Metadefs {
  /**
   * Load the definition files (once per database; the first call starts it, the others return
   * the same promise). The server calls it a moment after it answers: ~330 ms of inserts on a
   * first start, a third of the embedded server's time to its first answer, which would also
   * delay a client's first requests. A request under /v2/metadefs calls it and waits; the rest
   * of the API does not. Never rejects: a failure is logged, and the routes answer from what
   * was loaded.
   */
  load(): Promise<void>;
  /** The load under way, or nothing to wait for when it has not started. */
  settled(): Promise<void>;
}

export function setupMetadefs(
  svc: Services,
  identity: Identity,
  router: Router,
  log: (line: string) => void,
): Metadefs {
  let loaded: Promise<void> | undefined;
  const load = () => {
    loaded ??= (async () => {
      if (svc.settings.metadefsDir === null) return;
      try {
        await loadMetadefsOnce(svc.db, svc.settings.metadefsDir, log);
      } catch (err) {
        log(`metadefs: loading ${svc.settings.metadefsDir} failed: ${(err as Error).message}`);
      }
    })();
    return loaded;
  };
  new MetadefApi(svc, identity, load).routes(router);
  return { load, settled: () => loaded ?? Promise.resolve() };
}
