import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { extentsOf } from '../../core/device.js';
import { probeBytes } from '../../core/formats.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import { registerBuiltinFormats } from '../index.js';
import { createVpc } from './create.js';
import { calculateGeometry, roundedImageSize, vpcChecksum } from './footer.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;
const GiB = 1 << 30;

/** Where the footer sits: at 0 for dynamic images, at the end for fixed ones. */
function footerAt(path: string): number {
  const head = readFileSync(path).subarray(0, 8).toString('latin1');
  return head === 'conectix' ? 0 : statSync(path).size - 512;
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = execFileSync('dd', [
    `if=${path}`,
    'bs=512',
    `skip=${offset / 512}`,
    `count=${length / 512}`,
    'status=none',
  ]);
  return fd;
}

async function readWhole(path: string, format = 'vpc'): Promise<string> {
  const img = await openImage(path, { format });
  try {
    const buf = Buffer.alloc(img.size);
    await img.readAt(buf, 0);
    return sha256(buf);
  } finally {
    await img.close();
  }
}

describe('vpc geometry (QEMU calculate_geometry / calculate_rounded_image_size)', () => {
  it('rounds sizes up to the CHS geometry as qemu-img does', () => {
    for (const [size, want] of [
      [1, 34816],
      [MiB, 1079296],
      [100 * MiB, 104865792],
      [127 * GiB, 136365219840],
      [128 * GiB, 137438953472],
      [2040 * GiB, 2190433320960],
    ] as const) {
      expect(roundedImageSize(Math.ceil(size / 512) * 512, false)?.totalSectors).toBe(want / 512);
    }
    expect(roundedImageSize(2041 * GiB, false)).toBeNull();
    expect(roundedImageSize(2041 * GiB, true)).toBeNull();
    expect(calculateGeometry(20480)).toEqual({ cyls: 301, heads: 4, secsPerCyl: 17 });
  });
});

