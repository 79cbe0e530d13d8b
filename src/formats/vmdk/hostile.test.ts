/** Hostile and corrupt VMDK images: one-line errors, fast, bounded; QEMU's words where it refuses too. */
import { mkdirSync, readFileSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

/** vdisk info fails with one line, quickly; with qemu's exact message when `sameAsQemu`. */
async function expectRefused(p: string, sameAsQemu: boolean, pattern?: RegExp): Promise<string> {
  const t0 = Date.now();
  const v = await vdisk(['info', '-f', 'vmdk', p]);
  expect(Date.now() - t0).toBeLessThan(1000);
  expect(v.code).toBe(1);
  expect(v.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  expect(v.stderr).toMatch(/^vdisk: /);
  if (pattern) expect(v.stderr).toMatch(pattern);
  if (sameAsQemu) {
    const q = qemuImg(['info', '-f', 'vmdk', p]);
    expect(q.code).toBe(1);
    expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
  }
  return v.stderr;
}

const DESC_HEAD = '# Disk DescriptorFile\nversion=1\nCID=12ab\nparentCID=ffffffff\n';

function descriptor(createType: string, extents: string[], extra = ''): string {
  return `${DESC_HEAD}createType="${createType}"\n\n# Extent description\n${extents.join('\n')}\n${extra}`;
}

describe('vmdk: hostile descriptors', () => {
  it('a file too small to be an image', async () => {
    const p = join(dir, 'x.vmdk');
    writeFileSync(p, 'ab');
    await expectRefused(p, true);
  });

  it('no createType, an unknown createType', async () => {
    const p = join(dir, 'x.vmdk');
    writeFileSync(p, `${DESC_HEAD}\nRW 100 FLAT "f" 0\n`);
    await expectRefused(p, true, /invalid VMDK image descriptor/);
    writeFileSync(p, descriptor('monolithicSparse', ['RW 100 FLAT "f" 0']));
    await expectRefused(p, true, /Unsupported image type 'monolithicSparse'/);
  });

  it('malformed lines and extent lines (strict where QEMU skips)', async () => {
    writeFileSync(join(dir, 'f'), Buffer.alloc(51200));
    const p = join(dir, 'x.vmdk');
    writeFileSync(p, descriptor('monolithicFlat', ['RW 100 FLAT "f"']));
    await expectRefused(p, true, /Invalid extent line: RW 100 FLAT "f"/);
    for (const bad of [
      'RW 100 FLAT "f" 0 junk',
      'RW -5 FLAT "f" 0',
      'RW 100 FLAT "f',
      'RW 0 FLAT "f" 0',
      'RW 99999999999999999999 FLAT "f" 0',
    ]) {
      writeFileSync(p, descriptor('monolithicFlat', [bad]));
      await expectRefused(p, false, /Invalid extent line/);
    }
    writeFileSync(p, descriptor('monolithicFlat', ['RW 100 FLAT "f" 0'], 'this is not a descriptor line\n'));
    await expectRefused(p, false, /Invalid VMDK descriptor \(line \d+\): this is not/);
    writeFileSync(p, descriptor('monolithicFlat', ['RW 100 FLAT "f" 0'], 'ddb.adapterType = "ide\n'));
    await expectRefused(p, false, /Invalid VMDK descriptor/);
    writeFileSync(p, descriptor('monolithicFlat', ['RW 100 ZERO']));
    await expectRefused(p, false, /Unsupported extent type 'ZERO'/);
  });

  it('no CID: refused as QEMU does', async () => {
    writeFileSync(join(dir, 'f'), Buffer.alloc(51200));
    const p = join(dir, 'x.vmdk');
    writeFileSync(p, '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 100 FLAT "f" 0\n');
    await expectRefused(p, true);
  });

  it('too many extents, a descriptor too big', async () => {
    writeFileSync(join(dir, 'f'), Buffer.alloc(512));
    const p = join(dir, 'x.vmdk');
    const lines = Array.from({ length: 9000 }, () => 'RW 1 FLAT "f" 0');
    writeFileSync(p, descriptor('twoGbMaxExtentFlat', lines));
    await expectRefused(p, false, /more than 8192 extents/);
    writeFileSync(p, descriptor('monolithicFlat', ['RW 1 FLAT "f" 0'], `#${'x'.repeat(2 << 20)}\n`));
    await expectRefused(p, false, /descriptor file too big/);
  });

  it('extents outside the image directory are refused unless allowed (CVE-2022-47951 class)', async () => {
    mkdirSync(join(dir, 'img'));
    writeFileSync(join(dir, 'secret'), Buffer.alloc(51200, 0x41));
    const p = join(dir, 'img', 'x.vmdk');
    for (const name of [join(dir, 'secret'), '../secret', 'sub/../../secret']) {
      writeFileSync(p, descriptor('monolithicFlat', [`RW 100 FLAT "${name}" 0`]));
      const msg = await expectRefused(
        p,
        false,
        /outside its own directory, which was not allowed to be opened/,
      );
      expect(msg).toContain(name);
    }
    // A symlink inside the directory that leads out of it is judged by its target.
    symlinkSync(join(dir, 'secret'), join(dir, 'img', 'link'));
    writeFileSync(p, descriptor('monolithicFlat', ['RW 100 FLAT "link" 0']));
    await expectRefused(p, false, /outside its own directory/);
    // The caller may allow it.
    const img = await openImage(p, { allowExternalExtents: true });
    const b = Buffer.alloc(512);
    await img.readAt(b, 0);
    expect(b.every((x) => x === 0x41)).toBe(true);
    await img.close();
  });

  it('a descriptor line with terminal escapes is quoted with them shown as \\xNN', async () => {
    writeFileSync(join(dir, 'f'), Buffer.alloc(51200));
    const p = join(dir, 'x.vmdk');
    writeFileSync(
      p,
      descriptor('monolithicFlat', ['RW 100 FLAT "f" 0'], 'ddb.x\x1b[2J\x1b]0;owned\x07\r= "1"\n'),
    );
    const err = await expectRefused(p, false, /Invalid VMDK descriptor/);
    expect(err).toContain('ddb.x\\x1b[2J\\x1b]0;owned\\x07\\x0d= "1"');
    expect(err).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f]/);
  });

  it('CID and parentCID as sscanf("%x") reads them: leading digits count (npm run fuzz)', async () => {
    writeFileSync(join(dir, 'f'), Buffer.alloc(51200));
    const p = join(dir, 'x.vmdk');
    for (const cid of ['fffffffz', '0x12ab', ' 12ab', '123456789', '00000000012ab', 'z12', '', '0xg']) {
      writeFileSync(p, descriptor('monolithicFlat', ['RW 100 FLAT "f" 0']).replace('CID=12ab', `CID=${cid}`));
      const q = qemuImg(['info', '--output=json', '-f', 'vmdk', p]);
      const v = await vdisk(['info', '--output=json', '-f', 'vmdk', p]);
      expect(v.code, cid).toBe(q.code);
      expect(v.stdout, cid).toBe(q.stdout);
      expect(v.stderr.replace('vdisk:', 'qemu-img:'), cid).toBe(q.stderr);
    }
  });
});

