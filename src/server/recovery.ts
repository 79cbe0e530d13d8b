/**
 * Repair what a dead node left, on any number of nodes (see nodes.ts for the leases):
 *
 * - `reapDeadWriters`: images whose `writer` is no live node are claimed (a conditional
 *   UPDATE of `writer`, so exactly one node recovers each), the dead writer's temporary
 *   objects for them are removed, and the image is put back as Glance would: an upload in
 *   `saving` to `queued`, an import to `queued` with its task failed, a copy to other stores
 *   unlocked with the copy failed. Runs at start and at every lease renewal.
 * - `collectGarbage`: temporary objects and blobs that no image row names and no live node can
 *   still be writing. Run at start. What was written after the collector took its picture of
 *   the rows and the live nodes stays (with other nodes live, a margin for the store's clock).
 */
import { mkdir, rm } from 'node:fs/promises';
import { sql } from 'kysely';
import type { Services } from './context.js';
import { recoverCopy, recoverImport } from './image/import.js';
import type { ImageRow } from './image/policy.js';
import { STAGING_PREFIX } from './image/store-ops.js';
import { liveNodeIds } from './nodes.js';
import type { BlobStore } from './store/store.js';

/** With other nodes live, what the store's clock may be behind the database's. */
const CLOCK_MARGIN_MS = 60_000;

const allStores = (svc: Services): readonly { id: string | null; store: BlobStore }[] =>
  svc.stores === null ? [{ id: null, store: svc.store }] : svc.stores.list;

/** The image id a blob key belongs to. */
const imageOfKey = (key: string): string =>
  key.startsWith(STAGING_PREFIX) ? key.slice(STAGING_PREFIX.length) : key;

async function recoverUpload(svc: Services, img: ImageRow): Promise<void> {
  for (const { store } of allStores(svc)) {
    await store.abortPending(img.id);
    // Committed by the dead node but never recorded in the row: no image names it.
    if (img.blob === null) await store.delete(img.id).catch(() => {});
  }
  await svc.db
    .updateTable('images')
    .set({ status: 'queued', writer: null, updated_at: new Date() })
    .where('id', '=', img.id)
    .where('status', '=', 'saving')
    .where('writer', '=', svc.instanceId)
    .execute();
}

/**
 * Claim and recover what nodes without a lease were writing, and what this node's rows say it
 * writes while it does not (a write whose last UPDATE was lost with the database connection:
 * older than a lease, so that a write between its UPDATE and its registration is left alone);
 * returns how many images.
 */
export async function reapDeadWriters(svc: Services, log: (s: string) => void): Promise<number> {
  const dead = await svc.db
    .selectFrom('images')
    .select(['id', 'writer', 'status'])
    .where('writer', 'is not', null)
    .where('writer', 'not in', liveNodeIds(svc.db))
    .execute();
  const mine = await svc.db
    .selectFrom('images')
    .select(['id', 'writer', 'status'])
    .where('writer', '=', svc.instanceId)
    .where(sql<boolean>`updated_at < now() - make_interval(secs => ${svc.settings.nodeLeaseSeconds})`)
    .execute();
  for (const m of mine) if (!svc.writing.has(m.id)) dead.push(m);
  const counts = { uploads: 0, imports: 0, copies: 0 };
  for (const d of dead) {
    const claimed = (await svc.db
      .updateTable('images')
      .set({ writer: svc.instanceId })
      .where('id', '=', d.id)
      .where('writer', '=', d.writer)
      .where('status', '=', d.status)
      .returningAll()
      .executeTakeFirst()) as ImageRow | undefined;
    if (claimed === undefined) continue; // another node was first, or the writer finished
    switch (claimed.status) {
      case 'saving':
        await recoverUpload(svc, claimed);
        counts.uploads++;
        break;
      case 'importing':
      case 'uploading':
        if (await recoverImport(svc, claimed)) counts.imports++;
        break;
      case 'active':
        await recoverCopy(svc, claimed);
        counts.copies++;
        break;
      default:
        await svc.db
          .updateTable('images')
          .set({ writer: null })
          .where('id', '=', claimed.id)
          .where('writer', '=', svc.instanceId)
          .execute();
    }
  }
  if (counts.uploads > 0) log(`recovered ${counts.uploads} interrupted upload(s): back to queued`);
  if (counts.imports > 0) log(`recovered ${counts.imports} interrupted import(s): back to queued`);
  if (counts.copies > 0) log(`recovered ${counts.copies} interrupted copy(ies) to other stores`);
  // Leases ended long ago: their rows serve no one.
  await svc.db.deleteFrom('nodes').where(sql<boolean>`expires_at < now() - interval '1 day'`).execute();
  return counts.uploads + counts.imports + counts.copies;
}

/** The database's clock and how many other nodes are live. */
async function picture(svc: Services): Promise<{ now: Date; others: number }> {
  const { now } = await sql<{ now: Date }>`SELECT now() AS now`.execute(svc.db).then((r) => r.rows[0]!);
  const live = await liveNodeIds(svc.db).execute();
  const others = live.filter((n) => n.id !== svc.instanceId).length;
  return { now: new Date(now), others };
}

