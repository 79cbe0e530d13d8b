/**
 * Image data: PUT /file streams the request body to the blob store, computing md5
 * (`checksum`) and sha512 (`os_hash_value`) on the way and enforcing image_size_cap and the
 * storage quota as bytes arrive; GET /file streams it back with Range support.
 *
 * The status machine of an upload: queued → saving (a conditional UPDATE, so two uploads of
 * one image cannot both start) → active when the blob is committed and the row updated;
 * any failure (client gone, cap exceeded, store error, refused content) aborts the blob and
 * puts the image back to queued, as Glance's _restore does. The image row names the server
 * instance that writes it (`writer`), so a restarted server can tell its crashed uploads.
 */
import { type FileHandle, open } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { AuthContext, Services } from '../context.js';
import { HttpError } from '../http.js';
import type { BlobStore } from '../store/store.js';
import { readStore } from '../store/stores.js';
import type { CacheFill } from './cache.js';
import { type Digests, UploadDigester } from './hashing.js';
import type { InspectorFactory, MasterInfo } from './inspect.js';
import type { ImageRow } from './policy.js';
import { canZeroCopy, sendZeroCopy } from './zero-copy.js';

export interface UploadOutcome {
  size: number;
  checksum: string;
  hash: string;
  virtualSize: number | null;
}

async function usedBytes(svc: Services, owner: string, except: string): Promise<number> {
  const r = await svc.db
    .selectFrom('images')
    .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('size'), eb.val(0)).as('total'))
    .where('owner', '=', owner)
    .where('id', '<>', except)
    .where('status', 'not in', ['killed', 'deleted'])
    .executeTakeFirstOrThrow();
  return Number(r.total);
}

/**
 * Receive an image's data. `img` is the row already checked for permission; it must be in
 * status `queued` (uploads) — the transition is made here.
 */
export async function receiveData(
  svc: Services,
  ctx: AuthContext,
  img: ImageRow,
  req: IncomingMessage,
  inspect: InspectorFactory | undefined,
  opts: {
    fromStatus: string;
    toStatus: string;
    finalStatus: string;
    keyPrefix?: string;
    /** The image is an overlay of this master (see inspect.ts). */
    master?: MasterInfo | null;
    /** The store to write to (default: svc.store, the default store). */
    store?: BlobStore;
  } = {
    fromStatus: 'queued',
    toStatus: 'saving',
    finalStatus: 'active',
  },
): Promise<UploadOutcome> {
  void ctx;
  const cap = svc.settings.imageSizeCap;
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > cap)
    throw new HttpError(
      413,
      `Image exceeds the storage quota: The size of the data ${declared} will exceed the limit. ${cap} bytes remaining.`,
    );
  let remaining = Number.POSITIVE_INFINITY;
  if (svc.settings.userStorageQuota >= 0 && img.owner !== null) {
    remaining = svc.settings.userStorageQuota - (await usedBytes(svc, img.owner, img.id));
    if (declared !== undefined && Number(declared) > remaining)
      throw new HttpError(
        413,
        `Denying attempt to upload image because it exceeds the quota: The size of the data ${declared} will exceed the limit. ${Math.max(0, remaining)} bytes remaining.`,
      );
  }
  const limit = Math.min(cap, remaining);

  const started = await svc.db
    .updateTable('images')
    .set({ status: opts.toStatus, writer: svc.instanceId, updated_at: new Date() })
    .where('id', '=', img.id)
    .where('status', '=', opts.fromStatus)
    .executeTakeFirst();
  if (started.numUpdatedRows === 0n) {
    const cur = await svc.db
      .selectFrom('images')
      .select('status')
      .where('id', '=', img.id)
      .executeTakeFirst();
    if (cur === undefined) throw new HttpError(404, `No image found with ID ${img.id}`);
    throw new HttpError(409, `Image status transition from ${cur.status} to ${opts.toStatus} is not allowed`);
  }

  const key = `${opts.keyPrefix ?? ''}${img.id}`;
  const writer = await (opts.store ?? svc.store).create(key);
  // md5 + sha512 in worker threads; the store gets the data in 4 MiB blocks (hashing.ts).
  const digester = new UploadDigester((block) => writer.write(block));
  let size = 0;
  let virtualSize: number | null = null;
  const inspector = inspect?.(img, declared === undefined ? null : Number(declared), opts.master ?? null, {
    requireFormatMatch: svc.settings.requireImageFormatMatch,
  });
  // A refused upload is read to its end (discarding it, within the size limit) so that the
  // client, still sending, gets the 415 rather than a broken pipe.
  let refused: HttpError | null = null;
  let digests: Digests = { md5: '', sha512: '' };
  try {
    await readBody(req, (b) => {
      size += b.length;
      if (refused !== null) {
        if (size > limit) throw refused;
        return undefined;
      }
      if (size > limit) {
        if (size > cap)
          throw new HttpError(
            413,
            `Image exceeds the storage quota: The incoming image is too large: the limit is ${cap} bytes.`,
          );
        throw new HttpError(
          413,
          `Denying attempt to upload image because it exceeds the quota: The size of the data ${size} will exceed the limit.`,
        );
      }
      if (inspector !== undefined) {
        try {
          inspector.feed(b);
        } catch (err) {
          if (!(err instanceof HttpError)) throw err;
          refused = err;
          return (async () => {
            await digester.abort();
            await writer.abort();
          })();
        }
      }
      return digester.push(b);
    });
    if (refused !== null) throw refused;
    if (!req.complete)
      throw new HttpError(400, 'The client closed the connection before the upload finished.');
    if (inspector !== undefined) virtualSize = inspector.finish(size).virtualSize;
    digests = await digester.end();
    await writer.commit();
  } catch (err) {
    await digester.abort();
    await writer.abort();
    await svc.db
      .updateTable('images')
      .set({ status: opts.fromStatus, writer: null, updated_at: new Date() })
      .where('id', '=', img.id)
      .where('status', '=', opts.toStatus)
      .execute();
    throw err;
  }
  return { size, checksum: digests.md5, hash: digests.sha512, virtualSize };
}