describe('vmdk: hostile sparse headers', () => {
  let p: string;
  beforeEach(() => {
    p = join(dir, 's.vmdk');
    qemuImgOk(['create', '-q', '-f', 'vmdk', p, '64M']);
    qemuIo(p, ['write -P 7 0 1M'], 'vmdk');
  });
  const patch = (fn: (b: Buffer) => void) => {
    const b = readFileSync(p);
    fn(b);
    writeFileSync(p, b);
  };

  it('unknown version', async () => {
    patch((b) => b.writeUInt32LE(4, 4));
    await expectRefused(p, true, /Unsupported VMDK version 4/);
  });
  it('grain tables too big, granularity too big or zero', async () => {
    patch((b) => b.writeUInt32LE(1024, 44));
    await expectRefused(p, true, /L2 table size too big/);
    patch((b) => {
      b.writeUInt32LE(512, 44);
      b.writeBigUInt64LE(0x400000n, 20);
    });
    await expectRefused(p, false, /Invalid granularity, image may be corrupt/);
    patch((b) => b.writeBigUInt64LE(0n, 20));
    await expectRefused(p, true, /L1 entry size is invalid/);
  });
  it('an absurd capacity: refused before allocating its directory', async () => {
    patch((b) => b.writeBigUInt64LE(1n << 50n, 12));
    await expectRefused(p, false, /out of range|L1 size too big/);
    patch((b) => b.writeBigUInt64LE(1n << 45n, 12));
    await expectRefused(p, true, /L1 size too big/);
    patch((b) => b.writeBigUInt64LE(1n << 36n, 12));
    await expectRefused(p, false, /grain directory .* past the end of the file/);
  });
  it('a truncated file', async () => {
    truncateSync(p, 4096);
    await expectRefused(p, true, /File truncated, expecting at least 65536 bytes/);
  });
  it('a grain directory past the end of the file', async () => {
    patch((b) => b.writeBigUInt64LE(1n << 30n, 56));
    await expectRefused(p, false, /grain directory at sector 1073741824 lies past the end/);
  });
  it('version 3 without compression cannot be opened for writing (QEMU: read only)', async () => {
    patch((b) => b.writeUInt32LE(3, 4));
    await expect(openImage(p, { writable: true })).rejects.toThrow(/VMDK version 3 must be read only/);
    const img = await openImage(p);
    await img.close();
  });
  it('a grain table and a grain pointing past the end fail the read, not the open', async () => {
    const b = readFileSync(p);
    const gd = Number(b.readBigUInt64LE(56));
    const gt = b.readUInt32LE(gd * 512);
    patch((x) => x.writeUInt32LE(0x7fffffff, (gt + 0) * 512 + 4)); // grain 1
    let img = await openImage(p);
    await expect(img.readAt(Buffer.alloc(512), 65536)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    const ok = Buffer.alloc(512);
    await img.readAt(ok, 0);
    expect(ok.every((x) => x === 7)).toBe(true);
    await img.close();
    patch((x) => x.writeUInt32LE(0x7fffff00, gd * 512)); // the first grain table
    img = await openImage(p);
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close();
  });
});

describe('vmdk: hostile compressed grains and footers', () => {
  let p: string;
  let grainAt: number;
  beforeEach(() => {
    const raw = join(dir, 'r.raw');
    p = join(dir, 's.vmdk');
    qemuImgOk(['create', '-q', '-f', 'raw', raw, '1M']);
    qemuIo(raw, ['write -P 9 0 64k'], 'raw');
    qemuImgOk(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, p]);
    const b = readFileSync(p);
    grainAt = Number(b.readBigUInt64LE(64)) * 512; // the first grain follows grain_offset
  });
  const patch = (fn: (b: Buffer) => void) => {
    const b = readFileSync(p);
    fn(b);
    writeFileSync(p, b);
  };
  const readFails = async () => {
    const img = await openImage(p);
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close();
  };

  it('a marker length beyond two grains', async () => {
    patch((b) => b.writeUInt32LE(0x7fffffff, grainAt + 8));
    await readFails();
  });
  it('data that does not inflate', async () => {
    patch((b) => b.fill(0xee, grainAt + 12, grainAt + 40));
    await readFails();
  });
  it('a grain that inflates beyond a grain (bounded)', async () => {
    const bomb = deflateSync(Buffer.alloc(64 << 20));
    patch((b) => {
      const out = Buffer.alloc(grainAt + 12 + bomb.length);
      b.copy(out, 0, 0, grainAt);
      out.writeBigUInt64LE(0n, grainAt);
      out.writeUInt32LE(Math.min(bomb.length, 2 * 65536), grainAt + 8);
      bomb.copy(out, grainAt + 12);
      out.copy(b, 0, 0, Math.min(out.length, b.length));
    });
    await readFails();
  });
  it('a stream whose footer is not one', async () => {
    patch((b) => b.writeBigUInt64LE(0xffffffffffffffffn, 56));
    await expectRefused(p, true, /Invalid footer/);
  });
});
