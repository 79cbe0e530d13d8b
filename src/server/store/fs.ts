/**
 * The filesystem blob store: one file per image under DIR. Writes go to `DIR/.tmp/<key>.<rand>`
 * in large writes (1 MiB: small chunks coalesced, one write in flight while the next fills;
 * chunks of whole MiBs, as uploads give, written in place without a copy), the kernel's
 * write-back started as the data arrives (WRITE_BACK), fsync on commit, then rename into place
 * and fsync of the directory: an acknowledged upload survives a crash, an unacknowledged one
 * leaves only a temporary file that `cleanup` removes.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { ReadSource } from '../../core/host-file.js';
import { native } from '../../native/index.js';
import type { BlobEntry, BlobStore, BlobWriter, CleanupOptions } from './store.js';

// 1 MiB: as fast as larger writes into the page cache, and on this kind of VM some runs of
// 4 MiB write(2)s cost several times the kernel time (1 GiB: 1.0–1.7 s of system time against
// ~0.2 s; the first touch of fresh page-cache memory varies a lot between runs here).
const CHUNK = 1 << 20;
const KEY_RE = /^[A-Za-z0-9._-]+$/;
/**
 * Write-back starts every WRITE_BACK bytes during the upload (sync_file_range, native): the
 * disk works while the rest arrives, and the fsync at commit has only the tail left. Without
 * it a 1 GiB upload waited 1.7–2.9 s in that fsync here, the whole file going to disk after
 * the last byte came.
 */
const WRITE_BACK = 8 << 20;
/** VDISK_WRITE_BACK=0: no early write-back (the benchmark compares both in one run). */
const syncRange = process.env['VDISK_WRITE_BACK'] === '0' ? undefined : native?.syncRange;

function checkKey(key: string): string {
  if (!KEY_RE.test(key) || key.startsWith('.')) throw new Error(`invalid blob key '${key}'`);
  return key;
}

