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
import { deflate as deflateCb, deflateRaw as deflateRawCb } from 'node:zlib';
import { native } from '../native/index.js';

const deflateAsync = promisify(deflateCb);
const deflateRawAsync = promisify(deflateRawCb);

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
