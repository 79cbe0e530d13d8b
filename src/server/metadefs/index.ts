/**
 * Metadata definitions (Glance's metadefs): the API under /v2/metadefs and
 * /v2/schemas/metadefs, and the definition files loaded into an empty database on start.
 */
import type { Services } from '../context.js';
import type { Router } from '../http.js';
import type { Identity } from '../identity/keystone.js';
import { MetadefApi } from './api.js';
import { loadMetadefsOnce } from './loader.js';

export async function setupMetadefs(
  svc: Services,
  identity: Identity,
  router: Router,
  log: (line: string) => void,
): Promise<void> {
  if (svc.settings.metadefsDir !== null) await loadMetadefsOnce(svc.db, svc.settings.metadefsDir, log);
  new MetadefApi(svc, identity).routes(router);
}
