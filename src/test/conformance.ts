/**
 * The BlockDevice conformance suite: the same cases over every format driver. A driver's test
 * file calls `runDeviceConformance({ format, create })` (hono's router-test model). Every case
 * applies the same operations to the image under test and to an in-memory model, then checks
 * the bytes through vdisk and through the real qemu-img (compare against a raw copy of the
 * model, and check where the format supports it).
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { extentsOf } from '../core/device.js';
import type { Image } from '../core/image.js';
import { qemuImg, tempDir } from './oracle.js';

export interface ConformanceTarget {
  /** Format name as vdisk and qemu-img know it. */
  format: string;
  /** Create an empty image of `size` bytes at `path` (any means: vdisk create or qemu-img). */
  create(path: string, size: number): Promise<void>;
  /** qemu-img check supports this format. */
  checkable?: boolean;
  /**
   * False when a new image does not read as zeros (luks: its payload decrypts to noise, QEMU's
   * bdrv_has_zero_init = 0): the model then starts from what the new image reads, which
   * qemu-img must read too.
   */
  zeroInit?: boolean;
  /** More checks of the image against the model after each case that writes (format-specific). */
  alsoCheck?(path: string, model: Buffer): void;
  /** Label for the describe block (e.g. "qcow2 cluster_size=4k"). */
  label?: string;
  /**
   * Open the image through vdisk (encrypted images pass their secret here); default:
   * openImage(path, { format, writable }).
   */
  open?(path: string, writable: boolean): Promise<Image>;
  /**
   * How qemu-img is told about the image: the arguments that stand for it on a compare or
   * check command line (e.g. `--object secret,…` and a `json:` name); default `-f <format> <path>`.
   */
  qemuImage?(path: string): string[];
}

const MiB = 1 << 20;

