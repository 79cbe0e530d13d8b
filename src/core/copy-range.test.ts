/**
 * HostFile.copyFrom (native/vdisk_copy.c) and convert's use of it: copy_file_range for
 * qemu-img's copy offloading (convert -C) and reflinks (FICLONERANGE) for convert's data where
 * the file system shares blocks. The reflink cases run on a loop-mounted XFS (as root, with
 * xfsprogs); elsewhere they are skipped, saying why.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../native/index.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';
import { HostFile } from './host-file.js';

let dir: string;
let cleanup: () => void;
const DATA = randomBytes(3 << 20);

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-copy-range-'));
  writeFileSync(join(dir, 'src.bin'), DATA);
});
afterAll(() => cleanup());

async function pair(target: string, srcPath = join(dir, 'src.bin')): Promise<[HostFile, HostFile]> {
  const src = await HostFile.open(srcPath);
  const dst = await HostFile.open(target, { writable: true, create: true });
  return [src, dst];
}

describe.skipIf(native?.copyRange === undefined)('HostFile.copyFrom', () => {
  it("'copy' moves the bytes with copy_file_range", async () => {
    const [src, dst] = await pair(join(dir, 'copy.bin'));
    try {
      expect(await dst.copyFrom(src, 4096, 1 << 20, 2 << 20, 'copy')).toBe(true);
    } finally {
      await src.close();
      await dst.close();
    }
    const out = readFileSync(join(dir, 'copy.bin'));
    expect(out.length).toBe(3 << 20);
    expect(out.subarray(1 << 20).equals(DATA.subarray(4096, 4096 + (2 << 20)))).toBe(true);
    expect(out.subarray(0, 1 << 20).every((b) => b === 0)).toBe(true);
  });

  it('a range past the end of the source is left to the caller', async () => {
    const [src, dst] = await pair(join(dir, 'short.bin'));
    try {
      expect(await dst.copyFrom(src, DATA.length - 4096, 0, 8192, 'copy')).toBe(false);
      expect(await dst.copyFrom(src, DATA.length - 4096, 0, 8192, 'clone')).toBe(false);
    } finally {
      await src.close();
      await dst.close();
    }
  });

  it("'clone' either shares the blocks or says it cannot, leaving the bytes to the caller", async () => {
    const [src, dst] = await pair(join(dir, 'clone.bin'));
    let done: boolean;
    try {
      done = await dst.copyFrom(src, 0, 0, 1 << 20, 'clone');
      // Unaligned: never a reflink.
      expect(await dst.copyFrom(src, 100, 1 << 20, 4096, 'clone')).toBe(false);
    } finally {
      await src.close();
      await dst.close();
    }
    const out = readFileSync(join(dir, 'clone.bin'));
    if (done) expect(out.subarray(0, 1 << 20).equals(DATA.subarray(0, 1 << 20))).toBe(true);
    else expect(out.length).toBe(0);
  });

  it('refuses a read-only target', async () => {
    const src = await HostFile.open(join(dir, 'src.bin'));
    try {
      await expect(src.copyFrom(src, 0, 0, 4096, 'copy')).rejects.toMatchObject({ code: 'READ_ONLY' });
    } finally {
      await src.close();
    }
  });
});

/** A loop-mounted XFS (reflinks on) for the block-sharing cases, or why there is none. */
function mountXfs(at: string): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  const img = `${at}.img`;
  writeFileSync(img, '');
  execFileSync('truncate', ['-s', '1G', img]);
  const mk = spawnSync('mkfs.xfs', ['-q', '-f', img], { encoding: 'utf8' });
  if (mk.status !== 0) return `mkfs.xfs: ${mk.error?.message ?? mk.stderr.trim()}`;
  mkdirSync(at);
  // allocsize=64k: little speculative preallocation, whose unwritten extents SEEK_DATA may
  // report as data while their pages are cached (the tools would then see different sources).
  const m = spawnSync('mount', ['-o', 'loop,allocsize=64k', img, at], { encoding: 'utf8' });
  if (m.status !== 0) return `mount: ${m.stderr.trim()}`;
  return null;
}

/** Extents of a file that share blocks with another (FIEMAP_EXTENT_SHARED), from filefrag. */
function sharedExtents(path: string): number {
  const out = execFileSync('filefrag', ['-v', path], { encoding: 'utf8' });
  return out.split('\n').filter((l) => /\bshared\b/.test(l)).length;
}

describe('convert on XFS: reflinks and copy offloading against qemu-img', () => {
  let xfs = '';
  let why: string | null = 'not mounted';
  beforeAll(() => {
    xfs = join(dir, 'xfs');
    why = mountXfs(xfs);
    if (why !== null) return;
    // Data, zeros written as data, holes (as convert.test.ts's mixed.img).
    const src = join(xfs, 'src.raw');
    qemuImgOk(['create', '-f', 'raw', src, '24M']);
    qemuIo(
      src,
      [
        'write -P 0xab 0 64k',
        'write -P 0 64k 192k',
        'write -P 0xcd 1M 3M',
        'write -P 0 4M 2M',
        'write -P 0x11 23M 1M',
      ],
      'raw',
    );
    execFileSync('sync');
  });
  afterAll(() => {
    if (why === null) spawnSync('umount', [xfs]);
  });

  const cases: Array<[string, string[], string]> = [
    ['raw → raw', ['-O', 'raw'], 'raw'],
    ['raw → qcow2', ['-O', 'qcow2'], 'qcow2'],
    ['-C raw → raw', ['-C', '-O', 'raw'], 'raw'],
    ['-C raw → qcow2', ['-C', '-O', 'qcow2'], 'qcow2'],
  ];
  for (const [name, args, fmt] of cases) {
    it(name, async (ctx) => {
      if (why !== null) ctx.skip(`no XFS: ${why}`);
      const q = join(xfs, `q-${fmt}-${args.length}.img`);
      const v = join(xfs, `v-${fmt}-${args.length}.img`);
      // Each map is taken right after its copy: on XFS a later writeback may turn the
      // speculative preallocation past a write (unwritten extents) into what SEEK_DATA calls data.
      const map = (f: string) => qemuImgOk(['map', '--output=json', '-f', fmt, f]);
      qemuImgOk(['convert', ...args, join(xfs, 'src.raw'), q]);
      const qmap = map(q);
      const r = await vdisk(['convert', ...args, join(xfs, 'src.raw'), v]);
      expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
      expect(map(v)).toBe(qmap);
      expect(qemuImg(['compare', '-f', fmt, '-F', fmt, q, v]).stdout).toBe('Images are identical.\n');
      // vdisk's copy shares the source's blocks, as qemu-img -C's does.
      expect(sharedExtents(v)).toBeGreaterThan(0);
      if (args.includes('-C')) expect(sharedExtents(q)).toBeGreaterThan(0);
    });
  }
});