/** Bytes [off, off+len) of buf at file position `at`, in writes of at most CHUNK. */
async function writeAll(fh: FileHandle, buf: Buffer, off: number, len: number, at: number): Promise<void> {
  const end = off + len;
  while (off < end) {
    const { bytesWritten } = await fh.write(buf, off, Math.min(CHUNK, end - off), at);
    off += bytesWritten;
    at += bytesWritten;
  }
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

export class FsStore implements BlobStore {
  readonly kind = 'file';
  private readonly tmp: string;

  private constructor(private readonly dir: string) {
    this.tmp = join(dir, '.tmp');
  }

  static async open(dir: string): Promise<FsStore> {
    await mkdir(join(dir, '.tmp'), { recursive: true });
    return new FsStore(dir);
  }

  async create(key: string): Promise<BlobWriter> {
    const dir = this.dir;
    const final = join(dir, checkKey(key));
    const tmpPath = join(this.tmp, `${key}.${randomBytes(6).toString('hex')}`);
    const fh = await open(tmpPath, 'wx', 0o600);
    let buf: Buffer = Buffer.allocUnsafe(CHUNK);
    let used = 0;
    let pos = 0;
    let inflight: Promise<unknown> = Promise.resolve();
    let spare: Buffer | null = Buffer.allocUnsafe(CHUNK);
    let closed = false;
    // Bytes handed to write-back so far; one sync_file_range at a time (on the pool).
    let handed = 0;
    let syncing: Promise<unknown> | null = null;
    const writeBack = (written: number) => {
      if (syncRange === undefined || syncing !== null || written - handed < WRITE_BACK) return;
      const from = handed;
      handed = written;
      syncing = syncRange(fh.fd, from, written - from)
        .catch(() => {})
        .finally(() => {
          syncing = null;
        });
    };
    /** writeAll, then write-back of what is written. */
    const write = async (b: Buffer, off: number, len: number, at: number) => {
      await writeAll(fh, b, off, len, at);
      writeBack(at + len);
    };

    const flush = async () => {
      if (used === 0) return;
      await inflight;
      const full = buf;
      const len = used;
      const at = pos;
      pos += len;
      buf = spare ?? Buffer.allocUnsafe(CHUNK);
      spare = null;
      used = 0;
      inflight = write(full, 0, len, at).then(() => {
        spare = full;
      });
    };

    const finish = async () => {
      if (closed) return;
      closed = true;
      await fh.close();
    };

    return {
      async write(chunk: Buffer) {
        let off = 0;
        if (used === 0 && chunk.length >= CHUNK) {
          // Large aligned input (the upload's 4 MiB hashing blocks): written from the caller's
          // buffer in CHUNK-sized pwrites, no copy; the promise (which the caller awaits before
          // reusing the buffer) resolves when the kernel has every byte. Only whole CHUNKs:
          // a tail is buffered as usual.
          const whole = chunk.length - (chunk.length % CHUNK);
          await inflight;
          const at = pos;
          pos += whole;
          const direct = write(chunk, 0, whole, at);
          inflight = direct;
          await direct;
          off = whole;
        }
        while (off < chunk.length) {
          const n = Math.min(chunk.length - off, CHUNK - used);
          chunk.copy(buf, used, off, off + n);
          used += n;
          off += n;
          if (used === CHUNK) await flush();
        }
      },
      async commit() {
        await flush();
        await inflight;
        await syncing;
        await fh.sync();
        await finish();
        await rename(tmpPath, final);
        // The rename itself durable: the directory's entry, before the upload is acknowledged.
        await syncDir(dir);
      },
      async abort() {
        try {
          await inflight;
        } catch {
          // the write error is what made us abort
        }
        await syncing;
        await finish().catch(() => {});
        await unlink(tmpPath).catch(() => {});
      },
    };
  }

  async read(key: string, start?: number, end?: number): Promise<Readable> {
    const path = join(this.dir, checkKey(key));
    const opts: { highWaterMark: number; start?: number; end?: number } = { highWaterMark: 1 << 20 };
    if (start !== undefined) opts.start = start;
    if (end !== undefined) opts.end = end;
    // Open first so that a missing file is an error here, not on the stream.
    const fh = await open(path, 'r');
    return createReadStream('', { ...opts, fd: fh });
  }

  openFile(key: string): Promise<FileHandle> {
    return open(join(this.dir, checkKey(key)), 'r');
  }

  localPath(key: string): string {
    return join(this.dir, checkKey(key));
  }

  async openRandom(key: string): Promise<ReadSource> {
    const fh = await this.openFile(key);
    const size = (await fh.stat()).size;
    return {
      size,
      read: async (buf, offset) => (await fh.read(buf, 0, buf.length, offset)).bytesRead,
      close: () => fh.close(),
    };
  }

  async size(key: string): Promise<number | null> {
    try {
      return (await stat(join(this.dir, checkKey(key)))).size;
    } catch {
      return null;
    }
  }

  async delete(key: string): Promise<void> {
    await rm(join(this.dir, checkKey(key)), { force: true });
  }

  async *list(): AsyncIterable<BlobEntry> {
    for (const name of await readdir(this.dir)) {
      if (name.startsWith('.')) continue;
      const st = await stat(join(this.dir, name)).catch(() => null);
      if (st?.isFile() === true) yield { key: name, modified: st.mtime };
    }
  }

  /** Temporary files are `<key>.<12 hex digits>`. */
  private async temporaries(): Promise<{ key: string; path: string }[]> {
    return (await readdir(this.tmp)).map((name) => ({
      key: name.replace(/\.[0-9a-f]{12}$/, ''),
      path: join(this.tmp, name),
    }));
  }

  async cleanup(opts: CleanupOptions = {}): Promise<number> {
    let n = 0;
    for (const t of await this.temporaries()) {
      if (opts.keep?.(t.key) === true) continue;
      if (opts.before !== undefined) {
        // A writer touches its file with every write: a recent mtime is a live upload.
        const st = await stat(t.path).catch(() => null);
        if (st === null || st.mtime >= opts.before) continue;
      }
      await rm(t.path, { force: true });
      n++;
    }
    return n;
  }

  async abortPending(key: string): Promise<number> {
    let n = 0;
    for (const t of await this.temporaries())
      if (t.key === key) {
        await rm(t.path, { force: true });
        n++;
      }
    return n;
  }

  async close(): Promise<void> {}
}
