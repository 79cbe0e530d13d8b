import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import { probeBytes } from '../../core/formats.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import { registerBuiltinFormats } from '../index.js';
import { crc32c, setChecksum } from './crc32c.js';
import type { VhdxImage } from './image.js';
import { dv, PARAMS_HAS_PARENT } from './structs.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;

async function digest(path: string): Promise<string> {
  const img = await openImage(path, { format: 'vhdx' });
  try {
    const buf = Buffer.alloc(img.size);
    await img.readAt(buf, 0);
    return sha256(buf);
  } finally {
    await img.close();
  }
}

/** Offset of the active header (the higher sequence number). */
function activeHeader(b: Buffer): number {
  return b.readBigUInt64LE(64 * 1024 + 8) > b.readBigUInt64LE(128 * 1024 + 8) ? 64 * 1024 : 128 * 1024;
}

describe('CRC-32C', () => {
  it('matches the standard check value and chains', () => {
    const data = Buffer.from('123456789');
    expect(crc32c(data)).toBe(0xe3069283);
    expect(crc32c(data.subarray(4), crc32c(data.subarray(0, 4)))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa);
  });
});

describe('vhdx create and info against qemu-img', () => {
  const cases = [
    ['100M'],
    ['-o', 'subformat=fixed', '10M'],
    ['-o', 'block_size=1M,log_size=2M,block_state_zero=off', '10M'],
    ['-o', 'subformat=fixed,block_state_zero=off', '20M'],
    ['-o', 'log_size=100k', '3M'],
    ['-o', 'block_size=512M', '1M'],
    ['-o', 'block_size=0', '1100M'],
    ['0'],
    ['1000'],
  ];
  for (const args of cases) {
    it(args.join(' '), async () => {
      const size = args.at(-1)!;
      const opt = args.slice(0, -1);
      const qOut = qemuImgOk(['create', '-f', 'vhdx', ...opt, 'q.vhdx', size], dir);
      const vOut = await vdisk(['create', '-f', 'vhdx', ...opt, 'v.vhdx', size], dir);
      expect(vOut.stderr).toBe('');
      expect(vOut.stdout).toBe(qOut.replace("'q.vhdx'", "'v.vhdx'"));
      for (const name of ['q.vhdx', 'v.vhdx']) {
        const p = join(dir, name);
        const qi = qemuImgOk(['info', p]);
        expect((await vdisk(['info', p])).stdout).toBe(qi);
        const qj = qemuImgOk(['info', '--output=json', p]);
        expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qj);
      }
      // What vdisk made, qemu-img checks clean and reads as zeros.
      const chk = qemuImg(['check', '-f', 'vhdx', join(dir, 'v.vhdx')]);
      expect(chk.stdout + chk.stderr).toBe('No errors were found on the image.\n');
      if ((await vdisk(['info', join(dir, 'v.vhdx')])).stdout.includes('MiB (')) {
        expect(await digest(join(dir, 'v.vhdx'))).toBe(qemuRawDigest(join(dir, 'q.vhdx'), 'vhdx'));
      }
    });
  }

  it('rejects what qemu-img rejects, in its words', async () => {
    for (const args of [
      ['-o', 'subformat=x', 'x.vhdx', '1M'],
      ['-o', 'block_size=3M', 'x.vhdx', '1M'],
      ['x.vhdx', '65T'],
      ['-o', 'block_size=abc', 'x.vhdx', '1M'],
      ['-o', 'block_state_zero=maybe', 'x.vhdx', '1M'],
    ]) {
      const q = qemuImg(['create', '-q', '-f', 'vhdx', ...args], dir);
      const v = await vdisk(['create', '-q', '-f', 'vhdx', ...args], dir);
      expect(q.code).toBe(1);
      expect(v.code).toBe(1);
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('lists the create options as qemu-img', async () => {
    const q = qemuImgOk(['create', '-f', 'vhdx', '-o', 'help']);
    const v = await vdisk(['create', '-f', 'vhdx', '-o', 'help']);
    expect(v.stdout).toBe(q);
  });
});

describe('vhdx read: images qemu-img made and qemu-io wrote', () => {
  for (const opts of [
    'subformat=dynamic',
    'block_size=1M',
    'block_state_zero=off',
    'subformat=fixed',
    'subformat=fixed,block_state_zero=off',
    'block_size=1M,log_size=4M',
  ]) {
    it(opts, async () => {
      const p = join(dir, 'img.vhdx');
      qemuImgOk(['create', '-q', '-f', 'vhdx', '-o', opts, p, '20M']);
      qemuIo(
        p,
        [
          'write -P 0x11 0 64k',
          'write -P 0x22 1536k 1M',
          'write -P 0x33 9M 512',
          'write -z 1600k 8k',
          'discard 12M 1M',
          'write -P 0x44 19M 1M',
        ],
        'vhdx',
      );
      expect(await digest(p)).toBe(qemuRawDigest(p, 'vhdx'));
      const img = await openImage(p, { format: 'vhdx' });
      try {
        let pos = 0;
        for await (const e of extentsOf(img)) {
          expect(e.offset).toBe(pos);
          pos += e.length;
          if (!e.zero) continue;
          const buf = Buffer.alloc(e.length);
          await img.readAt(buf, e.offset);
          expect(buf.every((b) => b === 0)).toBe(true);
        }
        expect(pos).toBe(img.size);
        expect((await img.blockStatus(1536 * 1024, 4096)).data).toBe(true);
      } finally {
        await img.close();
      }
    });
  }

  it('probes as vhdx', () => {
    registerBuiltinFormats();
    const p = join(dir, 'p.vhdx');
    qemuImgOk(['create', '-q', '-f', 'vhdx', p, '1M']);
    expect(probeBytes(readFileSync(p).subarray(0, 2048), p)).toBe('vhdx');
  });
});

describe('vhdx write: what vdisk writes, qemu-img reads and checks', () => {
  it('writes into a qemu-made fixed image (zero blocks) and a dynamic one, both tools in turn', async () => {
    for (const opts of ['subformat=fixed', 'subformat=dynamic,block_size=1M']) {
      const p = join(dir, 'w.vhdx');
      qemuImgOk(['create', '-q', '-f', 'vhdx', '-o', opts, p, '24M']);
      qemuIo(p, ['write -P 0x11 0 1M'], 'vhdx');
      const img = await openImage(p, { format: 'vhdx', writable: true });
      const model = Buffer.alloc(img.size);
      model.fill(0x11, 0, MiB);
      for (const [off, len, v] of [
        [512, 4096, 1],
        [3 * MiB - 100, 5 * MiB, 2],
        [img.size - 1, 1, 3],
      ] as const) {
        const d = Buffer.alloc(len, v);
        await img.writeAt(d, off);
        d.copy(model, off);
      }
      await img.close();
      const raw = join(dir, 'm.raw');
      writeFileSync(raw, model);
      expect(qemuImg(['compare', '-f', 'vhdx', '-F', 'raw', p, raw]).stdout).toBe('Images are identical.\n');
      expect(qemuImg(['check', '-f', 'vhdx', p]).code).toBe(0);
      qemuIo(p, ['write -P 0x77 20M 2M'], 'vhdx');
      expect(await digest(p)).toBe(qemuRawDigest(p, 'vhdx'));
    }
  });

  it('leaves the log clean after writing (qemu-img opens it read-only)', async () => {
    const p = join(dir, 'c.vhdx');
    await vdisk(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', p, '8M']);
    const img = await openImage(p, { format: 'vhdx', writable: true });
    for (let i = 0; i < 8; i++) await img.writeAt(Buffer.alloc(4096, i + 1), i * MiB);
    await img.flush();
    // Flushed: another reader sees the data even before close.
    expect(qemuImg(['info', '-U', p]).code).toBe(0);
    await img.close();
    const b = readFileSync(p);
    const h = activeHeader(b);
    expect(b.subarray(h + 48, h + 64).every((x) => x === 0)).toBe(true);
    expect(qemuImg(['check', p]).stdout).toBe('No errors were found on the image.\n');
  });
});

describe('vhdx log: replay of a dirty log', () => {
  /** An image killed after its log entry was written (BAT not yet updated in place). */
  async function crashedImage(p: string): Promise<Buffer> {
    await vdisk(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', p, '16M']);
    const img = await openImage(p, { format: 'vhdx', writable: true });
    const model = Buffer.alloc(img.size);
    for (const [off, v] of [
      [0, 1],
      [5 * MiB + 512, 2],
      [15 * MiB, 3],
    ] as const) {
      const d = Buffer.alloc(64 * 1024, v);
      await img.writeAt(d, off);
      d.copy(model, off);
    }
    await (img.driver as VhdxImage).commit(true);
    // Drop the image without closing it cleanly (the file handle only).
    await (img.driver as unknown as { file: { close(): Promise<void> } }).file.close();
    return model;
  }

  it('is refused read-only with qemu-img words, and replayed by qemu-img check -r all', async () => {
    const p = join(dir, 'd.vhdx');
    const model = await crashedImage(p);
    const q = qemuImg(['info', p]);
    const v = await vdisk(['info', p]);
    expect(q.code).toBe(1);
    expect(v.code).toBe(1);
    expect(v.stderr.replace(/^vdisk:/, 'qemu-img:').replace('vdisk check', 'qemu-img check')).toBe(q.stderr);
    // qemu-img replays vdisk's log entry: proof that the entry is well-formed.
    const r = qemuImg(['check', '-r', 'all', p]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('1 corruptions');
    const raw = join(dir, 'm.raw');
    writeFileSync(raw, model);
    expect(qemuImg(['compare', '-f', 'vhdx', '-F', 'raw', p, raw]).stdout).toBe('Images are identical.\n');
  });

  it('is replayed by a writable open in vdisk', async () => {
    const p = join(dir, 'd.vhdx');
    const model = await crashedImage(p);
    const img = await openImage(p, { format: 'vhdx', writable: true });
    const res = await (img.driver as VhdxImage).check('none');
    expect(res.corruptionsFixed).toBe(1);
    const buf = Buffer.alloc(img.size);
    await img.readAt(buf, 0);
    expect(buf.equals(model)).toBe(true);
    await img.close();
    expect(qemuImg(['check', p]).stdout).toBe('No errors were found on the image.\n');
  });

  it("replays a log entry qemu-img wrote (re-armed by restoring the header's log GUID)", async () => {
    const p = join(dir, 'q.vhdx');
    qemuImgOk(['create', '-q', '-f', 'vhdx', p, '100M']);
    qemuIo(p, ['write -P 0x11 1M 4k'], 'vhdx');
    const b = readFileSync(p);
    const logGuid = b.subarray(MiB + 32, MiB + 48);
    // Undo the BAT update in place, then point the active header at the log again.
    const batAt = 2 * MiB;
    const applied = b.readBigUInt64LE(batAt);
    b.writeBigUInt64LE(2n, batAt);
    const h = activeHeader(b);
    logGuid.copy(b, h + 48);
    setChecksum(b.subarray(h, h + 4096), 4);
    writeFileSync(p, b);
    expect(qemuImg(['info', p]).code).toBe(1);
    const img = await openImage(p, { format: 'vhdx', writable: true });
    await img.close();
    const after = readFileSync(p);
    expect(after.readBigUInt64LE(batAt)).toBe(applied);
    expect(qemuImg(['info', p]).code).toBe(0);
    expect(await digest(p)).toBe(qemuRawDigest(p, 'vhdx'));
  });
});

describe('vhdx hostile input', () => {
  function base(): Buffer {
    const p = join(dir, 'base.vhdx');
    qemuImgOk(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', p, '8M']);
    qemuIo(p, ['write -P 0x11 0 3M'], 'vhdx');
    return readFileSync(p);
  }
  const header = (b: Buffer, fn: (h: Buffer) => void) => {
    for (const at of [64 * 1024, 128 * 1024]) {
      const h = b.subarray(at, at + 4096);
      fn(h);
      setChecksum(h, 4);
    }
    return b;
  };
  const metaItem = (b: Buffer, n: number): number => {
    // Metadata region at 3 MiB (1 MiB log, 1 MiB BAT); item n's offset in its table entry.
    return 3 * MiB + dv(b).getUint32(3 * MiB + 32 + 32 * n + 16, true);
  };
  const cases: Array<[string, (b: Buffer) => Buffer, string | null]> = [
    ['bad signature', (b) => b.fill(0x41, 0, 8), null],
    [
      'both headers corrupt',
      (b) => {
        b.writeUInt8(b.readUInt8(64 * 1024 + 100) ^ 1, 64 * 1024 + 100);
        b.writeUInt8(b.readUInt8(128 * 1024 + 100) ^ 1, 128 * 1024 + 100);
        return b;
      },
      'No valid VHDX header found',
    ],
    [
      'region table checksum',
      (b) => {
        b.writeUInt8(b.readUInt8(192 * 1024 + 40) ^ 1, 192 * 1024 + 40);
        return b;
      },
      null,
    ],
    ['truncated', (b) => b.subarray(0, 4 * MiB + 512 * 1024), 'points after end of file'],
    ['empty file', () => Buffer.alloc(0), null],
    ['log offset inside the header section', (b) => header(b, (h) => h.writeBigUInt64LE(4096n, 72)), null],
    [
      'absurd virtual size',
      (b) => {
        b.writeBigUInt64LE(1n << 62n, metaItem(b, 1));
        return b;
      },
      null,
    ],
    [
      'block size not a power of two',
      (b) => {
        b.writeUInt32LE(3 * MiB, metaItem(b, 0));
        return b;
      },
      null,
    ],
    [
      'differencing image with a parent locator',
      (b) => {
        const at = metaItem(b, 0);
        b.writeUInt32LE(b.readUInt32LE(at + 4) | PARAMS_HAS_PARENT, at + 4);
        // Turn the page 83 entry into a parent locator entry.
        Buffer.from('2d5fd3a80bb34d45abf7d3d84834ab0c', 'hex').copy(b, 3 * MiB + 32 + 32 * 2);
        return b;
      },
      null,
    ],
    [
      'BAT entry pointing into the metadata',
      (b) => {
        b.writeBigUInt64LE(BigInt(3 * MiB) | 6n, 2 * MiB);
        return b;
      },
      null,
    ],
    [
      'two BAT entries sharing a block',
      (b) => {
        b.writeBigUInt64LE(b.readBigUInt64LE(2 * MiB), 2 * MiB + 8);
        return b;
      },
      null,
    ],
    [
      'metadata table with too many entries',
      (b) => {
        b.writeUInt16LE(0xffff, 3 * MiB + 10);
        return b;
      },
      null,
    ],
  ];
  for (const [label, mutate, qemuMessage] of cases) {
    it(label, async () => {
      const p = join(dir, 'bad.vhdx');
      writeFileSync(p, mutate(base()));
      const t0 = Date.now();
      const v = await vdisk(['info', '-f', 'vhdx', p]);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(v.code).toBe(1);
      expect(v.stderr.split('\n').length).toBe(2);
      expect(v.stderr).toMatch(/^vdisk: Could not open '.*bad\.vhdx': /);
      const q = qemuImg(['info', '-f', 'vhdx', p]);
      if (qemuMessage !== null) {
        expect(q.stderr).toContain(qemuMessage);
        expect(v.stderr).toContain(qemuMessage);
      }
    });
  }

  it('refuses a log entry that would write over the headers', async () => {
    const p = join(dir, 'evil.vhdx');
    qemuImgOk(['create', '-q', '-f', 'vhdx', p, '8M']);
    qemuIo(p, ['write -P 0x11 0 4k'], 'vhdx');
    const b = readFileSync(p);
    // Re-aim the logged sector at header 1 and re-checksum the entry, then re-arm the log.
    const entry = b.subarray(MiB, MiB + 8192);
    entry.writeBigUInt64LE(64n * 1024n, 64 + 16);
    setChecksum(entry, 4);
    const h = activeHeader(b);
    b.subarray(MiB + 32, MiB + 48).copy(b, h + 48);
    setChecksum(b.subarray(h, h + 4096), 4);
    writeFileSync(p, b);
    await expect(openImage(p, { format: 'vhdx', writable: true })).rejects.toMatchObject({
      code: 'CORRUPT_IMAGE',
    });
  });
});
