/**
 * `vdisk check` on qcow2 images damaged where qemu-img 7.2 still opens them for checking
 * (QEMU's BDRV_O_CHECK): truncated files, table offsets in the header corrupted, L1, L2 and
 * refcount-table entries pointing past the end of the file or unaligned. Each image is made
 * from a qemu-img-created one; for each, `check`, `check --output=json`, `check -r leaks` and
 * `check -r all` run on copies with both tools (same stdout, stderr and exit status), and the
 * images each tool repaired are checked again with qemu-img (same report). The snapshot table
 * is among them: check reads it as QEMU's qcow2_check_read_snapshot_table does.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
/** 64 MiB, 64 KiB clusters: header 0, reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data from 0x50000. */
let base: Buffer;
/** The same with a snapshot (snapshot table at 0x50000). */
let withSnapshot: Buffer;
/** 16 MiB with two snapshots, data written before each: the table is the file's last bytes. */
let twoSnapshots: Buffer;
/** 16 MiB, refcount_bits=1, 64 KiB written at 0. */
let oneBit: Buffer;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-damaged-'));
  const p = join(dir, 'base.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', p, '64M']);
  qemuIo(p, ['write -P 1 0 1M', 'write -P 2 32M 64k']);
  base = readFileSync(p);
  const s = join(dir, 'snap.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', s, '1M']);
  qemuImgOk(['snapshot', '-c', 's1', s]);
  withSnapshot = readFileSync(s);
  const t = join(dir, 'two.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', t, '16M']);
  qemuIo(t, ['write -P 1 0 1M']);
  qemuImgOk(['snapshot', '-c', 's1', t]);
  qemuIo(t, ['write -P 2 0 64k']);
  qemuImgOk(['snapshot', '-c', 's2', t]);
  twoSnapshots = readFileSync(t);
  const o = join(dir, 'onebit.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', o, '16M']);
  qemuIo(o, ['write -P 3 0 64k']);
  oneBit = readFileSync(o);
});
afterAll(() => cleanup());

function setU64(b: Buffer, off: number, v: bigint): Buffer {
  const c = Buffer.from(b);
  c.writeBigUInt64BE(v, off);
  return c;
}

interface Case {
  name: string;
  make: () => Buffer;
  /** Why the images the two tools leave after -r all are not compared. */
  leftDiffers?: string;
  /** Only these modes (the others are not yet as qemu-img's). */
  modes?: string[][];
}

function setU32(b: Buffer, off: number, v: number): Buffer {
  const c = Buffer.from(b);
  c.writeUInt32BE(v, off);
  return c;
}

function setU16(b: Buffer, off: number, v: number): Buffer {
  const c = Buffer.from(b);
  c.writeUInt16BE(v, off);
  return c;
}

/** Change the first entry of the two-snapshot image's table (`at` is its offset). */
const firstEntry = (edit: (b: Buffer, at: number) => Buffer) => (): Buffer =>
  edit(twoSnapshots, Number(twoSnapshots.readBigUInt64BE(64)));

const L1 = 0x30000;
const REFTABLE = 0x10000;
const L2 = 0x40000;

