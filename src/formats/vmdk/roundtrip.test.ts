/**
 * A lossless round trip through vmdk and vdi (and the formats main has beside them), copying
 * by extents through the Image API as convert does: raw → vmdk (streamOptimized, compressed
 * grains) → vdi → vmdk twoGbMaxExtentSparse → vhdx → vpc → qed → vdi static → vmdk
 * monolithicFlat → raw. Every step is checked by qemu-img compare against the source.
 */
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { createCommand } from '../../commands/create.js';
import { extentsOf, isAllZero } from '../../core/device.js';
import type { Image } from '../../core/image.js';
import { digest } from '../../test/image-helpers.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

/** Copy what the source holds into a fresh target, by extents, zeros skipped. */
async function copy(src: Image, dst: Image, compressed: boolean): Promise<void> {
  const grain = 65536;
  for await (const e of extentsOf(src)) {
    if (e.zero) continue;
    for (let off = e.offset; off < e.offset + e.length; ) {
      // Compressed writes go grain by grain, aligned; plain ones in 1 MiB pieces.
      const step = compressed ? grain - (off % grain) : Math.min(1 << 20, e.offset + e.length - off);
      const start = compressed ? off - (off % grain) : off;
      const n = compressed ? Math.min(grain, src.size - start) : step;
      const buf = Buffer.alloc(n);
      await src.readAt(buf, start);
      if (!isAllZero(buf)) {
        if (compressed) await dst.driver.writeCompressed!(buf, start);
        else await dst.writeAt(buf, start);
      }
      off = start + n;
    }
  }
}

describe('round trip through vmdk and vdi', () => {
  it('is lossless, checked by qemu-img at every step', async () => {
    const size = 40 << 20;
    const src = join(dir, 'src.raw');
    qemuImgOk(['create', '-q', '-f', 'raw', src, String(size)]);
    qemuIo(
      src,
      [
        'write -P 0x11 0 3M',
        'write -P 0x22 7340000 100000',
        'write -P 0x33 20M 1M',
        `write -P 0x44 ${size - 512} 512`,
      ],
      'raw',
    );
    const steps: Array<[string, Record<string, string>]> = [
      ['vmdk', { subformat: 'streamOptimized' }],
      ['vdi', {}],
      ['vmdk', { subformat: 'twoGbMaxExtentSparse' }],
      ['vhdx', {}],
      ['vpc', { force_size: 'on' }],
      ['qed', {}],
      ['vdi', { static: 'on' }],
      ['vmdk', { subformat: 'monolithicFlat' }],
      ['raw', {}],
    ];
    let prev = src;
    let prevFmt = 'raw';
    for (const [i, [fmt, options]] of steps.entries()) {
      const out = join(dir, `step${i}.${fmt}`);
      const from = await openImage(prev, { format: prevFmt });
      await createCommand({ filename: out, format: fmt, size: from.size, options });
      const to = await openImage(out, { format: fmt, writable: true });
      await copy(from, to, options['subformat'] === 'streamOptimized');
      await to.close();
      await from.close();
      const cmp = qemuImg(['compare', '-f', 'raw', '-F', fmt, src, out]);
      expect(cmp.stdout, `${fmt} ${JSON.stringify(options)}`).toBe('Images are identical.\n');
      // (qemu-img checks these; not vpc or raw.)
      if (['vmdk', 'vdi', 'vhdx', 'qed'].includes(fmt)) {
        expect(qemuImg(['check', '-f', fmt, out]).code, `check ${fmt}`).toBe(0);
      }
      prev = out;
      prevFmt = fmt;
    }
    const a = await openImage(src, { format: 'raw' });
    const b = await openImage(prev, { format: 'raw' });
    expect(await digest(b)).toBe(await digest(a));
    await a.close();
    await b.close();
  });
});