/**
 * Give each chunk of a request body to `take` in its 'data' event. `take` copies what it keeps
 * before it returns (so a socket chunk dies young: no promise per chunk, no buffering in the
 * stream), or returns a promise when it must wait: the stream is paused until it settles
 * (backpressure). Resolves at the end of the body or when the client went away (the caller
 * checks `req.complete`); rejects with what `take` threw (the rest of the body is left unread:
 * the request is paused) or with the stream's error.
 */
export function readBody(
  req: IncomingMessage,
  take: (b: Buffer) => Promise<void> | undefined,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let pending: Promise<void> | undefined;
    let finished = false;
    const done = (err?: unknown) => {
      if (finished) return;
      finished = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', done);
      req.off('close', onEnd);
      if (err === undefined) return resolve();
      // The rest is not read: the error answer goes out with `Connection: close` (server.ts).
      req.pause();
      reject(err);
    };
    const onData = (b: Buffer) => {
      if (finished) return;
      try {
        pending = take(b);
      } catch (err) {
        done(err);
        return;
      }
      if (pending === undefined) return;
      req.pause();
      pending.then(() => {
        pending = undefined;
        if (!finished) req.resume();
      }, done);
    };
    // 'end' (or 'close') may come while the last chunk's promise is pending.
    const onEnd = () => {
      if (pending === undefined) done();
      else pending.then(() => done(), done);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', done);
    req.on('close', onEnd);
  });
}

/**
 * Commit an upload to the row; if the image went away meanwhile, drop the blob (410).
 * `storeId`: with several stores, the store the blob was written to (the image's `stores`
 * become that one); null in single-store mode.
 */
