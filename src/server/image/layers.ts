/**
 * Layered images in the registry: an image names its master with the property
 * `backing_image_id`, and the registry resolves chains only through it (the backing file name
 * stored inside an overlay is never followed). This module holds the rules that several
 * routes share: loading a chain (depth limit, cycles, missing masters), who may see a whole
 * chain, the checks when a master is named or an overlay uploaded, dependents, and opening a
 * chain's blobs as one engine image.
 */
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { openLayers } from '../../chain/layers.js';
import { HostFile } from '../../core/host-file.js';
import type { Image } from '../../core/image.js';
import type { AuthContext, Services } from '../context.js';
import type { Database } from '../db/schema.js';
import { HttpError } from '../http.js';
import type { BlobStore } from '../store/store.js';
import { readStore } from '../store/stores.js';
import { UUID_RE } from '../util.js';
import { engineFormatOf, LAYERED_FORMATS } from './formats.js';
import { canSee, enforce, type ImageRow } from './policy.js';

export const BACKING_PROP = 'backing_image_id';

/**
 * `properties->>'backing_image_id'` with the key written out, so that the expression index
 * (images_backing) serves it under every plan (a key given as a parameter matches the index
 * only in a plan made for that parameter's value).
 */
export const backingOf = (table = '') =>
  sql.raw(`${table === '' ? '' : `${table}.`}properties->>'backing_image_id'`);

export const masterIdOf = (img: Pick<ImageRow, 'properties'>): string | undefined =>
  img.properties[BACKING_PROP];

/** Can `ctx` see `img` (Glance's visibility rules, with the caller's membership)? */
export async function isVisible(db: Kysely<Database>, ctx: AuthContext, img: ImageRow): Promise<boolean> {
  if (ctx.isAdmin || img.visibility !== 'shared' || ctx.projectId === null)
    return canSee(ctx, img, undefined);
  const m = await db
    .selectFrom('image_members')
    .selectAll()
    .where('image_id', '=', img.id)
    .where('member', '=', ctx.projectId)
    .executeTakeFirst();
  return canSee(ctx, img, m);
}

/** What a project (not an admin) sees: for checks made on behalf of a member to be. */
export function projectContext(projectId: string): AuthContext {
  return {
    tokenId: '',
    userId: '',
    userName: '',
    projectId,
    projectName: null,
    roles: [],
    isAdmin: false,
    auditId: '',
    issuedAt: new Date(0),
    expiresAt: new Date(0),
  };
}

/**
 * The chain of `img`, top first: the image, its master, the master's master… A master that
 * no longer exists, a loop, or a chain deeper than the limit is a 409 naming the image.
 */
export async function loadChain(svc: Services, img: ImageRow): Promise<ImageRow[]> {
  const chain = [img];
  const seen = new Set([img.id]);
  let cur = img;
  for (;;) {
    const id = masterIdOf(cur);
    if (id === undefined) return chain;
    if (seen.has(id))
      throw new HttpError(409, `The chain of masters of image ${img.id} loops back to image ${id}.`);
    if (chain.length > svc.settings.maxChainDepth)
      throw new HttpError(
        409,
        `The chain of masters of image ${img.id} is deeper than ${svc.settings.maxChainDepth} images.`,
      );
    const next = await svc.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    if (next === undefined)
      throw new HttpError(409, `The master image ${id} of image ${cur.id} no longer exists.`);
    chain.push(next);
    seen.add(id);
    cur = next;
  }
}

/** How many images name `id` as their master (any status). */
export async function dependentCount(db: Kysely<Database>, id: string): Promise<number> {
  const r = await db
    .selectFrom('images')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where(sql<boolean>`${backingOf()} = ${id}`)
    .executeTakeFirstOrThrow();
  return Number(r.n);
}

/**
 * The checks when an image (`self`, with this disk_format) is made to name `masterId` as its
 * master, at create or PATCH time: a qcow2 or qed image, a master the caller can see, no loop,
 * within the depth limit. 400 for a malformed value, 409 otherwise.
 */
