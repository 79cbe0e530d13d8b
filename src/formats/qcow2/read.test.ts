/**
 * Oracle tests for the qcow2 read path: images made by the real qemu-img and qemu-io read
 * byte-identical through vdisk (sha256 of a full read against qemu-img convert -O raw), and
 * block status agrees with qemu-img map.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import type { Image } from '../../core/image.js';
import { qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-read-'));
});
afterAll(() => cleanup());

async function vdiskDigest(img: Image): Promise<string> {
  const buf = new Uint8Array(img.size);
  // Read in uneven pieces so that requests straddle clusters and L2 tables.
  const step = 3 * 65536 + 4096;
  for (let off = 0; off < img.size; off += step) {
    await img.readAt(buf.subarray(off, Math.min(img.size, off + step)), off);
  }
  return sha256(buf);
}

/** A mix of qemu-io writes that exercises data, zero, discard and compressed clusters. */
function pattern(size: number, cs: number, compressed: boolean): string[] {
  const c = [
    `write -P 0x11 0 ${cs * 3}`,
    `write -P 0x22 ${cs * 5 + 512} 4096`,
    `write -P 0x33 ${size / 2} ${cs * 2}`,
    `write -z ${cs} ${cs}`,
    `discard ${size / 2} ${cs}`,
    `write -P 0x44 ${size - cs} ${cs}`,
  ];
  if (compressed) c.push(`write -c -P 0x55 ${cs * 40} ${cs}`, `write -c -P 0x66 ${cs * 41} ${cs}`);
  return c;
}

const cases: Array<{ name: string; opts: string; size: number; cs: number; compressed?: boolean }> = [
  { name: 'default', opts: '', size: 16 << 20, cs: 65536, compressed: true },
  { name: 'v2', opts: 'compat=0.10', size: 16 << 20, cs: 65536, compressed: true },
  { name: '512', opts: 'cluster_size=512', size: 4 << 20, cs: 512 },
  { name: '1k-compressed', opts: 'cluster_size=1024', size: 4 << 20, cs: 1024, compressed: true },
  { name: '4k-rc1', opts: 'cluster_size=4096,refcount_bits=1', size: 8 << 20, cs: 4096 },
  { name: 'rc2', opts: 'refcount_bits=2', size: 8 << 20, cs: 65536 },
  { name: 'rc8', opts: 'refcount_bits=8', size: 8 << 20, cs: 65536 },
  { name: 'rc64', opts: 'refcount_bits=64', size: 8 << 20, cs: 65536, compressed: true },
  { name: '2M', opts: 'cluster_size=2M', size: 128 << 20, cs: 2 << 20, compressed: true },
  { name: 'zstd', opts: 'compression_type=zstd', size: 16 << 20, cs: 65536, compressed: true },
  {
    name: 'zstd-4k',
    opts: 'compression_type=zstd,cluster_size=4096',
    size: 4 << 20,
    cs: 4096,
    compressed: true,
  },
  { name: 'extl2', opts: 'extended_l2=on', size: 16 << 20, cs: 65536, compressed: true },
  { name: 'extl2-32k', opts: 'extended_l2=on,cluster_size=32k', size: 8 << 20, cs: 32768 },
  { name: 'lazy', opts: 'lazy_refcounts=on', size: 8 << 20, cs: 65536 },
];

describe('qcow2 read path against qemu', () => {
  for (const c of cases) {
    it(`reads a qemu-made image byte-identical (${c.name})`, async () => {
      const p = join(dir, `${c.name}.qcow2`);
      qemuImgOk(['create', '-f', 'qcow2', ...(c.opts ? ['-o', c.opts] : []), p, String(c.size)]);
      qemuIo(p, pattern(c.size, c.cs, c.compressed === true), 'qcow2');
      // Sub-cluster writes on extended L2 leave partially allocated clusters.
      if (c.opts.includes('extended_l2'))
        qemuIo(p, [`write -P 0x77 ${c.cs * 12 + c.cs / 32} ${c.cs / 16}`], 'qcow2');
      const img = await openImage(p, { format: 'qcow2' });
      try {
        expect(await vdiskDigest(img)).toBe(qemuRawDigest(p, 'qcow2'));
        const map = JSON.parse(qemuImgOk(['map', '--output=json', '-f', 'qcow2', p])) as Array<{
          start: number;
          length: number;
          data: boolean;
          zero: boolean;
          offset?: number;
        }>;
        const ours = [];
        for await (const e of extentsOf(img)) {
          ours.push({
            start: e.offset,
            length: e.length,
            data: e.data,
            zero: e.zero || (!e.allocated && !e.data),
            ...(e.hostOffset !== undefined && !e.compressed ? { offset: e.hostOffset } : {}),
          });
        }
        expect(ours).toEqual(
          map.map((m) => ({
            start: m.start,
            length: m.length,
            data: m.data,
            zero: m.zero,
            ...(m.offset !== undefined ? { offset: m.offset } : {}),
          })),
        );
      } finally {
        await img.close();
      }
    });
  }

  it('reads through a backing chain (unallocated ranges from the backing, zeros past its end)', async () => {
    const base = join(dir, 'base.qcow2');
    const top = join(dir, 'top.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', base, '4M']);
    qemuIo(base, ['write -P 0xaa 0 4M'], 'qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '8M']);
    qemuIo(top, ['write -P 0xbb 1M 64k', 'write -z 2M 128k', 'discard 3M 64k'], 'qcow2');
    const img = await openImage(top, { backing: 'follow' });
    try {
      expect(img.format).toBe('qcow2');
      expect(img.chainLength).toBe(2);
      expect(await vdiskDigest(img)).toBe(qemuRawDigest(top, 'qcow2'));
    } finally {
      await img.close();
    }
    await expect(openImage(top)).rejects.toMatchObject({ code: 'NOT_ALLOWED' });
  });

  it('reads an image with an external data file (raw and not raw), only when allowed', async () => {
    for (const raw of [false, true]) {
      const p = join(dir, `ext-${raw}.qcow2`);
      qemuImgOk([
        'create',
        '-f',
        'qcow2',
        '-o',
        `data_file=${p}.data${raw ? ',data_file_raw=on' : ''}`,
        p,
        '8M',
      ]);
      // Guest cluster 0 sits at host offset 0 of the data file (told apart by the COPIED flag).
      qemuIo(
        p,
        ['write -P 0x11 0 64k', 'write -P 0x12 64k 192k', 'write -z 1M 64k', 'write -P 0x34 7M 4k'],
        'qcow2',
      );
      await expect(openImage(p, { format: 'qcow2' })).rejects.toMatchObject({ code: 'NOT_ALLOWED' });
      const img = await openImage(p, { format: 'qcow2', allowDataFile: true });
      try {
        expect(await vdiskDigest(img)).toBe(qemuRawDigest(p, 'qcow2'));
      } finally {
        await img.close();
      }
    }
  });
});