export async function finishUpload(
  svc: Services,
  img: ImageRow,
  out: UploadOutcome,
  fromStatus: string,
  toStatus: string,
  key: string = img.id,
  storeId: string | null = svc.stores?.defaultId ?? null,
): Promise<void> {
  const r = await svc.db
    .updateTable('images')
    .set({
      status: toStatus,
      size: out.size,
      virtual_size: out.virtualSize,
      checksum: out.checksum,
      os_hash_algo: 'sha512',
      os_hash_value: out.hash,
      blob: key,
      writer: null,
      ...(storeId !== null ? { stores: JSON.stringify([storeId]) as never } : {}),
      updated_at: new Date(),
    })
    .where('id', '=', img.id)
    .where('status', '=', fromStatus)
    .executeTakeFirst();
  if (r.numUpdatedRows === 0n) {
    await (storeId !== null ? svc.stores!.get(storeId)!.store : svc.store).delete(key);
    throw new HttpError(
      410,
      `Image ${img.id} could not be found after upload. The image may have been deleted during the upload.`,
    );
  }
}

/**
 * An upload whose finishUpload failed with the database (the connection lost with the
 * statement, or only with its answer): what the row says decides, at once rather than a lease
 * later. Active with this upload's data: the statement landed (true). Still `fromStatus` and
 * written by this node: back to queued, and the blob no row claims goes (false). Tried three
 * times; left undecided (the database unreachable throughout), the node's recovery ends it.
 */
export async function settleUpload(
  svc: Services,
  img: ImageRow,
  out: UploadOutcome,
  fromStatus: string,
  store: BlobStore,
): Promise<boolean> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const cur = await svc.db
        .selectFrom('images')
        .select(['status', 'os_hash_value', 'blob', 'writer'])
        .where('id', '=', img.id)
        .executeTakeFirst();
      if (cur?.status === 'active' && cur.os_hash_value === out.hash && cur.blob === img.id) return true;
      if (cur === undefined || (cur.status === fromStatus && cur.writer === svc.instanceId)) {
        const r = await svc.db
          .updateTable('images')
          .set({ status: 'queued', writer: null, updated_at: new Date() })
          .where('id', '=', img.id)
          .where('status', '=', fromStatus)
          .where('writer', '=', svc.instanceId)
          .executeTakeFirst();
        if (cur === undefined || r.numUpdatedRows > 0n) await store.delete(img.id);
      }
      return false;
    } catch {
      await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
    }
  }
  return false;
}

/** GET /file: 204 without data, Range (one range) → 206, Content-MD5 = checksum. */
export async function sendData(
  svc: Services,
  img: ImageRow,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  if (img.blob === null || img.size === null || !['active', 'deactivated'].includes(img.status)) {
    res.writeHead(204, { 'Content-Length': '0' });
    res.end();
    return;
  }
  const size = img.size;
  let start = 0;
  let end = size - 1;
  let partial = false;
  const range = req.headers['range'];
  const legacy = req.headers['content-range'];
  const spec = typeof range === 'string' ? range : typeof legacy === 'string' ? legacy : undefined;
  if (spec !== undefined) {
    const m = /^bytes[= ](\d*)-(\d*)(?:\/(\d+|\*))?$/.exec(spec.trim());
    if (m === null || (m[1] === '' && m[2] === ''))
      throw new HttpError(416, 'Requested range not satisfiable', { 'Content-Range': `bytes */${size}` });
    if (m[1] === '') {
      const n = Number(m[2]);
      start = Math.max(0, size - n);
    } else {
      start = Number(m[1]);
      if (m[2] !== '') end = Math.min(Number(m[2]), size - 1);
    }
    if (start > end || start >= size)
      throw new HttpError(416, 'Requested range not satisfiable', { 'Content-Range': `bytes */${size}` });
    partial = true;
  }
  // The node's image cache (cache.ts): serve a cached image from its file; fill the cache
  // from a full download of one that is not cached yet.
  const cached = svc.cache === null ? null : await svc.cache.hit(img.id);
  const fill =
    svc.cache !== null && cached === null && !partial && req.method !== 'HEAD'
      ? await svc.cache.fill(img)
      : null;
  let file: FileHandle | undefined;
  let stream: Readable | undefined;
  try {
    // With several stores: the default store when it holds the image, else another one.
    const store = cached === null ? readStore(svc, img) : null;
    if (cached !== null) file = await open(cached, 'r');
    else if (store!.openFile !== undefined) file = await store!.openFile(img.blob);
    else stream = await store!.read(img.blob, start, end);
  } catch (err) {
    await fill?.abort();
    throw err;
  }
  const headers: Record<string, string> = {
    'Content-Type': 'application/octet-stream',
    'Content-Length': String(end - start + 1),
  };
  if (img.checksum !== null && !partial) headers['Content-MD5'] = img.checksum;
  if (partial) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  res.writeHead(partial ? 206 : 200, headers);
  if (req.method === 'HEAD') {
    stream?.destroy();
    await file?.close();
    res.end();
    return;
  }
  let sent = false;
  try {
    if (file !== undefined) {
      try {
        // sendfile(2) when it can (zero-copy.ts); the cache fill needs the bytes here.
        const zeroCopy = fill === null && canZeroCopy(res, end - start + 1);
        if (!zeroCopy || !(await sendZeroCopy(file, start, end, res)))
          await sendFile(file, start, end, res, fill);
      } finally {
        await file.close();
      }
    } else if (fill === null) await pipeline(stream!, res);
    else
      await pipeline(
        stream!,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            await fill.write(chunk);
            yield chunk;
          }
        },
        res,
      );
    sent = true;
  } finally {
    if (fill !== null) await (sent ? fill.commit(size) : fill.abort());
  }
}

