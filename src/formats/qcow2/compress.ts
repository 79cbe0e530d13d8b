/**
 * Compressed clusters: deflate as QEMU writes it (raw deflate, 4 KiB window, level 6), on
 * libuv's thread pool through async node:zlib; zstd through @bokuweb/zstd-wasm.
 *
 * QEMU stores the compressed length rounded up to 512-byte sectors, so the bytes read for a
 * compressed cluster carry trailing garbage (often the start of the next compressed
 * cluster). zlib stops at the end of the deflate stream; for zstd we walk the frame's block
 * headers to find its exact length first (the wasm build only offers one-shot decompression,
 * which wants the exact frame, and QEMU's frames carry no content size).
 */
import { createRequire } from 'node:module';
import { deflateRaw, inflateRaw, constants as zc } from 'node:zlib';
import { VdiskError } from '../../core/errors.js';

export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

interface ZstdWasm {
  init(): Promise<void>;
  compress(buf: Uint8Array, level?: number): Uint8Array;
  decompress(buf: Uint8Array, opts?: { defaultHeapSize: number }): Uint8Array;
}

let zstdReady: Promise<ZstdWasm> | null = null;

function zstd(): Promise<ZstdWasm> {
  if (zstdReady === null) {
    zstdReady = (async () => {
      const require = createRequire(import.meta.url);
      const mod = require('@bokuweb/zstd-wasm') as ZstdWasm;
      await mod.init();
      return mod;
    })();
  }
  return zstdReady;
}

function corrupt(msg: string, path: string, offset: number): VdiskError {
  return new VdiskError('CORRUPT_IMAGE', msg, { path, offset });
}

/**
 * Length of the zstd frame at the start of buf (magic, header, blocks, optional checksum),
 * or -1 when buf does not hold a whole valid frame. Also returns the declared content size.
 */
export function zstdFrameLength(buf: Uint8Array): { length: number; contentSize: number | null } {
  if (buf.length < 6) return { length: -1, contentSize: null };
  if (buf[0] !== 0x28 || buf[1] !== 0xb5 || buf[2] !== 0x2f || buf[3] !== 0xfd) {
    return { length: -1, contentSize: null };
  }
  const fhd = buf[4]!;
  const fcsFlag = fhd >>> 6;
  const single = (fhd >>> 5) & 1;
  const checksum = (fhd >>> 2) & 1;
  const dictFlag = fhd & 3;
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag]!;
  const fcsLen = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  let contentSize: number | null = null;
  if (fcsLen > 0) {
    if (pos + fcsLen > buf.length) return { length: -1, contentSize: null };
    let v = 0;
    for (let i = fcsLen - 1; i >= 0; i--) v = v * 256 + buf[pos + i]!;
    contentSize = fcsLen === 2 ? v + 256 : v;
  }
  pos += fcsLen;
  for (;;) {
    if (pos + 3 > buf.length) return { length: -1, contentSize };
    const bh = buf[pos]! | (buf[pos + 1]! << 8) | (buf[pos + 2]! << 16);
    const last = bh & 1;
    const type = (bh >>> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) return { length: -1, contentSize };
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > buf.length) return { length: -1, contentSize };
    if (last) break;
  }
  if (checksum) pos += 4;
  if (pos > buf.length) return { length: -1, contentSize };
  return { length: pos, contentSize };
}

/** Decompress one cluster (out.length bytes) from `src`. */
export async function decompressCluster(
  type: number,
  src: Uint8Array,
  out: Uint8Array,
  path: string,
  hostOffset: number,
): Promise<void> {
  if (type === COMPRESSION_ZSTD) {
    const { length, contentSize } = zstdFrameLength(src);
    if (length < 0 || (contentSize !== null && contentSize !== out.length)) {
      throw corrupt(`Invalid zstd compressed cluster at host offset ${hostOffset}`, path, hostOffset);
    }
    const z = await zstd();
    let res: Uint8Array;
    try {
      res = z.decompress(src.subarray(0, length), { defaultHeapSize: out.length });
    } catch {
      throw corrupt(`Could not decompress the zstd cluster at host offset ${hostOffset}`, path, hostOffset);
    }
    if (res.length !== out.length) {
      throw corrupt(`Compressed cluster at host offset ${hostOffset} has the wrong size`, path, hostOffset);
    }
    out.set(res);
    return;
  }
  const res = await new Promise<Buffer>((resolve, reject) => {
    inflateRaw(
      src,
      { windowBits: 12, maxOutputLength: out.length, finishFlush: zc.Z_SYNC_FLUSH },
      (err, data) => (err ? reject(err) : resolve(data)),
    );
  }).catch(() => {
    throw corrupt(`Could not decompress the cluster at host offset ${hostOffset}`, path, hostOffset);
  });
  // QEMU accepts a stream that fills the cluster exactly (ended or not).
  if (res.length !== out.length) {
    throw corrupt(`Compressed cluster at host offset ${hostOffset} has the wrong size`, path, hostOffset);
  }
  out.set(res);
}

/**
 * Compress one cluster. Returns null when the result would not be smaller than the cluster
 * minus one byte (QEMU then writes the cluster uncompressed).
 */
export async function compressCluster(
  type: number,
  src: Uint8Array,
  clusterSize: number,
): Promise<Uint8Array | null> {
  let out: Uint8Array;
  if (type === COMPRESSION_ZSTD) {
    const z = await zstd();
    out = z.compress(src, 3);
  } else {
    out = await new Promise<Buffer>((resolve, reject) => {
      deflateRaw(src, { windowBits: 12, level: 6, memLevel: 9 }, (err, data) =>
        err ? reject(err) : resolve(data),
      );
    });
  }
  return out.length >= clusterSize - 1 ? null : out;
}
