/**
 * convert with several writes in flight: qcow2 targets allocate in order while the data
 * writes overlap (prepareWrite), so the file comes out byte for byte as qemu-img writes it;
 * streamOptimized vmdk targets compress runs of whole grains ahead of their ordered append
 * (prepareCompressedRange), with the partial grains at a run's edges written at its turn.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir());
  const src = join(dir, 'src.raw');
  // 9 MiB + 2 KiB: the last 64 KiB grain is short. Data runs start and end inside grains,
  // zero runs of every length, random data across several 2 MiB requests.
  qemuImgOk(['create', '-f', 'raw', src, `${9 * 1024 * 1024 + 2048}`]);
  qemuIo(
    src,
    [
      'write -P 0xab 0 64k',
      'write -P 0 64k 2k',
      'write -P 0xac 66k 62k',
      'write -P 0x5a 330k 3k',
      'write -P 0xcd 1000k 3000k',
      'write -P 0 2M 8k',
      'write -P 0x77 5M 100k',
      'write -P 0x78 7339520 512',
      'write -P 0x11 8M 1026k',
    ],
    'raw',
  );
});
afterAll(() => cleanup());

describe('convert with overlapping writes', () => {
  it('raw → qcow2 is byte-identical to qemu-img output, with 1, 8 and 16 requests in flight', async () => {
    const src = join(dir, 'src.raw');
    const ref = join(dir, 'ref.qcow2');
    qemuImgOk(['convert', '-O', 'qcow2', src, ref]);
    const want = sha256(readFileSync(ref));
    for (const m of ['1', '8', '16']) {
      const out = join(dir, `o${m}.qcow2`);
      const r = await vdisk(['convert', '-m', m, '-O', 'qcow2', src, out]);
      expect(r.code, r.stderr).toBe(0);
      expect(qemuImg(['check', out]).code).toBe(0);
      expect(sha256(readFileSync(out))).toBe(want);
    }
  });

  it('qcow2 → raw and raw → raw hold the source content', async () => {
    const src = join(dir, 'src.raw');
    const q = join(dir, 'q.qcow2');
    qemuImgOk(['convert', '-O', 'qcow2', src, q]);
    const want = qemuRawDigest(src, 'raw');
    for (const [from, fmt] of [
      [q, 'qcow2'],
      [src, 'raw'],
    ] as const) {
      const out = join(dir, `from-${fmt}.raw`);
      const r = await vdisk(['convert', '-f', fmt, '-O', 'raw', from, out]);
      expect(r.code, r.stderr).toBe(0);
      expect(qemuRawDigest(out, 'raw')).toBe(want);
    }
  });

  it('→ vmdk streamOptimized checks clean and compares equal (-S 4k and -S 0)', async () => {
    const src = join(dir, 'src.raw');
    for (const extra of [[], ['-S', '0']]) {
      const out = join(dir, `s${extra.join('')}.vmdk`);
      const r = await vdisk(['convert', ...extra, '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, out]);
      expect(r.code, r.stderr).toBe(0);
      const check = qemuImg(['check', out]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'vmdk', src, out]).code).toBe(0);
      expect(qemuRawDigest(out, 'vmdk')).toBe(qemuRawDigest(src, 'raw'));
    }
  });
});
