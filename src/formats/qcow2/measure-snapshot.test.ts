/**
 * qcow2 measure (the numbers of `qemu-img measure` for sizes, options and source images)
 * and snapshot views (the content qemu-img convert -l reads from an internal snapshot).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { Image } from '../../core/image.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir } from '../../test/oracle.js';
import { qcow2Driver } from './driver.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-measure-'));
});
afterAll(() => cleanup());

function qemuMeasure(args: string[]): { required: number; fullyAllocated: number } | { error: string } {
  const r = qemuImg(['measure', '--output=json', '-O', 'qcow2', ...args]);
  if (r.code !== 0) return { error: r.stderr.replace(/^qemu-img: /, '').trim() };
  const j = JSON.parse(r.stdout) as {
    required: number;
    'fully-allocated': number;
  };
  return { required: j.required, fullyAllocated: j['fully-allocated'] };
}

describe('qcow2 measure against qemu-img', () => {
  const sizes = [0, 512, 65536, 1 << 30, 1e12, 16 * 2 ** 40];
  const optionSets: Array<Record<string, string>> = [
    {},
    { cluster_size: '512' },
    { cluster_size: '2097152' },
    { refcount_bits: '1' },
    { refcount_bits: '64', cluster_size: '4096' },
    { extended_l2: 'on' },
    { compat: '0.10' },
  ];
  it('measures sizes for every option set as qemu-img does', async () => {
    for (const o of optionSets) {
      for (const size of sizes) {
        const opts = Object.entries(o)
          .map(([k, v]) => `${k}=${v}`)
          .join(',');
        const q = qemuMeasure([...(opts ? ['-o', opts] : []), '--size', String(size)]);
        const v = await qcow2Driver.measure!(size, o).catch((e: Error) => ({ error: e.message }));
        expect({ o, size, ...v }).toEqual({ o, size, ...q });
      }
    }
  });

  it('measures a source image by its allocated clusters', async () => {
    const src = join(dir, 'src.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', src, '1G']);
    qemuIo(
      src,
      ['write -P 1 0 3M', 'write -P 2 100M 4k', 'write -z 200M 1M', 'write -c -P 3 300M 64k'],
      'qcow2',
    );
    for (const o of [{}, { cluster_size: '4096' }, { cluster_size: '2097152' }] as Array<
      Record<string, string>
    >) {
      const img = await openImage(src);
      try {
        const opts = Object.entries(o)
          .map(([k, v]) => `${k}=${v}`)
          .join(',');
        const q = qemuMeasure([...(opts ? ['-o', opts] : []), src]);
        expect(await qcow2Driver.measure!(0, o, img)).toEqual(q);
      } finally {
        await img.close();
      }
    }
  });
});

describe('qcow2 snapshot views', () => {
  it('reads each internal snapshot as qemu-img convert -l does', async () => {
    const p = join(dir, 'snaps.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', p, '8M']);
    qemuIo(p, ['write -P 1 0 1M'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 'one', p]);
    qemuIo(p, ['write -P 2 512k 1M', 'write -z 0 64k'], 'qcow2');
    qemuImgOk(['snapshot', '-c', 'two', p]);
    qemuIo(p, ['discard 0 8M'], 'qcow2');
    const img = await openImage(p);
    try {
      for (const which of [{ name: 'one' }, { id: '2' }]) {
        const view = await img.driver.openSnapshot!(which);
        const v = new Image(view, p);
        const buf = new Uint8Array(v.size);
        await v.readAt(buf, 0);
        await v.close();
        const label = which.name ?? 'two';
        const out = join(dir, `snap-${label}.raw`);
        qemuImgOk(['convert', '-l', `snapshot.name=${label}`, '-O', 'raw', p, out]);
        expect(sha256(buf)).toBe(qemuRawDigest(out, 'raw'));
      }
      await expect(img.driver.openSnapshot!({ name: 'nope' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    } finally {
      await img.close();
    }
  });
});
