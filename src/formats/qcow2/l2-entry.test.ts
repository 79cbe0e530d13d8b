/**
 * The L1/L2 entry codec against tables qemu-img wrote: standard entries name the host
 * offsets `qemu-img map` reports, and compressed descriptors decode to data inside the file
 * and encode back to the very bits qemu-img wrote.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import {
  COPIED_HI,
  decodeCompressed,
  decodeCompressedBig,
  decodeL1,
  encodeCompressed,
  entryOffset,
  isCompressed,
  isCopied,
  isZero,
  putEntry,
  withCopied,
} from './l2-entry.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-l2entry-'));
});
afterAll(() => cleanup());

/** The first L2 table of a qcow2 file (64 KiB clusters) as [hi, lo] pairs. */
function firstL2(file: string): { raw: Buffer; entries: Array<[number, number]> } {
  const raw = readFileSync(file);
  const l1Size = raw.readUInt32BE(36);
  const l1Offset = Number(raw.readBigUInt64BE(40));
  const l1 = decodeL1(raw.subarray(l1Offset, l1Offset + l1Size * 8), l1Size);
  expect(l1.copied[0]).toBe(1);
  const l2 = l1.off[0]!;
  const entries: Array<[number, number]> = [];
  for (let i = 0; i < 65536 / 8; i++)
    entries.push([raw.readUInt32BE(l2 + i * 8), raw.readUInt32BE(l2 + i * 8 + 4)]);
  return { raw, entries };
}

describe('qcow2 L2 entry codec against qemu-img', () => {
  it('standard entries name the host offsets qemu-img map reports, with COPIED and ZERO as written', () => {
    const f = join(dir, 'std.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', f, '16M']);
    qemuIo(f, ['write -P 0x11 0 64k', 'write -P 0x22 1M 128k', 'write -z 4M 64k'], 'qcow2');
    const { entries } = firstL2(f);
    const map = JSON.parse(qemuImgOk(['map', '--output=json', '-f', 'qcow2', f])) as Array<{
      start: number;
      length: number;
      data: boolean;
      offset?: number;
    }>;
    let checked = 0;
    for (const m of map) {
      if (!m.data || m.offset === undefined) continue;
      for (let g = m.start; g < m.start + m.length; g += 65536) {
        const [hi, lo] = entries[g / 65536]!;
        expect(isCompressed(hi)).toBe(false);
        expect(isCopied(hi)).toBe(true);
        expect(entryOffset(hi, lo)).toBe(m.offset + (g - m.start));
        checked++;
      }
    }
    expect(checked).toBe(3);
    const [zhi, zlo] = entries[(4 << 20) / 65536]!;
    expect(isZero(zlo)).toBe(true);
    expect(entryOffset(zhi, zlo)).toBe(0);
    // Re-encoding a standard entry gives back the bytes qemu-img wrote.
    const [hi, lo] = entries[16]!;
    const v = new DataView(new ArrayBuffer(8));
    putEntry(v, 0, entryOffset(hi, lo), COPIED_HI);
    expect([v.getUint32(0), v.getUint32(4)]).toEqual([hi, lo]);
    expect(withCopied(withCopied(hi, false), true)).toBe(hi);
  });

  it('compressed descriptors decode inside the file and encode back to the same bits', () => {
    const src = join(dir, 'src.raw');
    const buf = Buffer.alloc(4 << 20);
    for (let i = 0; i < buf.length; i += 4096) buf.write(`cluster ${i} `.repeat(50), i);
    writeFileSync(src, buf);
    const f = join(dir, 'c.qcow2');
    qemuImgOk(['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', src, f]);
    const { raw, entries } = firstL2(f);
    let seen = 0;
    let prevEnd = 512;
    for (const [hi, lo] of entries.slice(0, (4 << 20) / 65536)) {
      expect(isCompressed(hi)).toBe(true);
      expect(isCopied(hi)).toBe(false);
      const { offset, size } = decodeCompressed(hi, lo, 16);
      const big = decodeCompressedBig(hi, lo, 16);
      expect(big.offset).toBe(BigInt(offset));
      expect(big.sectors * 512 - (offset % 512)).toBe(size);
      // The range holds the whole deflate stream of the guest cluster...
      const guest = seen * 65536;
      const data = inflateRawSync(raw.subarray(offset, offset + size));
      expect(data.equals(buf.subarray(guest, guest + 65536))).toBe(true);
      // ...and ends in the sector where qemu-img, which packs them, put the next one.
      expect(offset).toBeGreaterThan(prevEnd - 512);
      expect(offset + size).toBeLessThanOrEqual(raw.length);
      prevEnd = offset + size;
      expect(encodeCompressed(offset, size, 16)).toEqual([hi, lo]);
      seen++;
    }
    expect(seen).toBe(64);
  });
});