export function runDeviceConformance(t: ConformanceTarget): void {
  describe(`BlockDevice conformance: ${t.label ?? t.format}`, () => {
    let dir: string;
    let cleanup: () => void;
    let path: string;
    const size = 8 * MiB;

    beforeEach(async () => {
      ({ dir, cleanup } = tempDir());
      path = join(dir, `image.${t.format}`);
      await t.create(path, size);
    });
    afterEach(() => cleanup());

    const open = (writable: boolean) =>
      t.open !== undefined ? t.open(path, writable) : openImage(path, { format: t.format, writable });
    const qemuImage = (p: string) => (t.qemuImage !== undefined ? t.qemuImage(p) : ['-f', t.format, p]);

    /** Check the image against the model through qemu-img (compare and, where it can, check). */
    function oracleCheck(model: Buffer): void {
      const ref = join(dir, 'model.raw');
      writeFileSync(ref, model);
      const cmp = qemuImg(['compare', '-F', 'raw', ...qemuImage(path), ref]);
      expect(cmp.stdout + cmp.stderr).toBe('Images are identical.\n');
      if (t.checkable) {
        const chk = qemuImg(['check', ...qemuImage(path)]);
        expect(chk.code, chk.stdout + chk.stderr).toBe(0);
      }
      t.alsoCheck?.(path, model);
    }

    async function readAll(img: Image): Promise<Buffer> {
      const buf = Buffer.alloc(img.size);
      await img.readAt(buf, 0);
      return buf;
    }

    /** What the new image reads before any write: zeros, or (zeroInit false) its content. */
    async function initialModel(): Promise<Buffer> {
      if (t.zeroInit !== false) return Buffer.alloc(size);
      const img = await open(false);
      const content = await readAll(img);
      await img.close();
      return content;
    }

    it('opens with its size and reads zeros when new', async () => {
      const img = await open(false);
      expect(img.size).toBe(size);
      expect(img.driver.zeroInit !== false).toBe(t.zeroInit !== false);
      const content = await readAll(img);
      await img.close();
      if (t.zeroInit !== false) expect(content.every((b) => b === 0)).toBe(true);
      else oracleCheck(content);
    });

    it('reads back what it wrote, at aligned and odd offsets, across boundaries', async () => {
      const model = await initialModel();
      const img = await open(true);
      const writes: Array<[number, number]> = [
        [0, 512],
        [4096, 65536],
        [65536 - 100, 300],
        [MiB + 7, 1],
        [2 * MiB - 1, 2],
        [3 * MiB, 2 * MiB + 512],
        [size - 4096, 4096],
        [size - 1, 1],
      ];
      for (const [off, len] of writes) {
        const data = randomBytes(len);
        data.copy(model, off);
        await img.writeAt(data, off);
        const back = Buffer.alloc(len);
        await img.readAt(back, off);
        expect(back.equals(data)).toBe(true);
      }
      await img.close();
      const again = await open(false);
      expect((await readAll(again)).equals(model)).toBe(true);
      await again.close();
      oracleCheck(model);
    });

    it('makes zeroed and discarded ranges read as zeros', async () => {
      const model = Buffer.alloc(size);
      const img = await open(true);
      const fill = randomBytes(size);
      await img.writeAt(fill, 0);
      fill.copy(model);
      await img.writeZeroes(MiB, MiB, { unmap: true });
      model.fill(0, MiB, 2 * MiB);
      await img.writeZeroes(3 * MiB + 512, 4096 * 3);
      model.fill(0, 3 * MiB + 512, 3 * MiB + 512 + 4096 * 3);
      await img.writeZeroes(5 * MiB + 3, 10);
      model.fill(0, 5 * MiB + 3, 5 * MiB + 13);
      await img.flush();
      expect((await readAll(img)).equals(model)).toBe(true);
      await img.close();
      oracleCheck(model);
    });

    it('discards advisorily: the rest is untouched, and what vdisk reads then qemu-img reads', async () => {
      const img = await open(true);
      const fill = randomBytes(size);
      await img.writeAt(fill, 0);
      const ranges: Array<[number, number]> = [
        [MiB, 2 * MiB],
        [4 * MiB + 100, MiB],
        [size - 4096, 4096],
      ];
      for (const [off, len] of ranges) await img.discard(off, len);
      await img.flush();
      const after = await readAll(img);
      await img.close();
      let pos = 0;
      for (const [off, len] of [...ranges, [size, 0] as [number, number]]) {
        expect(after.subarray(pos, off).equals(fill.subarray(pos, off))).toBe(true);
        // A discarded byte reads as before or as zero (luks: whatever its cipher makes of a hole).
        if (t.zeroInit !== false) {
          for (let i = off; i < off + len; i++)
            if (after[i] !== 0 && after[i] !== fill[i]) expect(i).toBe(-1);
        }
        pos = off + len;
      }
      oracleCheck(after);
    });

    it('describes the whole image with contiguous, non-empty extents that agree with the data', async () => {
      const img = await open(true);
      await img.writeAt(randomBytes(MiB), 2 * MiB);
      await img.writeZeroes(4 * MiB, MiB);
      let pos = 0;
      for await (const e of extentsOf(img)) {
        expect(e.offset).toBe(pos);
        expect(e.length).toBeGreaterThan(0);
        if (e.zero) {
          const buf = Buffer.alloc(e.length);
          await img.readAt(buf, e.offset);
          expect(buf.every((b) => b === 0)).toBe(true);
        }
        pos += e.length;
      }
      expect(pos).toBe(size);
      const st = await img.blockStatus(2 * MiB, MiB);
      expect(st.data).toBe(true);
      expect(st.zero).toBe(false);
      await img.close();
    });

    it('keeps writes in flight at once apart', async () => {
      const model = await initialModel();
      const img = await open(true);
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 32; i++) {
        const off = i * 256 * 1024 + (i % 3) * 512;
        const data = randomBytes(64 * 1024 + (i % 5) * 512);
        data.copy(model, off);
        jobs.push(img.writeAt(data, off));
      }
      await Promise.all(jobs);
      await img.close();
      oracleCheck(model);
    });

    it('refuses requests outside the image and writes to a read-only image', async () => {
      const ro = await open(false);
      await expect(ro.readAt(Buffer.alloc(2), size - 1)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
      await expect(ro.readAt(Buffer.alloc(1), -1)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
      await expect(ro.writeAt(Buffer.alloc(1), 0)).rejects.toMatchObject({ code: 'READ_ONLY' });
      await ro.close();
      const rw = await open(true);
      await expect(rw.writeAt(Buffer.alloc(512), size)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
      await rw.close();
    });
  });
}
