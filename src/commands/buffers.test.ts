/**
 * The native zero scan (native/vdisk_scan.c allocatedSectorsMin, and preadScan, which reads and
 * scans on the thread pool) gives what the JavaScript one gives, run by run, on buffers of data
 * and zero runs of every length around the alignment and `min` boundaries; convert's
 * byte-for-byte agreement with qemu-img rests on the JavaScript one (convert and map tests
 * against qemu-img).
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HostFile } from '../core/host-file.js';
import { native } from '../native/index.js';
import { rng } from '../test/rng.js';
import { allocatedSectorsMin, allocatedSectorsMinJs, SECTOR } from './buffers.js';

/** Data and zero runs of random lengths (data sectors sometimes zero but for one inner byte). */
function runsBuffer(r: () => number, sectors: number): Buffer {
  const buf = Buffer.alloc(sectors * SECTOR);
  for (let s = 0; s < sectors; ) {
    const len = 1 + Math.floor(r() * (r() < 0.5 ? 4 : 40));
    if (r() < 0.5) {
      for (let i = s; i < Math.min(sectors, s + len); i++) {
        const at = r() < 0.3 ? Math.floor(r() * SECTOR) : 0;
        buf[i * SECTOR + at] = 1 + Math.floor(r() * 255);
      }
    }
    s += len;
  }
  return buf;
}

/** The JavaScript scan's runs over a whole buffer, as convert cuts a request: signed sector counts. */
function jsRuns(buf: Buffer, min: number, base: number, alignment: number): number[] {
  const out: number[] = [];
  const sectors = buf.length / SECTOR;
  for (let pos = 0; pos < sectors; ) {
    const [data, n] = allocatedSectorsMinJs(
      buf.subarray(pos * SECTOR),
      sectors - pos,
      min,
      base + pos,
      alignment,
    );
    out.push(data ? n : -n);
    pos += n;
  }
  return out;
}

describe('allocatedSectorsMin', () => {
  it('native and JavaScript agree on every run', () => {
    expect(native?.allocatedSectorsMin, 'the native addon is built').toBeTypeOf('function');
    const r = rng(0x5eed);
    let runs = 0;
    for (let round = 0; round < 600; round++) {
      const sectors = 1 + Math.floor(r() * 600);
      const buf = runsBuffer(r, sectors);
      const min = [1, 8, 16, 128][Math.floor(r() * 4)]!;
      const alignment = [1, 8, 128][Math.floor(r() * 3)]!;
      const base = Math.floor(r() * 1000);
      for (let pos = 0; pos < sectors; ) {
        const sub = buf.subarray(pos * SECTOR);
        const n = sectors - pos;
        const want = allocatedSectorsMinJs(sub, n, min, base + pos, alignment);
        expect(allocatedSectorsMin(sub, n, min, base + pos, alignment), `round ${round} at ${pos}`).toEqual(
          want,
        );
        expect(want[1]).toBeGreaterThan(0);
        pos += want[1];
        runs++;
      }
    }
    expect(runs).toBeGreaterThan(2500);
  });

  it('refuses a count past the buffer', () => {
    expect(() => native!.allocatedSectorsMin!(Buffer.alloc(1024), 3, 8, 0, 8)).toThrow();
  });
});

describe('preadScan (HostFile.readScan): a read and the zero scan on the thread pool', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vdisk-scan-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads what the file holds and cuts it as the JavaScript scan does', async () => {
    expect(native?.preadScan, 'the native addon is built').toBeTypeOf('function');
    const r = rng(0x5ca9);
    const content = runsBuffer(r, 8192);
    const path = join(dir, 'runs.raw');
    writeFileSync(path, content);
    const file = await HostFile.open(path);
    try {
      for (let round = 0; round < 200; round++) {
        const sectors = 1 + Math.floor(r() * 2048);
        const at = Math.floor(r() * (8192 - sectors + 1));
        const min = [1, 8, 16, 128][Math.floor(r() * 4)]!;
        const alignment = [1, 8, 128][Math.floor(r() * 3)]!;
        const base = Math.floor(r() * 100000);
        const buf = Buffer.alloc(sectors * SECTOR, 0xee);
        const runs = new Int32Array(sectors);
        // HostFile leaves reads of up to 128 KiB to its page-cache path: the addon's call then.
        const viaFile = await file.readScan(buf, at * SECTOR, { min, sectorNum: base, alignment }, runs);
        expect(viaFile === null, `round ${round}: ${sectors} sectors`).toBe(sectors <= 256);
        const n =
          viaFile ?? (await native!.preadScan!(file.fd, buf, at * SECTOR, min, base, alignment, runs));
        const want = content.subarray(at * SECTOR, (at + sectors) * SECTOR);
        expect(buf.equals(want), `round ${round}: the bytes`).toBe(true);
        expect(Array.from(runs.subarray(0, n)), `round ${round}: the runs`).toEqual(
          jsRuns(want, min, base, alignment),
        );
      }
    } finally {
      await file.close();
    }
  });

  it('reads zeros past the end of the file, as HostFile.read', async () => {
    const path = join(dir, 'short.raw');
    writeFileSync(path, Buffer.alloc(1536, 7));
    const file = await HostFile.open(path);
    try {
      const buf = Buffer.alloc(264 * SECTOR, 0xee);
      const runs = new Int32Array(264);
      expect(await file.readScan(buf, 1024, { min: 1, sectorNum: 2, alignment: 1 }, runs)).toBe(2);
      expect(buf.subarray(0, 512).every((b) => b === 7)).toBe(true);
      expect(buf.subarray(512).every((b) => b === 0)).toBe(true);
      expect(Array.from(runs.subarray(0, 2))).toEqual([1, -263]);
    } finally {
      await file.close();
    }
  });

  it('leaves small reads and what is not whole sectors to the caller, and refuses bad arguments', async () => {
    const path = join(dir, 'odd.raw');
    writeFileSync(path, Buffer.alloc(4096, 1));
    const file = await HostFile.open(path);
    try {
      const scan = { min: 8, sectorNum: 0, alignment: 8 };
      expect(await file.readScan(Buffer.alloc(4096), 0, scan, new Int32Array(8))).toBeNull();
      expect(await file.readScan(Buffer.alloc(264 * SECTOR + 100), 0, scan, new Int32Array(265))).toBeNull();
      // Too few entries for the runs: a TypeError, not a write past the array.
      expect(() => native!.preadScan!(file.fd, Buffer.alloc(4096), 0, 8, 0, 8, new Int32Array(7))).toThrow(
        TypeError,
      );
      expect(() => native!.preadScan!(file.fd, Buffer.alloc(4096), 0, 8, 0, 3, new Int32Array(8))).toThrow(
        TypeError,
      );
    } finally {
      await file.close();
    }
  });

  it('resolves to -errno when the read fails', async () => {
    // pread of a directory: EISDIR, from the pool, no crash.
    const fd = openSync(dir, 'r');
    try {
      await expect(native!.preadScan!(fd, Buffer.alloc(512), 0, 1, 0, 1, new Int32Array(1))).resolves.toBe(
        -osConstants.errno.EISDIR,
      );
    } finally {
      closeSync(fd);
    }
  });
});
