/**
 * Test helpers that run the oracle (the real qemu-img and qemu-io) and vdisk side by side.
 * Tests import these; nothing here is part of the shipped build.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { bufferIo } from '../cli/io.js';
import { main } from '../cli/main.js';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], cwd?: string): RunResult {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 256 << 20 });
  if (r.error) throw r.error;
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

/** Run the real qemu-img. */
export function qemuImg(args: string[], cwd?: string): RunResult {
  return run('qemu-img', args, cwd);
}

/**
 * Run the real qemu-img, again while it fails with "Unable to get accurate CPU usage": QEMU
 * times PBKDF2 (LUKS create, measure of an encrypted target) with the thread's CPU clock,
 * whose tick is coarse here, and gives up when it reads 0 ms — on a busy machine, several
 * times in a row. Waits a little longer before each new try.
 */
export function qemuImgLuks(args: string[], cwd?: string): RunResult {
  for (let i = 0; ; i++) {
    const r = qemuImg(args, cwd);
    if (r.code === 0 || i >= 20 || !r.stderr.includes('Unable to get accurate CPU usage')) return r;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20 * (i + 1));
  }
}

/** Run the real qemu-img and fail the test if it fails. */
export function qemuImgOk(args: string[], cwd?: string): string {
  const r = qemuImg(args, cwd);
  if (r.code !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** Run qemu-io commands (-c each) on an image. */
/** Copies the data ranges SEEK_DATA/SEEK_HOLE find, nothing else, and the size. */
const COPY_SPARSE_PY = `
import os, sys
src, dst = sys.argv[1], sys.argv[2]
i = os.open(src, os.O_RDONLY)
o = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
size = os.fstat(i).st_size
off = 0
while off < size:
    try:
        d = os.lseek(i, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(i, d, os.SEEK_HOLE)
    while d < h:
        n = min(h - d, 1 << 20)
        os.pwrite(o, os.pread(i, n, d), d)
        d += n
    off = h
os.ftruncate(o, size)
`;

/**
 * Copy an image with the same data and holes as SEEK_DATA sees them (what hostFileMap
 * compares): Node's copyFileSync writes every block, and cp's --sparse=auto also turns runs
 * of zeros into holes.
 */
export function copySparse(src: string, dst: string): void {
  const r = spawnSync('python3', ['-c', COPY_SPARSE_PY, src, dst], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`copy ${src} to ${dst}: ${r.stderr}`);
}

/**
 * The image file's own allocation as qemu-img maps it (`-f raw`: data and holes of the host
 * file), to compare the space two tools leave allocated, not only what the image reads.
 */
export function hostFileMap(path: string): string {
  return qemuImgOk(['map', '--output=json', '-f', 'raw', path]);
}

export function qemuIo(image: string, commands: string[], format?: string): string {
  const args = [...(format ? ['-f', format] : []), ...commands.flatMap((c) => ['-c', c]), image];
  const r = run('qemu-io', args);
  if (r.code !== 0 || /error|failed/i.test(r.stderr + r.stdout)) {
    throw new Error(`qemu-io ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  }
  return r.stdout;
}

/** Run vdisk in-process (same code as bin/vdisk, without the process start-up). */
export async function vdisk(args: string[], cwd?: string): Promise<RunResult> {
  const io = bufferIo();
  const prev = process.cwd();
  if (cwd !== undefined) process.chdir(cwd);
  try {
    const code = await main(args, io);
    return { code, stdout: io.stdout, stderr: io.stderr };
  } finally {
    if (cwd !== undefined) process.chdir(prev);
  }
}

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = 'vdisk-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** sha256 of the guest content as qemu-img sees it (convert -O raw). */
export function qemuRawDigest(image: string, format?: string): string {
  const { dir, cleanup } = tempDir('vdisk-digest-');
  try {
    const out = join(dir, 'out.raw');
    qemuImgOk(['convert', ...(format ? ['-f', format] : []), '-O', 'raw', image, out]);
    // In pieces: images may be larger than a Buffer can hold.
    const h = createHash('sha256');
    const fd = openSync(out, 'r');
    try {
      const chunk = Buffer.alloc(16 << 20);
      for (;;) {
        const n = readSync(fd, chunk, 0, chunk.length, null);
        if (n === 0) break;
        h.update(chunk.subarray(0, n));
      }
    } finally {
      closeSync(fd);
    }
    return h.digest('hex');
  } finally {
    cleanup();
  }
}

export function sha256(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** `node --import <this>` runs TypeScript sources directly (child processes in tests). */
export const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/** The CLI entry as TypeScript source, for child processes that run vdisk without a build. */
export const CLI_ENTRY = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'bin.ts');
