/**
 * The formats issue's round trip, through `vdisk convert` alone: qcow2 → vmdk → vdi → vhdx →
 * vpc → qed → qcow2. The source is made by qemu-img and written by qemu-io (data, zero
 * writes, a discard, compressed clusters); every hop must hold the source's content
 * (`qemu-img compare` against the source) and pass `qemu-img check` where qemu checks the
 * format; the last image must read byte for byte as the first.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir());
});
afterAll(() => cleanup());

/** qemu-img checks these formats; the others answer "does not support checks". */
const CHECKED = new Set(['qcow2', 'vmdk', 'vdi', 'vhdx', 'qed']);

const HOPS: Array<{ file: string; fmt: string; opts?: string }> = [
  { file: 'b.vmdk', fmt: 'vmdk', opts: 'subformat=monolithicSparse' },
  { file: 'c.vdi', fmt: 'vdi' },
  { file: 'd.vhdx', fmt: 'vhdx', opts: 'block_size=8M' },
  // force_size keeps the exact virtual size (else vpc rounds it to a CHS geometry).
  { file: 'e.vhd', fmt: 'vpc', opts: 'force_size=on' },
  { file: 'f.qed', fmt: 'qed' },
  { file: 'g.qcow2', fmt: 'qcow2', opts: 'compat=1.1' },
];

it('qcow2 → vmdk → vdi → vhdx → vpc → qed → qcow2 is lossless', async () => {
  const src = join(dir, 'a.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', src, '96M']);
  qemuIo(
    src,
    [
      'write -P 0x11 0 1M',
      'write -P 0x22 3M 512k',
      'write -z 4M 2M',
      'write -P 0x33 10000k 7k',
      'write -c -P 0x44 32M 256k',
      'write -P 0x55 40M 4M',
      'discard 41M 1M',
      'write -P 0x66 95M 1M',
    ],
    'qcow2',
  );
  const want = qemuRawDigest(src, 'qcow2');
  let prev = { file: 'a.qcow2', fmt: 'qcow2' };
  for (const hop of HOPS) {
    const out = join(dir, hop.file);
    const args = ['convert', '-f', prev.fmt, '-O', hop.fmt, ...(hop.opts ? ['-o', hop.opts] : [])];
    const r = await vdisk([...args, join(dir, prev.file), out]);
    expect(r.stderr, `${prev.fmt} → ${hop.fmt}`).toBe('');
    expect(r.code, `${prev.fmt} → ${hop.fmt}`).toBe(0);
    const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', hop.fmt, src, out]);
    expect(cmp.stdout, `${hop.fmt} against the source`).toBe('Images are identical.\n');
    if (CHECKED.has(hop.fmt)) {
      const chk = qemuImg(['check', '-f', hop.fmt, out]);
      expect(chk.code, `qemu-img check ${hop.fmt}: ${chk.stdout}${chk.stderr}`).toBe(0);
    }
    prev = hop;
  }
  expect(qemuRawDigest(join(dir, 'g.qcow2'), 'qcow2')).toBe(want);
  // The way back to qcow2 keeps the zeros sparse: nothing of the 96 MiB is allocated that the
  // source did not hold as data.
  const info = JSON.parse(qemuImgOk(['info', '--output=json', join(dir, 'g.qcow2')])) as {
    'actual-size': number;
  };
  expect(info['actual-size']).toBeLessThan(16 * 1024 * 1024);
});

it('convert -c -O vmdk: accepted and refused per subformat as qemu-img', async () => {
  const src = join(dir, 'c.raw');
  qemuImgOk(['create', '-q', '-f', 'raw', src, '8M']);
  qemuIo(src, ['write -P 0x5a 0 1M', 'write -P 0xa5 5M 64k'], 'raw');
  for (const sf of ['monolithicSparse', 'streamOptimized', 'twoGbMaxExtentSparse', 'monolithicFlat']) {
    const args = ['convert', '-c', '-O', 'vmdk', '-o', `subformat=${sf}`, src];
    const q = qemuImg([...args, join(dir, `q-${sf}.vmdk`)]);
    const v = await vdisk([...args, join(dir, `v-${sf}.vmdk`)]);
    expect(v.code, sf).toBe(q.code);
    expect(v.stderr, sf).toBe(q.stderr.replace(/^qemu-img: /, 'vdisk: '));
    if (q.code !== 0) continue;
    const out = join(dir, `v-${sf}.vmdk`);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'vmdk', src, out]).stdout, sf).toBe(
      'Images are identical.\n',
    );
    expect(qemuImg(['check', '-f', 'vmdk', out]).code, sf).toBe(0);
  }
});