const SEND_BUFFER = 2 << 20;
/** Reused download buffers (two per download in flight; a few kept between downloads). */
const sendBuffers: Buffer[] = [];

/**
 * Bytes [start, end] of a file to the response: 2 MiB reads into two reused buffers, the
 * next read running while the previous block is written; a buffer is refilled only when the
 * socket has taken it (the write callback), which is also the backpressure. This keeps the
 * copies to the one into the socket and allocates nothing per block: the path when sendfile
 * cannot serve (zero-copy.ts: no addon, TLS, small transfers, the cache being filled).
 */
async function sendFile(
  fh: FileHandle,
  start: number,
  end: number,
  res: ServerResponse,
  fill: CacheFill | null = null,
): Promise<void> {
  const bufs = [
    sendBuffers.pop() ?? Buffer.allocUnsafe(SEND_BUFFER),
    sendBuffers.pop() ?? Buffer.allocUnsafe(SEND_BUFFER),
  ];
  // A destroyed socket may never call a write back: its 'close' ends every wait.
  let onClose: () => void = () => {};
  const closed = new Promise<never>((_, reject) => {
    onClose = () => reject(new Error('the client went away during the download'));
    res.once('close', onClose);
  });
  closed.catch(() => {});
  const write = (b: Buffer) => {
    const written = new Promise<void>((resolve, reject) => {
      res.write(b, (err) => (err ? reject(err) : resolve()));
    });
    const p = Promise.race([written, closed]);
    // Awaited later (or never, after a failure): not an unhandled rejection meanwhile.
    written.catch(() => {});
    p.catch(() => {});
    return p;
  };
  const read = async (b: Buffer, at: number) => {
    const want = Math.min(b.length, end + 1 - at);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await fh.read(b, got, want - got, at + got);
      if (bytesRead === 0) throw new Error('image data shorter than its recorded size');
      got += bytesRead;
    }
    return b.subarray(0, got);
  };
  let pos = start;
  let i = 0;
  let next: Promise<Buffer> | null = read(bufs[0]!, pos);
  let writing: Promise<void> = Promise.resolve();
  try {
    while (next !== null) {
      const block = await next;
      next = null;
      pos += block.length;
      i ^= 1;
      await writing;
      // The cache takes the block before its buffer can be refilled.
      if (fill !== null) await fill.write(block);
      next = pos <= end ? read(bufs[i]!, pos) : null;
      writing = write(block);
    }
    await writing;
    await Promise.race([new Promise<void>((resolve) => res.end(resolve)), closed]);
  } catch (err) {
    // A read may still be filling a buffer, a write still holding one: neither is reused.
    await next?.catch(() => {});
    throw err;
  } finally {
    res.off('close', onClose);
  }
  if (sendBuffers.length < 8) sendBuffers.push(...bufs);
}
