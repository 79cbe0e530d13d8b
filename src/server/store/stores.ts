/**
 * Multiple stores (Glance's `enabled_backends`): several named blob stores, one of them the
 * default. `--store NAME=DIR|s3://…` (repeated) names them; a single `--store SPEC` without a
 * name is the single-store mode of before, in which nothing here is used.
 *
 * An image's data lives under the same key (its id) in each store that holds it; the images
 * row lists those stores (`stores`, a JSON array, migration 4). What this module gives the
 * rest of the server:
 *
 * - the parsing of the store specs and descriptions (settings.ts calls it);
 * - `StoreSet`: the stores by id, in the configured order, and the default;
 * - `readStore(svc, img)`: where to read an image's data from (the default store when it
 *   holds the image, else the first configured store that does — Glance's copy-image and
 *   download order), in either mode;
 * - `storesOf(img)`: the stores an image is in (multi-store mode).
 *
 * Staged data (`PUT /stage`, web-download) always goes to the default store, as Glance's
 * `os_glance_staging_store` is one place: with one store it is that store.
 */
import { resolve } from 'node:path';
import { VdiskError } from '../../core/errors.js';
import type { BlobStore } from './store.js';

/** A store id: Glance's backend names are oslo.config group names. */
export const STORE_ID_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

export interface StoreSpec {
  id: string;
  /** A directory, or s3://… */
  location: string;
  description: string | null;
}

export interface NamedStore extends StoreSpec {
  store: BlobStore;
}

export type StoreConfig =
  | { mode: 'single'; location: string | undefined }
  | { mode: 'multi'; stores: StoreSpec[]; defaultId: string };

const isS3 = (s: string) => /^s3(\+https)?:\/\//.test(s);

/** `NAME=LOCATION` (named) or a plain LOCATION; a location never starts with `NAME=`. */
function splitNamed(spec: string): { id: string; location: string } | null {
  if (isS3(spec)) return null;
  const m = /^([A-Za-z][A-Za-z0-9_-]*)=(.*)$/.exec(spec);
  if (m === null) return null;
  return { id: m[1]!, location: m[2]! };
}

/**
 * The stores of a configuration from its `--store` values (in order), its `--store-description
 * NAME=TEXT` values and `--default-store`. One unnamed value: single-store mode (as before).
 * Named values: multi-store mode. Mixing both, duplicate names, bad names, descriptions or a
 * default for stores that do not exist are one-line errors.
 */
export function parseStoreConfig(
  specs: readonly string[],
  descriptions: readonly string[],
  defaultId: string | null,
): StoreConfig {
  const bad = (msg: string) => new VdiskError('INVALID_ARGUMENT', msg);
  const named = specs.map((s) => ({ s, n: splitNamed(s.trim()) }));
  if (named.every((x) => x.n === null)) {
    if (specs.length > 1)
      throw bad(
        `Several stores need names: --store NAME=DIR|s3://… for each (got ${specs.length} unnamed stores)`,
      );
    if (descriptions.length > 0) throw bad('--store-description needs named stores (--store NAME=…)');
    if (defaultId !== null) throw bad('--default-store needs named stores (--store NAME=…)');
    return { mode: 'single', location: specs[0]?.trim() };
  }
  const unnamed = named.find((x) => x.n === null);
  if (unnamed !== undefined)
    throw bad(`Store '${unnamed.s}' has no name: with several stores, each is --store NAME=DIR|s3://…`);
  const stores: StoreSpec[] = [];
  for (const { n } of named) {
    const { id, location } = n!;
    if (!STORE_ID_RE.test(id))
      throw bad(`Invalid store name '${id}': letters, digits, '_' and '-', starting with a letter`);
    if (id.startsWith('os_glance_')) throw bad(`Store name '${id}' is reserved (os_glance_*)`);
    if (stores.some((s) => s.id === id)) throw bad(`Store '${id}' is named twice`);
    if (location.trim() === '') throw bad(`Store '${id}' has no location (--store ${id}=DIR|s3://…)`);
    // Two stores in one place would each take the other's blobs for orphans on start.
    const same = stores.find((s) => s.location.replace(/\/+$/, '') === location.trim().replace(/\/+$/, ''));
    if (same !== undefined) throw bad(`Stores '${same.id}' and '${id}' have the same location`);
    stores.push({ id, location: location.trim(), description: null });
  }
  for (const d of descriptions) {
    const m = /^([^=]+)=(.*)$/s.exec(d);
    if (m === null) throw bad(`Invalid store description '${d}': NAME=TEXT`);
    const s = stores.find((x) => x.id === m[1]!.trim());
    if (s === undefined) throw bad(`Store description for '${m[1]!.trim()}', which is not a store`);
    s.description = m[2]!.trim();
  }
  const dflt = defaultId ?? stores[0]!.id;
  if (!stores.some((s) => s.id === dflt))
    throw bad(`The default store '${dflt}' is not one of the stores (${stores.map((s) => s.id).join(', ')})`);
  return { mode: 'multi', stores, defaultId: dflt };
}

/** The named stores of a multi-store server, in configured order. */
export class StoreSet {
  private readonly byId: Map<string, NamedStore>;

  constructor(
    readonly list: readonly NamedStore[],
    readonly defaultId: string,
  ) {
    this.byId = new Map(list.map((s) => [s.id, s]));
  }

  get(id: string): NamedStore | undefined {
    return this.byId.get(id);
  }

  get default(): NamedStore {
    return this.byId.get(this.defaultId)!;
  }

  ids(): string[] {
    return this.list.map((s) => s.id);
  }
}

/** What reads an image's stores: the `stores` column (a JSON array of store ids). */
export interface HasStores {
  stores: string[] | null;
}

/** The stores an image's data is in (multi-store mode), in configured order. */
export function storesOf(set: StoreSet, img: HasStores): string[] {
  const have = new Set(img.stores ?? []);
  return set.ids().filter((id) => have.has(id));
}

/**
 * The store to read an image's data from: single-store mode, the store; multi-store mode, the
 * default store when it holds the image, else the first configured store that does.
 */
export function readStore(svc: { store: BlobStore; stores: StoreSet | null }, img: HasStores): BlobStore {
  if (svc.stores === null) return svc.store;
  const ids = storesOf(svc.stores, img);
  const id = ids.includes(svc.stores.defaultId) ? svc.stores.defaultId : ids[0];
  if (id === undefined) throw new VdiskError('NOT_FOUND', 'Image not found in any configured store');
  return svc.stores.get(id)!.store;
}

/**
 * A store's `properties` in GET /v2/info/stores/detail, with Glance's names for what vdisk's
 * stores have (never a credential): a file store's directory and write size; an S3 store's
 * multipart threshold and part size (MB, as Glance's options) and the parts in flight.
 */
export function storeProperties(s: NamedStore): Record<string, unknown> {
  if (s.store.kind === 's3')
    return {
      s3_store_large_object_size: 8,
      s3_store_large_object_chunk_size: 8,
      s3_store_thread_pools: 3,
    };
  return { data_dir: resolve(s.location), chunk_size: 1 << 20, thin_provisioning: false };
}
