/**
 * What changes where an image's data is, with several stores (store/stores.ts), in the one
 * order that keeps the database truthful whatever stops half-way:
 *
 * - a store is added to an image's `stores` only after its blob is committed there (a crash
 *   in between leaves a blob no image claims: removed on the next start);
 * - a store is removed from `stores` before its blob is deleted (a crash in between leaves,
 *   again, only an unclaimed blob).
 *
 * Every change of `stores` is one conditional UPDATE on the row (jsonb operators), so two
 * requests never lose each other's change.
 */
import { sql } from 'kysely';
import type { Services } from '../context.js';
import { HttpError } from '../http.js';
import type { BlobStore } from '../store/store.js';
import type { ImageRow } from './policy.js';

export const STAGING_PREFIX = 'staging-';
export const stagingKey = (id: string) => `${STAGING_PREFIX}${id}`;

/** A named store's BlobStore (the store, with one). */
export function storeById(svc: Services, id: string | null): BlobStore {
  if (id === null || svc.stores === null) return svc.store;
  const s = svc.stores.get(id);
  if (s === undefined) throw new Error(`no store '${id}'`);
  return s.store;
}

/** Delete a blob, logging nothing: a failure leaves an unclaimed blob for the next start. */
async function dropBlob(store: BlobStore, key: string): Promise<void> {
  await store.delete(key).catch(() => {});
}

/** After the row is gone: the image's data in every store that held it, and its staged data. */
export async function deleteImageData(svc: Services, img: ImageRow): Promise<void> {
  if (svc.stores === null) {
    if (img.blob !== null) await svc.store.delete(img.blob);
    return;
  }
  // Every store is tried; the first failure is reported (what is left is unclaimed now).
  let first: unknown = null;
  if (img.blob !== null && !img.blob.startsWith(STAGING_PREFIX))
    for (const id of img.stores) {
      const s = svc.stores.get(id);
      if (s !== undefined) await s.store.delete(img.blob).catch((e: unknown) => (first ??= e));
    }
  await dropBlob(svc.store, stagingKey(img.id));
  if (first !== null) throw first;
}

/**
 * Remove a store from an image (`DELETE /v2/stores/{store}/{image}`): the row first, only if
 * the image is still active, in that store and in another one; then the blob. 409/403/404 as
 * Glance when the row changed meanwhile.
 */
export async function removeFromStore(svc: Services, img: ImageRow, storeId: string): Promise<void> {
  const r = await svc.db
    .updateTable('images')
    .set({ stores: sql`stores - ${storeId}::text`, updated_at: new Date() })
    .where('id', '=', img.id)
    .where('status', '=', 'active')
    .where(sql<boolean>`jsonb_exists(stores, ${storeId}::text)`)
    .where(sql<boolean>`jsonb_array_length(stores) > 1`)
    .executeTakeFirst();
  if (r.numUpdatedRows === 0n) {
    const now = await svc.db.selectFrom('images').selectAll().where('id', '=', img.id).executeTakeFirst();
    if (now === undefined) throw new HttpError(404, `Failed to find image ${img.id}`);
    if (now.status !== 'active')
      throw new HttpError(
        409,
        "It's not allowed to remove image data from store if image status is not 'active'",
      );
    if (!now.stores.includes(storeId))
      throw new HttpError(404, `Image ${img.id} is not stored in store ${storeId}.`);
    throw new HttpError(
      403,
      'Cannot delete image data from the only store containing it. Consider deleting the image instead.',
    );
  }
  if (img.blob !== null) await storeById(svc, storeId).delete(img.blob);
}