describe('vpc create, byte for byte as qemu-img', () => {
  // Sizes an Azure upload uses (MiB-aligned, fixed, force_size) and CHS-rounded ones.
  const cases: Array<[string, number]> = [
    ['subformat=fixed,force_size=on', 1 * MiB],
    ['subformat=fixed,force_size=on', 16 * MiB],
    ['subformat=fixed,force_size=on', 100 * MiB],
    ['subformat=fixed,force_size=on', 1 * GiB],
    ['subformat=fixed', 1 * MiB],
    ['subformat=fixed', 100 * MiB],
    ['subformat=fixed', 1000],
    ['subformat=dynamic', 10 * MiB],
    ['subformat=dynamic,force_size=on', 10 * MiB],
    ['force_size=on', 1 * GiB],
    ['force_size=on', 2040 * GiB],
    ['', 127 * GiB],
    ['', 200 * GiB],
    ['', 0],
    ['', 1],
  ];
  for (const [opts, size] of cases) {
    it(`-o '${opts}' ${size}`, async () => {
      const q = join(dir, 'q.vhd');
      const v = join(dir, 'v.vhd');
      qemuImgOk(['create', '-q', '-f', 'vpc', ...(opts ? ['-o', opts] : []), q, String(size)]);
      // Take qemu's timestamp and UUID (the only fields that vary); everything else is ours.
      const qFooter = readAt(q, footerAt(q), 512);
      const options = Object.fromEntries(
        opts
          .split(',')
          .filter((x) => x)
          .map((kv) => kv.split('=') as [string, string]),
      );
      await createVpc(
        { path: v, size, options },
        { timestamp: qFooter.readUInt32BE(24), uuid: qFooter.subarray(68, 84) },
      );
      expect(statSync(v).size).toBe(statSync(q).size);
      // cmp reads sparse files fast; it exits 0 only when every byte is equal.
      const cmp = execFileSync('sh', ['-c', `cmp '${q}' '${v}' && echo same`], { encoding: 'utf8' });
      expect(cmp.trim()).toBe('same');
      // And the footer checksum is right on its own terms.
      expect(vpcChecksum(readAt(v, footerAt(v), 512), 64)).toBe(qFooter.readUInt32BE(64));
    });
  }

  it('prints the Formatting line, info text and JSON as qemu-img, for images made by both', async () => {
    for (const args of [
      ['10M'],
      ['-o', 'subformat=fixed', '10M'],
      ['-o', 'subformat=fixed,force_size=on', '64M'],
      ['-o', 'force_size=off', '3G'],
      ['-o', 'subformat=dynamic', '1000'],
    ]) {
      const sizeArg = args.at(-1)!;
      const opt = args.slice(0, -1);
      const qOut = qemuImgOk(['create', '-f', 'vpc', ...opt, 'q.vhd', sizeArg], dir);
      const vOut = await vdisk(['create', '-f', 'vpc', ...opt, 'v.vhd', sizeArg], dir);
      expect(vOut.code).toBe(0);
      expect(vOut.stdout).toBe(qOut.replace("'q.vhd'", "'v.vhd'"));
      for (const name of ['q.vhd', 'v.vhd']) {
        const p = join(dir, name);
        for (const fmt of [['-f', 'vpc'], []]) {
          const qi = qemuImg(['info', ...fmt, p]);
          const vi = await vdisk(['info', ...fmt, p]);
          expect(vi.stdout).toBe(qi.stdout);
          const qj = qemuImg(['info', '--output=json', ...fmt, p]);
          const vj = await vdisk(['info', '--output=json', ...fmt, p]);
          expect(vj.stdout).toBe(qj.stdout);
        }
      }
    }
  });

  it('rejects what qemu-img rejects', async () => {
    for (const args of [
      ['-o', 'subformat=foo', 'x.vhd', '1M'],
      ['-o', 'force_size=maybe', 'x.vhd', '1M'],
      ['x.vhd', '3000G'],
      ['-o', 'force_size=on', 'x.vhd', '2041G'],
    ]) {
      const q = qemuImg(['create', '-q', '-f', 'vpc', ...args], dir);
      const v = await vdisk(['create', '-q', '-f', 'vpc', ...args], dir);
      expect(q.code).toBe(1);
      expect(v.code).toBe(1);
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });
});

describe('vpc read: images qemu-img made and qemu-io wrote', () => {
  const layouts: Array<[string, string]> = [
    ['dynamic', 'subformat=dynamic'],
    ['dynamic force_size', 'force_size=on'],
    ['fixed', 'subformat=fixed'],
    ['fixed force_size', 'subformat=fixed,force_size=on'],
  ];
  for (const [label, opts] of layouts) {
    it(label, async () => {
      const p = join(dir, 'img.vhd');
      qemuImgOk(['create', '-q', '-f', 'vpc', '-o', opts, p, '20M']);
      qemuIo(
        p,
        [
          'write -P 0x11 0 64k',
          'write -P 0x22 1536k 1M',
          'write -P 0x33 5M 512',
          'write -z 1600k 8k',
          'write -P 0x44 19M 512k',
        ],
        'vpc',
      );
      expect(await readWhole(p)).toBe(qemuRawDigest(p, 'vpc'));
      // Block status: every range reported zero reads as zeros, and data lies where written.
      const img = await openImage(p, { format: 'vpc' });
      try {
        for await (const e of extentsOf(img)) {
          if (!e.zero) continue;
          const buf = Buffer.alloc(e.length);
          await img.readAt(buf, e.offset);
          expect(buf.every((b) => b === 0)).toBe(true);
        }
        expect((await img.blockStatus(1536 * 1024, 4096)).data).toBe(true);
      } finally {
        await img.close();
      }
    });
  }

  it('probes a dynamic VHD as vpc and a fixed one as raw, as qemu-img does', () => {
    registerBuiltinFormats();
    const d = join(dir, 'd.vhd');
    const f = join(dir, 'f.vhd');
    qemuImgOk(['create', '-q', '-f', 'vpc', d, '1M']);
    qemuImgOk(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', f, '1M']);
    expect(probeBytes(readFileSync(d).subarray(0, 2048), d)).toBe('vpc');
    expect(probeBytes(readFileSync(f).subarray(0, 2048), f)).toBe('raw');
  });

  it('reads images of other creators by current_size (Hyper-V "win ") as qemu-img', async () => {
    const p = join(dir, 'win.vhd');
    qemuImgOk(['create', '-q', '-f', 'vpc', p, '10M']);
    const b = readFileSync(p);
    for (const at of [0, b.length - 512]) {
      b.write('win ', at + 28, 'latin1');
      b.writeBigUInt64BE(BigInt(10 * MiB), at + 48);
      b.writeUInt32BE(0, at + 64);
      b.writeUInt32BE(vpcChecksum(b.subarray(at, at + 512), 64), at + 64);
    }
    writeFileSync(p, b);
    const q = JSON.parse(qemuImgOk(['info', '--output=json', '-f', 'vpc', p])) as Record<string, unknown>;
    const img = await openImage(p, { format: 'vpc' });
    expect(img.size).toBe(q['virtual-size']);
    expect(img.size).toBe(10 * MiB);
    await img.close();
  });
});

describe('vpc write: what vdisk writes, qemu-img reads', () => {
  it('dynamic image written by vdisk compares equal to its raw model under qemu-img', async () => {
    const p = join(dir, 'w.vhd');
    const r = await vdisk(['create', '-q', '-f', 'vpc', p, '30M']);
    expect(r.code).toBe(0);
    const img = await openImage(p, { format: 'vpc', writable: true });
    const model = Buffer.alloc(img.size);
    const rnd = (n: number, seed: number) => Buffer.alloc(n, seed);
    for (const [off, len, seed] of [
      [0, 4096, 1],
      [2 * MiB - 512, 1024, 2],
      [7 * MiB + 3, 5 * MiB, 3],
      [img.size - 512, 512, 4],
    ] as const) {
      const d = rnd(len, seed);
      await img.writeAt(d, off);
      d.copy(model, off);
    }
    await img.close();
    const raw = join(dir, 'model.raw');
    writeFileSync(raw, model);
    expect(qemuImg(['compare', '-f', 'vpc', '-F', 'raw', p, raw]).stdout).toBe('Images are identical.\n');
    // qemu can keep writing the image after vdisk, and vdisk reads qemu's writes.
    qemuIo(p, ['write -P 0x77 20M 3M'], 'vpc');
    expect(await readWhole(p)).toBe(qemuRawDigest(p, 'vpc'));
  });

  it('reuses space left by an interrupted allocation and zero-fills it', async () => {
    const p = join(dir, 'crash.vhd');
    qemuImgOk(['create', '-q', '-f', 'vpc', '-o', 'force_size=on', p, '8M']);
    // Simulate a crash after data but before the BAT entry: garbage after the BAT.
    const b = readFileSync(p);
    const garbage = Buffer.alloc(2 * MiB + 1024, 0xee);
    writeFileSync(p, Buffer.concat([b.subarray(0, b.length - 512), garbage]));
    const img = await openImage(p, { format: 'vpc', writable: true });
    await img.writeAt(Buffer.alloc(512, 0x5a), 4096);
    const back = Buffer.alloc(2 * MiB);
    await img.readAt(back, 0);
    await img.close();
    const want = Buffer.alloc(2 * MiB);
    want.fill(0x5a, 4096, 4608);
    expect(back.equals(want)).toBe(true);
    expect(qemuRawDigest(p, 'vpc')).toBe(await readWhole(p));
  });
});

describe('vpc hostile input', () => {
  function base(): Buffer {
    const p = join(dir, 'base.vhd');
    qemuImgOk(['create', '-q', '-f', 'vpc', p, '10M']);
    qemuIo(p, ['write -P 0x11 0 3M'], 'vpc');
    return readFileSync(p);
  }
  function refoot(b: Buffer): Buffer {
    b.writeUInt32BE(0, 64);
    b.writeUInt32BE(vpcChecksum(b.subarray(0, 512), 64), 64);
    return b;
  }
  const cases: Array<[string, (b: Buffer) => Buffer, string | null]> = [
    [
      'bad footer checksum',
      (b) => {
        b[100] = 1;
        return b;
      },
      'Incorrect header checksum',
    ],
    [
      'truncated',
      (b) => b.subarray(0, b.length - MiB),
      'block-vpc: free_data_block_offset points after the end of file. The image has been truncated.',
    ],
    [
      'absurd max_table_entries',
      (b) => {
        b.writeUInt32BE(0x7fffffff, 512 + 28);
        return b;
      },
      'Max Table Entries too large (2147483647)',
    ],
    [
      'block size not a power of two',
      (b) => {
        b.writeUInt32BE(12345, 512 + 32);
        return b;
      },
      'Invalid block size 12345',
    ],
    [
      'header offset past end of file',
      (b) => {
        b.writeBigUInt64BE(1n << 40n, 16);
        return refoot(b);
      },
      'Invalid header magic',
    ],
    [
      'absurd size',
      (b) => {
        b.writeBigUInt64BE(1n << 50n, 48);
        b.write('win ', 28, 'latin1');
        return refoot(b);
      },
      'File too large',
    ],
    ['a footer and nothing else', () => Buffer.from('conectix'), 'Incorrect header checksum'],
    ['not a VHD', () => Buffer.alloc(100, 0x78), 'invalid VPC image'],
    // qemu-img opens these; vdisk refuses (a write would overwrite the metadata).
    [
      'BAT entry pointing into the metadata',
      (b) => {
        b.writeUInt32BE(0, 1536);
        return b;
      },
      null,
    ],
    [
      'two BAT entries sharing a block',
      (b) => {
        b.writeUInt32BE(b.readUInt32BE(1536), 1540);
        return b;
      },
      null,
    ],
    [
      'page table smaller than the disk',
      (b) => {
        b.writeUInt32BE(1, 512 + 28);
        return b;
      },
      'Page table too small',
    ],
  ];
  for (const [label, mutate, qemuMessage] of cases) {
    it(label, async () => {
      const p = join(dir, 'bad.vhd');
      writeFileSync(p, mutate(base()));
      const q = qemuImg(['info', '-f', 'vpc', p]);
      const t0 = Date.now();
      const v = await vdisk(['info', '-f', 'vpc', p]);
      expect(Date.now() - t0).toBeLessThan(1000);
      expect(v.code).toBe(1);
      expect(v.stderr.split('\n').length).toBe(2);
      expect(v.stderr).toMatch(/^vdisk: Could not open '.*bad\.vhd': /);
      if (qemuMessage !== null) {
        expect(q.stderr).toContain(qemuMessage);
        expect(v.stderr).toContain(qemuMessage);
      } else {
        expect(q.code).toBe(0);
      }
    });
  }
});

describe('vpc map and compare against qemu-img', () => {
  it('maps dynamic and fixed images as qemu-img map does', async () => {
    for (const opts of ['subformat=dynamic', 'subformat=fixed']) {
      const p = join(dir, 'm.vhd');
      qemuImgOk(['create', '-q', '-f', 'vpc', '-o', opts, p, '20M']);
      qemuIo(p, ['write -P 0x11 0 64k', 'write -P 0x22 5M 3M', 'write -z 12M 1M'], 'vpc');
      for (const out of ['--output=json', '--output=human']) {
        const q = qemuImgOk(['map', '-f', 'vpc', out, p]);
        const v = await vdisk(['map', '-f', 'vpc', out, p]);
        expect(v.stdout).toBe(q);
      }
      const other = join(dir, 'o.vhd');
      qemuImgOk(['convert', '-f', 'vpc', '-O', 'vpc', p, other]);
      const q = qemuImg(['compare', '-f', 'vpc', '-F', 'vpc', p, other]);
      const v = await vdisk(['compare', '-f', 'vpc', '-F', 'vpc', p, other]);
      expect(v.stdout).toBe(q.stdout);
      expect(v.code).toBe(q.code);
    }
  });
});