export async function checkMasterOnSet(
  svc: Services,
  ctx: AuthContext,
  self: { id: string; disk_format: string | null },
  masterId: unknown,
): Promise<void> {
  if (typeof masterId !== 'string' || !UUID_RE.test(masterId))
    throw new HttpError(400, `Invalid ${BACKING_PROP}: '${String(masterId)}' is not an image id.`);
  if (self.disk_format !== null && !LAYERED_FORMATS.includes(self.disk_format))
    throw new HttpError(
      400,
      `Only ${LAYERED_FORMATS.join(' and ')} images can name a master (${BACKING_PROP}); this image's disk_format is ${self.disk_format}.`,
    );
  if (masterId === self.id) throw new HttpError(409, `Image ${self.id} cannot be its own master.`);
  const master = await svc.db.selectFrom('images').selectAll().where('id', '=', masterId).executeTakeFirst();
  if (master === undefined || !(await isVisible(svc.db, ctx, master)))
    throw new HttpError(409, `No image found with ID ${masterId} to be the master (${BACKING_PROP}).`);
  const chain = await loadChain(svc, master).catch((e: unknown) => {
    throw e instanceof HttpError
      ? new HttpError(409, `The master image ${masterId} is unusable: ${e.message}`)
      : e;
  });
  if (chain.some((r) => r.id === self.id))
    throw new HttpError(409, `Naming image ${masterId} as the master of image ${self.id} would make a loop.`);
  if (chain.length + 1 > svc.settings.maxChainDepth + 1)
    throw new HttpError(
      409,
      `Image ${masterId} already has ${chain.length - 1} masters below it; chains are limited to ${svc.settings.maxChainDepth} masters.`,
    );
}

/**
 * Before an overlay's data is received: its master must exist, be visible to the uploader and
 * be active (data is what an overlay needs). Returns the master's row.
 */
export async function masterForUpload(
  svc: Services,
  ctx: AuthContext,
  img: ImageRow,
): Promise<ImageRow | null> {
  const id = masterIdOf(img);
  if (id === undefined) return null;
  const master = await svc.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
  if (master === undefined || !(await isVisible(svc.db, ctx, master)))
    throw new HttpError(
      409,
      `The master image ${id} (${BACKING_PROP}) does not exist or is not visible to you.`,
    );
  if (master.status !== 'active')
    throw new HttpError(
      409,
      `The master image ${id} (${BACKING_PROP}) is ${master.status}; an overlay can only be uploaded over an active master.`,
    );
  await loadChain(svc, img);
  return master;
}

/**
 * For reading a chain's data (export, flatten): every master must be visible to the caller
 * and have data; a deactivated one blocks non-admins as a deactivated image's download does.
 */
export async function checkChainReadable(svc: Services, ctx: AuthContext, chain: ImageRow[]): Promise<void> {
  for (const [i, row] of chain.entries()) {
    const what = i === 0 ? `Image ${row.id}` : `The master image ${row.id} of image ${chain[i - 1]!.id}`;
    if (i > 0 && !(await isVisible(svc.db, ctx, row)))
      throw new HttpError(
        403,
        `${what} is not visible to your project: ask its owner (project ${row.owner}) to share it with you.`,
      );
    if (row.status === 'deactivated')
      enforce(
        'download_deactivated',
        ctx,
        { image: row },
        `${what} has been deactivated. Image data download is forbidden.`,
      );
    if (row.status !== 'active' && row.status !== 'deactivated')
      throw new HttpError(409, `${what} has no data yet (status ${row.status}).`);
    if (row.blob === null) throw new HttpError(409, `${what} has no data.`);
  }
}

/** The first image of `chain` below the top that project `projectId` cannot see, if any. */
export async function hiddenMasterFor(
  svc: Services,
  chain: ImageRow[],
  projectId: string,
): Promise<ImageRow | undefined> {
  const ctx = projectContext(projectId);
  for (const row of chain.slice(1)) if (!(await isVisible(svc.db, ctx, row))) return row;
  return undefined;
}

/** Open a blob of the store as a read-only engine file (local files directly, else by ranges). */
export async function openBlob(store: BlobStore, key: string, name: string): Promise<HostFile> {
  const path = store.localPath?.(key);
  if (path !== undefined) {
    const f = await HostFile.open(path, { writable: false, lock: 'none' });
    return f;
  }
  return HostFile.fromSource(name, await store.openRandom(key));
}

/** Open a chain (top first) of active images as one read-only engine image. */
export async function openChain(svc: Services, chain: ImageRow[]): Promise<Image> {
  const files: HostFile[] = [];
  try {
    // Each layer from a store that holds it (with several stores, not necessarily the default).
    for (const row of chain) files.push(await openBlob(readStore(svc, row), row.blob!, row.id));
  } catch (err) {
    for (const f of files) await f.close().catch(() => {});
    throw err;
  }
  return openLayers(
    chain.map((row, i) => ({ file: files[i]!, format: engineFormatOf(row.disk_format), name: row.id })),
    { maxDepth: svc.settings.maxChainDepth },
  );
}