const cases: Case[] = [
  // Truncated: inside the L1 table (its entry then names offset 0: the header is read as an
  // L2 table), inside the refcount table, the refcount block, the L2 table, the data.
  { name: 'truncated inside the L1 table', make: () => base.subarray(0, L1 + 4) },
  { name: 'truncated inside the refcount table', make: () => base.subarray(0, REFTABLE + 4) },
  { name: 'truncated inside the refcount block', make: () => base.subarray(0, 0x20000 + 100) },
  { name: 'truncated inside the L2 table', make: () => base.subarray(0, L2 + 100) },
  { name: 'truncated at a data cluster', make: () => base.subarray(0, 0x60000) },
  { name: 'truncated inside the last data cluster', make: () => base.subarray(0, 0x150000 + 10) },
  // Header table offsets.
  { name: 'l1_table_offset past EOF', make: () => setU64(base, 40, 0x1000000n) },
  { name: 'l1_table_offset unaligned', make: () => setU64(base, 40, 0x30200n) },
  { name: 'l1_table_offset on the header', make: () => setU64(base, 40, 0n) },
  { name: 'refcount_table_offset past EOF', make: () => setU64(base, 48, 0x1000000n) },
  { name: 'refcount_table_offset unaligned', make: () => setU64(base, 48, 0x10200n) },
  { name: 'refcount_table_offset on the header', make: () => setU64(base, 48, 0n) },
  { name: 'snapshots_offset past EOF (no snapshots)', make: () => setU64(base, 64, 0x1000000n) },
  { name: 'snapshots_offset unaligned (no snapshots)', make: () => setU64(base, 64, 0x1234n) },
  { name: 'snapshots_offset unaligned (one snapshot)', make: () => setU64(withSnapshot, 64, 0x1200n) },
  // Table entries.
  { name: 'L1 entry past EOF', make: () => setU64(base, L1, 0x8000000001000000n) },
  { name: 'L1 entry unaligned', make: () => setU64(base, L1, 0x8000000000040200n) },
  { name: 'refcount table entry past EOF', make: () => setU64(base, REFTABLE, 0x1000000n) },
  { name: 'refcount table entry unaligned', make: () => setU64(base, REFTABLE, 0x20200n) },
  { name: 'L2 entry past EOF', make: () => setU64(base, L2, 0x8000000001000000n) },
  { name: 'L2 entry unaligned (data)', make: () => setU64(base, L2 + 8 * 20, 0x8000000000050200n) },
  {
    name: 'L2 entry unaligned (preallocated zero)',
    make: () => setU64(base, L2 + 8 * 20, 0x8000000000050201n),
  },
  {
    name: 'L2 entry unaligned (preallocated zero on the header)',
    make: () => setU64(base, L2 + 8 * 20, 0x8000000000000201n),
  },
  // The snapshot table (QEMU's qcow2_check_read_snapshot_table; nb_snapshots at 60).
  { name: 'snapshot table past EOF (entry read as zeros)', make: () => setU64(withSnapshot, 64, 0x1000000n) },
  { name: 'nb_snapshots past the end of the table', make: () => setU32(twoSnapshots, 60, 5) },
  {
    name: 'nb_snapshots over 65536',
    make: () => setU32(twoSnapshots, 60, 70000),
    leftDiffers:
      'both fail the repair alike (the new table would overlap the old one, which runs past EOF), but qemu-img has already rewritten parts of the table it then leaves',
  },
  { name: 'snapshot entry with too much extra data', make: firstEntry((b, at) => setU32(b, at + 36, 2000)) },
  { name: 'snapshot entry id longer than the file', make: firstEntry((b, at) => setU16(b, at + 12, 60000)) },
  { name: 'snapshot L1 table too large', make: firstEntry((b, at) => setU32(b, at + 8, 0x2000000)) },
  {
    name: 'snapshot L1 table unaligned',
    make: firstEntry((b, at) => setU64(b, at, b.readBigUInt64BE(at) + 512n)),
  },
  // A second reference to a cluster whose 1-bit refcount is already at its maximum.
  {
    name: 'refcount overflow (refcount_bits=1, two L2 entries for one cluster)',
    make: () => {
      const l1 = Number(oneBit.readBigUInt64BE(40));
      const l2 = Number(oneBit.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
      return setU64(oneBit, l2 + 8, oneBit.readBigUInt64BE(l2));
    },
  },
  // The refcount width changed under the counts (1, 2, 8 and 64 bits read from 16-bit
  // blocks), with a snapshot: most counts are wrong, the repair rebuilds the structure and
  // frees the old one; the images each tool leaves are compared byte for byte.
  ...[0, 1, 3, 6].map(
    (order): Case => ({
      name: `refcount_order ${order} over 16-bit refcount blocks, one snapshot`,
      make: () => setU32(twoSnapshots, 96, order),
    }),
  ),
  // The corrupt bit: a repair that leaves no corruption clears it.
  { name: 'marked corrupt, nothing wrong', make: () => setU64(base, 72, 2n) },
  {
    name: 'marked corrupt, L1 entry past EOF',
    make: () => setU64(setU64(base, 72, 2n), L1, 0x8000000001000000n),
  },
];

const modes: string[][] = [[], ['--output=json'], ['-r', 'leaks'], ['-r', 'all']];

describe('check on damaged qcow2 images, against qemu-img', () => {
  for (const c of cases) {
    for (const mode of c.modes ?? modes) {
      it(`${c.name}: check ${mode.join(' ')}`, async () => {
        const img = c.make();
        const q = join(dir, 'q.qcow2');
        const v = join(dir, 'v.qcow2');
        writeFileSync(q, img);
        writeFileSync(v, img);
        const qr = qemuImg(['check', ...mode, q]);
        const vr = await vdisk(['check', ...mode, v]);
        expect(vr.stderr.replaceAll('vdisk:', 'qemu-img:').replaceAll(v, q)).toBe(qr.stderr);
        expect(vr.stdout.replaceAll(v, q)).toBe(qr.stdout);
        expect(vr.code).toBe(qr.code);
        if (mode[0] !== '-r' || (mode[1] === 'all' && c.leftDiffers !== undefined)) return;
        // What each tool left behind reads the same to qemu-img.
        const again = (p: string) => {
          const r = qemuImg(['check', '--output=json', p]);
          const info = qemuImg(['info', '--output=json', p]);
          const corrupt = /"corrupt": (true|false)/.exec(info.stdout)?.[1];
          return { ...r, stdout: r.stdout.replaceAll(p, 'X'), stderr: r.stderr.replaceAll(p, 'X'), corrupt };
        };
        expect(again(v)).toEqual(again(q));
        // The same bytes, and the same space given back to the host: qemu-img discards the
        // clusters a repair frees (QCOW2_DISCARD_ALWAYS), the file's map shows the holes.
        // (Some grow to 4 GiB, sparse: qemu-img compares them as raw.)
        expect(statSync(v).size).toBe(statSync(q).size);
        expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', v, q]).code).toBe(0);
        const hostMap = (p: string) => qemuImgOk(['map', '--output=json', '-f', 'raw', p]);
        expect(hostMap(v)).toBe(hostMap(q));
      });
    }
  }
});

describe('check on damaged qcow2 images: other commands', () => {
  it('other commands still refuse the damaged images they refused before', async () => {
    const p = join(dir, 'refused.qcow2');
    writeFileSync(p, setU64(base, L1, 0x8000000001000000n));
    const r = await vdisk(['info', p]);
    expect(r.stderr).toBe(
      `vdisk: Could not open '${p}': L2 table at offset 0x1000000 lies past the end of the file (L1 index: 0x0)\n`,
    );
    expect(r.code).toBe(1);
    writeFileSync(p, setU64(base, 40, 0x30200n));
    const q = qemuImg(['info', p]);
    const v = await vdisk(['info', p]);
    expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
    expect(v.code).toBe(q.code);
  });
});
