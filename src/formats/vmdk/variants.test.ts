/**
 * VMDK variants QEMU reads but does not create: VMware's stream (grain directory at the end,
 * footer, grain/table/directory markers), vmfs (VMFS flat extent) and vmfsSparse (COWD
 * extents). Each is built here byte by byte and read by both qemu-img and vdisk.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuMap, readAll, vdiskMap } from '../../test/image-helpers.js';
import { qemuImg, qemuImgOk, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import { encodeVmdk4, VMDK4_FLAG_COMPRESS, VMDK4_FLAG_MARKER, VMDK4_FLAG_NL_DETECT } from './header.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const S = 512;

/** Guest content with data, zero grains and holes. */
function content(size: number): Buffer {
  const b = Buffer.alloc(size);
  randomBytes(70000).copy(b, 0);
  b.fill(0x5a, 200000, 300000);
  randomBytes(4096).copy(b, size - 4096);
  return b;
}

/** A VMware-style streamOptimized file: markers, tables after their grains, footer. */
function vmwareStream(data: Buffer): Buffer {
  const grainSectors = 128;
  const gs = grainSectors * S;
  const capacity = data.length / S;
  const grains = Math.ceil(data.length / gs);
  const gtCount = Math.ceil(grains / 512);
  const desc =
    '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="streamOptimized"\n\n' +
    `# Extent description\nRDONLY ${capacity} SPARSE "s.vmdk"\n\n# The Disk Data Base\n#DDB\n\n` +
    'ddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "4"\nddb.uuid.image = "0-1-2"\n';
  const head = {
    version: 3,
    flags: VMDK4_FLAG_NL_DETECT | VMDK4_FLAG_COMPRESS | VMDK4_FLAG_MARKER,
    capacity,
    granularity: grainSectors,
    descOffset: 1,
    descSize: 20,
    gtEntries: 512,
    rgdOffset: 0,
    gdOffset: 0,
    grainOffset: 128,
    compressAlgorithm: 1,
  };
  const parts: Buffer[] = [];
  let sector = 0;
  const push = (b: Buffer) => {
    const padded = Buffer.alloc(Math.ceil(b.length / S) * S);
    b.copy(padded);
    parts.push(padded);
    sector += padded.length / S;
  };
  const h = Buffer.from(encodeVmdk4(head));
  h.writeBigUInt64LE(0xffffffffffffffffn, 56); // GD at end
  push(h);
  const d = Buffer.alloc(20 * S);
  d.write(desc, 'latin1');
  push(d);
  push(Buffer.alloc((128 - sector) * S));
  const marker = (lbaOrSectors: number, size: number, type: number) => {
    const m = Buffer.alloc(S);
    m.writeBigUInt64LE(BigInt(lbaOrSectors), 0);
    m.writeUInt32LE(size, 8);
    m.writeUInt32LE(type, 12);
    return m;
  };
  const gd = Buffer.alloc(gtCount * 4);
  for (let t = 0; t < gtCount; t++) {
    const gt = Buffer.alloc(512 * 4);
    for (let i = 0; i < 512 && t * 512 + i < grains; i++) {
      const g = t * 512 + i;
      const chunk = data.subarray(g * gs, Math.min((g + 1) * gs, data.length));
      if (chunk.every((x) => x === 0)) continue;
      const z = deflateSync(chunk);
      const gm = Buffer.alloc(12 + z.length);
      gm.writeBigUInt64LE(BigInt(g * grainSectors), 0);
      gm.writeUInt32LE(z.length, 8);
      z.copy(gm, 12);
      gt.writeUInt32LE(sector, i * 4);
      push(gm);
    }
    push(marker(4, 0, 1)); // grain table marker: 4 sectors follow
    gd.writeUInt32LE(sector, t * 4);
    push(gt);
  }
  push(marker(Math.ceil(gd.length / S), 0, 2));
  const gdSector = sector;
  push(gd);
  push(marker(1, 0, 3));
  const footer = Buffer.from(encodeVmdk4({ ...head, gdOffset: gdSector }));
  push(footer);
  push(marker(0, 0, 0));
  return Buffer.concat(parts);
}

