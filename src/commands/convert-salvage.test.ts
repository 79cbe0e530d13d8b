/**
 * `convert --salvage` against qemu-img: sources whose reads fail (a compressed cluster that
 * does not inflate, an L2 entry with an unaligned offset, whose block status fails) are copied
 * with zeros where reading fails, qemu-img's warnings (none with -q) and exit status, and the
 * same output image. Without --salvage both tools fail.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-salvage-'));
  // 1 MiB of 7s, compressed: cluster 1's compressed data is then overwritten with 0xff.
  const raw = join(dir, 'r.raw');
  qemuImgOk(['create', '-q', '-f', 'raw', raw, '1M']);
  qemuIo(raw, ['write -P 7 0 1M'], 'raw');
  const c = join(dir, 'compressed.qcow2');
  qemuImgOk(['convert', '-c', '-O', 'qcow2', raw, c]);
  const b = readFileSync(c);
  const l1 = Number(b.readBigUInt64BE(40));
  const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const entry = b.readBigUInt64BE(l2 + 8);
  const coff = Number(entry & ((1n << 54n) - 1n));
  b.fill(0xff, coff, coff + 64);
  writeFileSync(join(dir, 'bad-compressed.qcow2'), b);
  // 2 MiB written; L2 entry 20 (1.25 MiB) made unaligned: its block status fails.
  const u = join(dir, 'u.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', u, '4M']);
  qemuIo(u, ['write -P 1 0 2M'], 'qcow2');
  const ub = readFileSync(u);
  const ul2 = Number(ub.readBigUInt64BE(Number(ub.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
  ub.writeBigUInt64BE(ub.readBigUInt64BE(ul2 + 8 * 20) | 0x200n, ul2 + 8 * 20);
  writeFileSync(join(dir, 'unaligned.qcow2'), ub);
});
afterAll(() => cleanup());

/** QEMU's qcow2 reports the corruption it meets while reading; vdisk's reads do not. */
const corruptionNotice = /^qcow2: Image is corrupt: .*\n/gm;

describe('convert --salvage against qemu-img', () => {
  for (const src of ['bad-compressed.qcow2', 'unaligned.qcow2']) {
    for (const extra of [[], ['-q'], ['-O', 'qcow2'], ['-m', '1']]) {
      it(`${src} ${extra.join(' ')}`, async () => {
        const out = extra.includes('qcow2') ? 'qcow2' : 'raw';
        const args = (o: string) => [
          'convert',
          '--salvage',
          '-O',
          out,
          ...extra.filter((a) => a !== '-O' && a !== 'qcow2'),
          join(dir, src),
          o,
        ];
        const q = join(dir, `q.${out}`);
        const v = join(dir, `v.${out}`);
        const qr = qemuImg(args(q));
        const vr = await vdisk(args(v));
        expect(vr.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(qr.stderr.replace(corruptionNotice, ''));
        expect(vr.stdout).toBe(qr.stdout);
        expect(vr.code).toBe(qr.code);
        expect(qr.code).toBe(0);
        if (!extra.includes('-q')) expect(vr.stderr).toContain('vdisk: warning: error while reading');
        expect(qemuImg(['compare', '-f', out, '-F', out, q, v]).stdout).toBe('Images are identical.\n');
      });
    }
  }

  it('without --salvage, both fail on the unreadable cluster', async () => {
    for (const src of ['bad-compressed.qcow2', 'unaligned.qcow2']) {
      const qr = qemuImg(['convert', '-O', 'raw', join(dir, src), join(dir, 'nq.raw')]);
      const vr = await vdisk(['convert', '-O', 'raw', join(dir, src), join(dir, 'nv.raw')]);
      expect(qr.code).toBe(1);
      expect(vr.code).toBe(1);
      expect(vr.stderr).toMatch(/^vdisk: error while reading (block status at offset|at byte) \d+: .*\n$/);
    }
  });

  it('--salvage with -C is refused as qemu-img refuses it', async () => {
    const args = ['convert', '--salvage', '-C', '-O', 'raw', join(dir, 'unaligned.qcow2')];
    const qr = qemuImg([...args, join(dir, 'cq.raw')]);
    const vr = await vdisk([...args, join(dir, 'cv.raw')]);
    expect(vr.stderr.replace('vdisk:', 'qemu-img:')).toBe(qr.stderr);
    expect(vr.code).toBe(qr.code);
  });
});
