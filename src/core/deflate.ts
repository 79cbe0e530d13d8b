/**
 * Deflate for compressed clusters and grains: on libuv's thread pool through the native addon
 * (native/vdisk_deflate.c: Node's own zlib, one reused stream per pool thread, the same bytes
 * as node:zlib), or through async node:zlib where the addon is not built.
 *
 * Both skip deflate for data it cannot shrink (random or already compressed content), found
 * by a cheap test (byte entropy and a match finder over deflate's window; see the C file):
 * qemu-img deflates such clusters in full only to store them uncompressed. Set
 * VDISK_DEFLATE_PROBE=0 to deflate everything, as qemu-img does.
 */
import { promisify } from 'node:util';
import {
  createInflateRaw,
  deflate as deflateCb,
  deflateRaw as deflateRawCb,
  inflateRaw as inflateRawCb,
  constants as zc,
} from 'node:zlib';
import { native } from '../native/index.js';

const deflateAsync = promisify(deflateCb);
const deflateRawAsync = promisify(deflateRawCb);
const inflateRawAsync = promisify(inflateRawCb);

function probeOn(): boolean {
  return process.env['VDISK_DEFLATE_PROBE'] !== '0';
}

function asBuffer(src: Uint8Array): Buffer {
  return Buffer.isBuffer(src) ? src : Buffer.from(src.buffer, src.byteOffset, src.byteLength);
}

/**
 * qcow2's compressed cluster: raw deflate, 4 KiB window, level 6, memLevel 9 (QEMU's
 * qcow2_zlib_compress). null when the result would not fit in `limit` bytes (QEMU passes
 * cluster size - 1) or the data is incompressible: the cluster is then written as is.
 */
export async function deflateCluster(src: Uint8Array, limit: number): Promise<Uint8Array | null> {
  if (native?.deflateCluster !== undefined) {
    return native.deflateCluster(asBuffer(src), 0, limit, probeOn() ? 1 : 0);
  }
  // One output chunk as large as the cluster: one trip to the thread pool.
  const chunkSize = Math.max(16384, src.length + 1024);
  const out = await deflateRawAsync(src, { windowBits: 12, level: 6, memLevel: 9, chunkSize });
  return out.length > limit ? null : out;
}

/**
 * A zlib stream (compress() at its default level: QEMU's vmdk streamOptimized grains). Data
 * that cannot shrink is stored in deflate's stored blocks without deflating it first.
 */
export async function deflateZlib(src: Uint8Array): Promise<Uint8Array> {
  if (native?.deflateCluster !== undefined) {
    // zlib's deflateBound for stored data: 5 bytes per 16 KiB block plus header and trailer,
    // with room to spare for what level 6 may add on random data.
    const bound = src.length + Math.ceil(src.length / 16384) * 5 + 64;
    const out = await native.deflateCluster(asBuffer(src), 1, bound, probeOn() ? 1 : 0);
    if (out !== null) return out;
  }
  return deflateAsync(src, { chunkSize: Math.max(16384, src.length + 1024) });
}

/**
 * A compressed cluster of qcow2 or qcow: exactly `n` bytes inflated from a raw deflate stream
 * with a 4 KiB window, or null when the stream cannot produce them. As in QEMU
 * (qcow2_zlib_decompress, qcow's decompress_buffer: inflate with Z_FINISH, success when the
 * output is full), a stream that goes on past the cluster gives its first `n` bytes, whatever
 * follows; one that ends or breaks before is an error.
 */
export async function inflateCluster(src: Uint8Array, n: number): Promise<Buffer | null> {
  try {
    const out = await inflateRawAsync(src, {
      windowBits: 12,
      maxOutputLength: n,
      finishFlush: zc.Z_SYNC_FLUSH,
    });
    return out.length === n ? out : null;
  } catch {
    // Too much output, or an error that may lie past the cluster's end: decide by the prefix.
    return inflatePrefix(src, n);
  }
}

/**
 * The first `n` bytes of a stream that inflates to more: the stream's output chunk is `n`
 * bytes, so its first chunk is the answer and what the stream holds after it is never decoded.
 */
function inflatePrefix(src: Uint8Array, n: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const z = createInflateRaw({ windowBits: 12, chunkSize: Math.max(n, 64) });
    let done = false;
    const finish = (v: Buffer | null) => {
      if (done) return;
      done = true;
      z.destroy();
      resolve(v);
    };
    z.on('data', (chunk: Buffer) => finish(chunk.length >= n ? chunk.subarray(0, n) : null));
    z.on('error', () => finish(null));
    z.on('end', () => finish(null));
    z.end(src);
  });
}