describe('vmdk: VMware variants QEMU reads', () => {
  it('a VMware stream (directory at the end, footer, markers)', async () => {
    const data = content(3 * 1024 * 1024 + 64 * 1024);
    const p = join(dir, 's.vmdk');
    writeFileSync(p, vmwareStream(data));
    expect(qemuRawDigest(p, 'vmdk')).toBe(sha256(data));
    const img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(sha256(data));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
    expect((await vdisk(['info', p])).stdout).toBe(qemuImgOk(['info', p]));
    expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qemuImgOk(['info', '--output=json', p]));
    // Appending to it would have to move the footer: vdisk opens it read-only only.
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });

  it('createType "vmfs" with a VMFS extent', async () => {
    const data = content(2 * 1024 * 1024);
    writeFileSync(join(dir, 'v-flat.vmdk'), data);
    const p = join(dir, 'v.vmdk');
    writeFileSync(
      p,
      '# Disk DescriptorFile\r\nversion=1\r\nencoding="UTF-8"\r\nCID=fffffffe\r\nparentCID=ffffffff\r\n' +
        'isNativeSnapshot="no"\r\ncreateType="vmfs"\r\n\r\n# Extent description\r\n' +
        `RW ${data.length / S} VMFS "v-flat.vmdk"\r\n\r\n# The Disk Data Base\r\n#DDB\r\n\r\n` +
        'ddb.adapterType = "lsilogic"\r\nddb.geometry.cylinders = "1"\r\nddb.longContentID = "abc"\r\n',
    );
    expect(qemuRawDigest(p, 'vmdk')).toBe(sha256(data));
    const img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(sha256(data));
    await img.close();
    expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qemuImgOk(['info', '--output=json', p]));
  });

  it('createType "vmfsSparse" with a COWD extent, written by both tools', async () => {
    // A COWD file: header, a directory of one 4096-entry table, grains of 8 sectors.
    const capacity = 4096; // sectors (2 MiB)
    const gran = 8;
    const f = Buffer.alloc(S * (4 + 1 + 32 + 3 * gran));
    f.write('COWD', 0, 'latin1');
    f.writeUInt32LE(1, 4); // version
    f.writeUInt32LE(3, 8); // flags
    f.writeUInt32LE(capacity, 12);
    f.writeUInt32LE(gran, 16);
    f.writeUInt32LE(4, 20); // GD at sector 4
    f.writeUInt32LE(1, 24); // one GD entry
    f.writeUInt32LE(5, 4 * S); // GT at sector 5 (4096 entries = 32 sectors)
    const firstGrain = 5 + 32;
    const data = Buffer.alloc(capacity * S);
    for (const [g, n] of [
      [0, 0],
      [100, 1],
      [511, 2],
    ] as const) {
      f.writeUInt32LE(firstGrain + n * gran, 5 * S + g * 4);
      const bytes = randomBytes(gran * S);
      bytes.copy(f, (firstGrain + n * gran) * S);
      bytes.copy(data, g * gran * S);
    }
    writeFileSync(join(dir, 'c-delta.vmdk'), f);
    const p = join(dir, 'c.vmdk');
    writeFileSync(
      p,
      // (A blank line right before an extent line makes QEMU read that extent twice: its
      // sscanf skips the newline. VMware puts a comment there, as here.)
      '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="vmfsSparse"\n\n' +
        `# Extent description\nRW ${capacity} VMFSSPARSE "c-delta.vmdk"\n\nddb.adapterType = "lsilogic"\n`,
    );
    expect(qemuRawDigest(p, 'vmdk')).toBe(sha256(data));
    let img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(sha256(data));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
    // Write into an allocated grain and into new ones; qemu-img then reads what vdisk wrote.
    img = await openImage(p, { writable: true });
    const w = randomBytes(10000);
    w.copy(data, 4000);
    await img.writeAt(w, 4000);
    const w2 = randomBytes(3000);
    w2.copy(data, 1024 * 1024 + 100);
    await img.writeAt(w2, 1024 * 1024 + 100);
    await img.close();
    expect(qemuRawDigest(p, 'vmdk')).toBe(sha256(data));
    expect(qemuImg(['check', p]).stdout).toBe('No errors were found on the image.\n');
  });

  it('createType "seSparse" (read-only, as in QEMU)', async () => {
    const capacity = 16384; // sectors: 8 MiB, 2048 grains of 4 KiB, one grain table
    const grainsOffset = 3 + 64;
    const f = Buffer.alloc((grainsOffset + 3 * 8) * S);
    const q = (i: number, v: bigint) => f.writeBigUInt64LE(v, i * 8);
    q(0, 0xcafebaben);
    q(1, 0x0000000200000001n);
    q(2, BigInt(capacity));
    q(3, 8n); // grain size (sectors)
    q(4, 64n); // grain table size (sectors)
    q(10, 1n); // volatile header
    q(11, 1n);
    q(16, 2n); // grain directory: sector 2, one sector
    q(17, 1n);
    q(18, 3n); // grain tables from sector 3
    q(19, 64n);
    q(24, BigInt(grainsOffset));
    q(25, 24n);
    f.writeBigUInt64LE(0xcafecafen, S); // volatile header magic
    f.writeBigUInt64LE(0x1000000000000000n, 2 * S); // GD[0] -> grain table 0
    const data = Buffer.alloc(capacity * S);
    const entry = (c: bigint) => (3n << 60n) | ((c & 0xfffn) << 48n) | (c >> 12n);
    for (const [g, c] of [
      [0, 0n],
      [100, 1n],
      [2047, 2n],
    ] as const) {
      f.writeBigUInt64LE(entry(c), 3 * S + g * 8);
      const bytes = randomBytes(4096);
      bytes.copy(f, (grainsOffset + Number(c) * 8) * S);
      bytes.copy(data, g * 4096);
    }
    f.writeBigUInt64LE(2n << 60n, 3 * S + 5 * 8); // a zero grain
    f.writeBigUInt64LE(1n << 60n, 3 * S + 7 * 8); // an unmapped grain
    writeFileSync(join(dir, 'e-sesparse.vmdk'), f);
    const p = join(dir, 'e.vmdk');
    writeFileSync(
      p,
      '# Disk DescriptorFile\nversion=1\nCID=7\nparentCID=ffffffff\ncreateType="seSparse"\n\n' +
        `# Extent description\nRW ${capacity} SESPARSE "e-sesparse.vmdk"\n`,
    );
    expect(qemuRawDigest(p, 'vmdk')).toBe(sha256(data));
    const img = await openImage(p);
    expect(sha256(await readAll(img))).toBe(sha256(data));
    await img.close();
    expect(await vdiskMap(p)).toEqual(qemuMap(p));
    expect((await vdisk(['info', '--output=json', p])).stdout).toBe(qemuImgOk(['info', '--output=json', p]));
    expect(qemuImg(['check', p]).code).toBe(0);
    await expect(openImage(p, { writable: true })).rejects.toThrow(
      /No write support for seSparse images available/,
    );
    // QEMU's strict header checks, in its words.
    for (const [at, value] of [
      [0, 0x1234n],
      [8 * 3, 16n],
      [8 * 6, 1n],
    ] as const) {
      const bad = Buffer.from(f);
      bad.writeBigUInt64LE(value, at);
      writeFileSync(join(dir, 'e-sesparse.vmdk'), bad);
      const qe = qemuImg(['info', p]);
      const ve = await vdisk(['info', p]);
      expect(qe.code).toBe(1);
      expect(ve.stderr.replace('vdisk:', 'qemu-img:')).toBe(qe.stderr);
    }
  });
});
