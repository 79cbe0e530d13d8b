/**
 * Compressed clusters: deflate as QEMU writes it (raw deflate, 4 KiB window, level 6), on
 * libuv's thread pool (core/deflate.ts); zstd through @bokuweb/zstd-wasm.
 *
 * QEMU stores the compressed length rounded up to 512-byte sectors, so the bytes read for a
 * compressed cluster carry trailing garbage (often the start of the next compressed
 * cluster). zlib stops at the end of the deflate stream; for zstd we walk the frame's block
 * headers to find its exact length first (the wasm build only offers one-shot decompression,
 * which wants the exact frame, and QEMU's frames carry no content size).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { inCliScript } from '../../core/bundle.js';
import { deflateCluster, inflateCluster } from '../../core/deflate.js';
import { VdiskError } from '../../core/errors.js';
import { native } from '../../native/index.js';

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

const asBuffer = (b: Uint8Array): Buffer =>
  Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);

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
    let res: Uint8Array;
    try {
      const frame = src.subarray(0, length);
      const got =
        native?.zstdCluster !== undefined
          ? await native.zstdCluster(asBuffer(frame), 1, out.length, 0)
          : (await zstd()).decompress(frame, { defaultHeapSize: out.length });
      if (got === null) throw new Error('no output');
      res = got;
    } catch {
      throw corrupt(`Could not decompress the zstd cluster at host offset ${hostOffset}`, path, hostOffset);
    }
    if (res.length !== out.length) {
      throw corrupt(`Compressed cluster at host offset ${hostOffset} has the wrong size`, path, hostOffset);
    }
    out.set(res);
    return;
  }
  // QEMU's qcow2_zlib_decompress: raw deflate, 4 KiB window, the cluster must fill.
  const res = await inflateCluster(src, out.length);
  if (res === null) {
    throw corrupt(`Could not decompress the cluster at host offset ${hostOffset}`, path, hostOffset);
  }
  out.set(res);
}

/**
 * A small pool of worker threads for zstd compression (the wasm build runs on the thread
 * that calls it). Idle workers are unref'd: they never keep the process alive. Where the worker
 * script is missing (tests running the TypeScript sources) compression runs inline.
 */
class ZstdPool {
  private workers: Worker[] = [];
  private pending = new Map<number, { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private rr = 0;
  private failed = false;

  static scriptPath(): string | null {
    // In the CLI script (dist/cli/vdisk.cjs) this module sits in dist/cli/; the worker is tsc's
    // dist/formats/qcow2/zstd-worker.js.
    const rel = inCliScript(import.meta.url) ? '../formats/qcow2/zstd-worker.js' : './zstd-worker.js';
    const p = fileURLToPath(new URL(rel, import.meta.url));
    return existsSync(p) ? p : null;
  }

  private start(): boolean {
    if (this.workers.length > 0) return true;
    const script = ZstdPool.scriptPath();
    if (script === null || this.failed) return false;
    // VDISK_ZSTD_THREADS: pool size (default 2: each worker holds its own wasm heap, and
    // the RSS budget is 200 MiB); 0 compresses on the main thread.
    const want = Number(process.env['VDISK_ZSTD_THREADS'] ?? 2);
    if (!(want >= 1)) return false;
    const n = Math.max(1, Math.min(want, availableParallelism()));
    for (let i = 0; i < n; i++) {
      const w = new Worker(script);
      w.on('message', (m: { id?: number; out?: Uint8Array; error?: string }) => {
        if (m.id === undefined) return;
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        if (this.pending.size === 0) for (const x of this.workers) x.unref();
        if (m.error !== undefined || m.out === undefined)
          p.reject(new Error(m.error ?? 'zstd worker failed'));
        else p.resolve(m.out);
      });
      w.on('error', (err) => this.fail(err));
      // After the listeners (adding one refs the port again).
      w.unref();
      this.workers.push(w);
    }
    return true;
  }

  private fail(err: Error): void {
    this.failed = true;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const w of this.workers) void w.terminate();
    this.workers = [];
  }

  compress(data: Uint8Array, level: number): Promise<Uint8Array> | null {
    if (!this.start()) return null;
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length]!;
    // Workers hold the process alive only while they have work.
    if (this.pending.size === 0) for (const x of this.workers) x.ref();
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, data, level });
    });
  }
}

const zstdPool = new ZstdPool();

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
    // The system's libzstd on libuv's pool (native/vdisk_zstd.c): null when it does not fit.
    if (native?.zstdCluster !== undefined) return native.zstdCluster(asBuffer(src), 0, clusterSize - 1, 3);
    const viaPool = zstdPool.compress(src, 3);
    out = viaPool !== null ? await viaPool : (await zstd()).compress(src, 3);
  } else {
    return deflateCluster(src, clusterSize - 1);
  }
  return out.length >= clusterSize - 1 ? null : out;
}