/**
 * What no live node may be writing, from `rows` read between two pictures: `keep(key)` is true
 * for the keys of images a live node writes; objects modified at or after `cutoff` stay too (a
 * node that registered while the rows were read may write objects they miss; with other nodes
 * live, a margin for the store's clock).
 */
async function unclaimed(
  svc: Services,
  before: { now: Date; others: number },
  rows: readonly { id: string; writer: string | null }[],
): Promise<{ keep: (key: string) => boolean; cutoff: Date }> {
  const liveIds = new Set((await liveNodeIds(svc.db).execute()).map((n) => n.id));
  // Images a live node is writing: their keys stay, temporary or not.
  const writing = new Set(rows.filter((r) => r.writer !== null && liveIds.has(r.writer)).map((r) => r.id));
  const after = await picture(svc);
  const margin = before.others > 0 || after.others > 0 ? CLOCK_MARGIN_MS : 0;
  return { keep: (key) => writing.has(imageOfKey(key)), cutoff: new Date(before.now.getTime() - margin) };
}

/**
 * Remove the temporaries (multipart uploads, temporary files) that no live node is writing:
 * what a write whose abort could not reach the store left (the S3 gateway away or hanging
 * when the upload failed). Cheap (one listing of each store's temporaries and a query of the
 * rows being written), so it runs at every lease renewal as well as at start; the stores'
 * own writes in progress are never listed (s3.ts keeps its upload ids, fs.ts its fresh files).
 */
export async function collectTemporaries(svc: Services, log: (s: string) => void): Promise<number> {
  const before = await picture(svc);
  const rows = await svc.db
    .selectFrom('images')
    .select(['id', 'writer'])
    .where('writer', 'is not', null)
    .execute();
  const { keep, cutoff } = await unclaimed(svc, before, rows);
  let temps = 0;
  for (const ns of allStores(svc)) temps += await ns.store.cleanup({ keep, before: cutoff });
  if (temps > 0) log(`removed ${temps} temporary object(s) of interrupted uploads`);
  return temps;
}

/** Remove temporaries and blobs that no image names and no live node may be writing. */
export async function collectGarbage(svc: Services, log: (s: string) => void): Promise<void> {
  const before = await picture(svc);
  const rows = await svc.db
    .selectFrom('images')
    .select(['id', 'blob', 'status', 'stores', 'writer'])
    .where((eb) =>
      eb.or([
        eb('blob', 'is not', null),
        eb('writer', 'is not', null),
        eb('status', 'in', ['uploading', 'importing']),
      ]),
    )
    .execute();
  const { keep, cutoff } = await unclaimed(svc, before, rows);

  let temps = 0;
  let orphans = 0;
  for (const ns of allStores(svc)) {
    temps += await ns.store.cleanup({ keep, before: cutoff });
    const referenced = new Set<string>();
    for (const r of rows) {
      if (ns.id === null) {
        if (r.blob !== null) referenced.add(r.blob);
        continue;
      }
      // A store keeps the data of the images that name it, and (the default store) staged data.
      if (r.blob !== null && !r.blob.startsWith(STAGING_PREFIX) && r.stores.includes(ns.id))
        referenced.add(r.blob);
      if (ns.id === svc.stores?.defaultId && (r.status === 'uploading' || r.status === 'importing'))
        referenced.add(`${STAGING_PREFIX}${r.id}`);
    }
    for await (const b of ns.store.list()) {
      if (referenced.has(b.key) || keep(b.key) || b.modified >= cutoff) continue;
      await ns.store.delete(b.key);
      orphans++;
    }
  }
  if (temps > 0) log(`removed ${temps} temporary object(s) of interrupted uploads`);
  if (orphans > 0) log(`removed ${orphans} orphaned blob(s)`);
}

/** Start-up: this node's work directory, images from before multiple stores, then the rest. */
export async function recoverOnStart(svc: Services, log: (s: string) => void): Promise<void> {
  // What a crash left of this node's conversions and spilled exports (the directory is the node's).
  await rm(svc.workDir, { recursive: true, force: true });
  await mkdir(svc.workDir, { recursive: true });
  if (svc.stores !== null) {
    // Images stored before the server had several stores were in its one store: the default.
    const legacy = await svc.db
      .updateTable('images')
      .set({ stores: JSON.stringify([svc.stores.defaultId]) as never })
      .where('blob', 'is not', null)
      .where('blob', 'not like', `${STAGING_PREFIX}%`)
      .where(sql<boolean>`stores = '[]'::jsonb`)
      .executeTakeFirst();
    if (legacy.numUpdatedRows > 0n)
      log(
        `${legacy.numUpdatedRows} image(s) stored before multiple stores: in the default store '${svc.stores.defaultId}'`,
      );
  }
  await reapDeadWriters(svc, log);
  await collectGarbage(svc, log);
}
