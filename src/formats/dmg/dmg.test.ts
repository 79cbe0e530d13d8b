/**
 * qemu-img cannot create dmg images: the test writes UDIF images by the format's description
 * (data fork, mish blocks in an XML property list or a binary resource fork, koly trailer)
 * and requires vdisk to read what qemu-img reads. Debian's qemu-img 7.2 has no bzip2 module,
 * so bzip2 chunks are checked against Debian's dmg2img and against the same image with zlib
 * chunks read by qemu-img.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import type { Image } from '../../core/image.js';
import { buildDmg, type ChunkSpec } from '../../test/builders.js';
import { qemuImg, qemuImgOk, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';
import { parseXml } from './plist.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

/** Compressible content: runs and text with some random bytes. */
function content(sectors: number, seed: number): Buffer {
  const b = Buffer.alloc(sectors * 512);
  for (let i = 0; i < b.length; i += 512) {
    b.write(`sector ${i / 512} of chunk ${seed} `.repeat(4), i, 'latin1');
    randomBytes(16).copy(b, i + 300);
  }
  return b;
}

async function readAll(img: Image): Promise<Buffer> {
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  return buf;
}

async function vdiskDigest(p: string): Promise<string> {
  const img = await openImage(p);
  try {
    expect(img.format).toBe('dmg');
    return sha256(await readAll(img));
  } finally {
    await img.close();
  }
}

const mixed = (big: boolean): ChunkSpec[][] => [
  [
    { kind: 'zlib', sectors: 2048, data: content(2048, 1) },
    { kind: 'comment', sectors: 0 },
    { kind: 'raw', sectors: 5, data: content(5, 2) },
    { kind: 'zero', sectors: big ? 300000 : 3000 },
    { kind: 'zlib', sectors: 7, data: content(7, 3) },
  ],
  [
    { kind: 'ignore', sectors: 64 },
    { kind: 'raw', sectors: 2048, data: randomBytes(2048 * 512) },
    // The largest chunk QEMU accepts (64 MiB).
    big
      ? { kind: 'zlib', sectors: 131072, data: content(131072, 4) }
      : { kind: 'zlib', sectors: 999, data: content(999, 4) },
  ],
];

describe('dmg: images built by the UDIF description read as qemu-img reads them', () => {
  for (const [label, opts] of [
    ['XML property list, the largest chunks', { big: true }],
    ['binary resource fork', { resourceFork: true }],
    ['leading bytes before the data fork, a file of odd size', { lead: 1001 }],
  ] as const) {
    it(`zlib, raw, zero, ignore and comment chunks (${label})`, async () => {
      const p = join(dir, 'd.dmg');
      const { big, ...rest }: { big?: boolean; lead?: number; resourceFork?: boolean } = opts;
      const b = buildDmg({ parts: mixed(big === true), ...rest });
      writeFileSync(p, b.file);
      const d = await vdiskDigest(p);
      expect(d).toBe(sha256(b.disk));
      expect(d).toBe(qemuRawDigest(p));
      for (const args of [
        ['info', p],
        ['info', '--output=json', p],
      ]) {
        expect((await vdisk(args)).stdout).toBe(qemuImgOk(args));
      }
      expect((await vdisk(['map', '--output=json', p])).stdout).toBe(qemuImgOk(['map', '--output=json', p]));
    });
  }

  it('bzip2 chunks: what dmg2img reads, and what qemu-img reads from the same image in zlib', async () => {
    const data = [content(2048, 5), randomBytes(3 * 512), content(9, 6), content(4096, 7)];
    const parts = (kind: 'bzip2' | 'zlib'): ChunkSpec[][] => [
      [
        { kind, sectors: 2048, data: data[0] },
        { kind: 'zero', sectors: 100 },
        { kind, sectors: 3, data: data[1] },
        { kind: 'raw', sectors: 9, data: data[2] },
        { kind, sectors: 4096, data: data[3] },
      ],
    ];
    const bz = buildDmg({ parts: parts('bzip2') });
    const p = join(dir, 'bz.dmg');
    writeFileSync(p, bz.file);
    const d = await vdiskDigest(p);
    expect(d).toBe(sha256(bz.disk));
    const out = join(dir, 'bz.img');
    const r = spawnSync('dmg2img', ['-s', p, out]);
    expect(r.status, `${r.error} ${r.stdout} ${r.stderr}`).toBe(0);
    expect(sha256(readFileSync(out))).toBe(d);
    // The same content in zlib chunks: qemu-img reads the same bytes.
    const zl = join(dir, 'zl.dmg');
    writeFileSync(zl, buildDmg({ parts: parts('zlib') }).file);
    expect(qemuRawDigest(zl)).toBe(d);
    // A chunk whose stream is damaged, or that decodes to another size, fails to read.
    for (const patchMish of [
      (m: Buffer) => m.writeBigUInt64BE(2047n, 204 + 0x10),
      (m: Buffer) => m.writeBigUInt64BE(2049n, 204 + 0x10),
    ]) {
      const bad = join(dir, 'bad.dmg');
      writeFileSync(bad, buildDmg({ parts: parts('bzip2'), patchMish }).file);
      const img = await openImage(bad);
      await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'EIO' });
      await img.close();
    }
    const damaged = Buffer.from(bz.file);
    damaged[200] = damaged[200]! ^ 0x55;
    writeFileSync(join(dir, 'bad.dmg'), damaged);
    const img = await openImage(join(dir, 'bad.dmg'));
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'EIO' });
    await img.close();
    // Debian's qemu-img 7.2 has no dmg-bz2 module: it fails where vdisk reads.
    const q = qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]);
    expect(q.code).toBe(1);
    expect(q.stderr).toContain('dmg-bzip2 module is missing');
  });

  it('fails to read what qemu-img fails to read: unmapped sectors, lzfse chunks, broken zlib', async () => {
    for (const parts of [
      // A hole between two partitions.
      [
        [{ kind: 'zlib', sectors: 8, data: content(8, 1) }],
        [{ kind: 'raw', sectors: 8, data: content(8, 2) }],
      ],
      [[{ kind: 'lzfse', sectors: 8 }]],
    ] as ChunkSpec[][][]) {
      const b = buildDmg({
        parts,
        patchMish: (m, part) => {
          if (part === 1) m.writeBigUInt64BE(20n, 8);
        },
        patchKoly: (k) => k.writeBigUInt64BE(40n, 0x1ec),
      });
      const p = join(dir, 'f.dmg');
      writeFileSync(p, b.file);
      const q = qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]);
      expect(q.code).toBe(1);
      const img = await openImage(p);
      await expect(readAll(img)).rejects.toMatchObject({ code: 'EIO' });
      if (parts.length === 2) {
        // What is mapped reads as in qemu (qemu-io reads the first partition whole).
        const first = Buffer.alloc(4096);
        await img.readAt(first, 0);
        expect(first.equals(b.disk.subarray(0, 4096))).toBe(true);
        const io = spawnSync('qemu-io', ['-r', '-c', 'read 0 4k', '-c', 'read 8k 4k', p], {
          encoding: 'utf8',
        });
        expect(io.stdout).toContain('read 4096/4096 bytes at offset 0');
        expect(io.stdout + io.stderr).toContain('read failed: Input/output error');
        await expect(img.readAt(Buffer.alloc(4096), 8192)).rejects.toMatchObject({ code: 'EIO' });
      }
      await img.close();
    }
    // A zlib chunk whose stream is cut short.
    const b = buildDmg({
      parts: [[{ kind: 'zlib', sectors: 64, data: content(64, 3) }]],
      patchMish: (m) => m.writeBigUInt64BE(m.readBigUInt64BE(204 + 0x20) - 10n, 204 + 0x20),
    });
    const p = join(dir, 'z.dmg');
    writeFileSync(p, b.file);
    expect(qemuImg(['convert', '-O', 'raw', p, join(dir, 'q.raw')]).code).toBe(1);
    const img = await openImage(p);
    await expect(readAll(img)).rejects.toMatchObject({ code: 'EIO' });
    await img.close();
  });

  it('is read-only and probes only by name, as qemu', async () => {
    const b = buildDmg({ parts: [[{ kind: 'raw', sectors: 8, data: content(8, 1) }]] });
    const p = join(dir, 'r.dmg');
    writeFileSync(p, b.file);
    await expect(openImage(p, { writable: true })).rejects.toMatchObject({ code: 'READ_ONLY' });
    const other = join(dir, 'r.img');
    writeFileSync(other, b.file);
    const img = await openImage(other);
    expect(img.format).toBe('raw');
    await img.close();
    expect(JSON.parse(qemuImgOk(['info', '--output=json', other])).format).toBe('raw');
  });
});

describe('dmg: hostile images', () => {
  async function refused(p: string, pattern: RegExp, sameAsQemu = false): Promise<void> {
    const t0 = Date.now();
    const v = await vdisk(['info', p]);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(v.code).toBe(1);
    expect(v.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    expect(v.stderr).toMatch(pattern);
    const q = qemuImg(['info', p]);
    expect(q.code).toBe(1);
    // (qemu first warns that its dmg-bz2 and dmg-lzfse modules are missing)
    if (sameAsQemu)
      expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr.split('\n').at(-2)!.concat('\n'));
  }
  const one = (): ChunkSpec[][] => [[{ kind: 'zlib', sectors: 16, data: content(16, 1) }]];

  it('short files and a missing trailer, in qemu-img words', async () => {
    const p = join(dir, 'h.dmg');
    writeFileSync(p, Buffer.alloc(100));
    await refused(p, /Could not locate UDIF trailer in dmg file/, true);
    writeFileSync(p, Buffer.alloc(4096, 1));
    await refused(p, /Could not locate UDIF trailer in dmg file/, true);
  });

  it('forks and lists outside the file, absurd sizes', async () => {
    const p = join(dir, 'h.dmg');
    for (const patch of [
      (k: Buffer) => k.writeBigUInt64BE(1n << 40n, 0x18),
      (k: Buffer) => k.writeBigUInt64BE(1n << 40n, 0xd8),
      (k: Buffer) => k.writeBigUInt64BE(1n << 40n, 0xe0),
      (k: Buffer) => k.writeBigUInt64BE(0n, 0xe0),
      (k: Buffer) => k.writeBigInt64BE(-1n, 0x1ec),
    ]) {
      writeFileSync(p, buildDmg({ parts: one(), patchKoly: patch }).file);
      await refused(p, /Invalid argument/, true);
    }
    writeFileSync(p, buildDmg({ parts: one(), patchKoly: (k) => k.writeBigInt64BE(1n << 60n, 0x1ec) }).file);
    await refused(p, /too large/);
    // An XML list larger than qemu's 16 MiB cap.
    writeFileSync(
      p,
      buildDmg({ parts: one(), xml: (x) => x.replace('<dict>', `<!--${'x'.repeat(17 << 20)}--><dict>`) })
        .file,
    );
    await refused(p, /Invalid argument/, true);
  });

  it('resource forks with bad lengths, in qemu-img words', async () => {
    const p = join(dir, 'h.dmg');
    const b = buildDmg({ parts: one(), resourceFork: true });
    const rsrc = Number(b.file.readBigUInt64BE(b.file.length - 512 + 0x28));
    for (const [at, value] of [
      [0, 0xffffff00], // data offset past the fork
      [8, 0], // no resource data
      [8, 0x7fffffff], // resource data past the fork
      [256, 0], // an empty resource
      [256, 0x7fffffff], // a resource past the data
    ] as const) {
      const f = Buffer.from(b.file);
      f.writeUInt32BE(value, rsrc + at);
      writeFileSync(p, f);
      await refused(p, /Invalid argument/, true);
    }
  });

  it('chunks larger than qemu allows', async () => {
    const p = join(dir, 'h.dmg');
    writeFileSync(
      p,
      buildDmg({ parts: one(), patchMish: (m) => m.writeBigUInt64BE(131073n, 204 + 0x10) }).file,
    );
    await refused(p, /sector count 131073 for chunk 0 is larger than max \(131072\)/);
    writeFileSync(
      p,
      buildDmg({ parts: one(), patchMish: (m) => m.writeBigUInt64BE(1n << 40n, 204 + 0x20) }).file,
    );
    await refused(p, /length 1099511627776 for chunk 0 is larger than max \(67108864\)/);
  });

  it('malformed property lists are refused (qemu scans for <data> and may open them)', async () => {
    const p = join(dir, 'h.dmg');
    for (const [edit, why] of [
      [(x: string) => x.replace('</plist>', ''), /unterminated <plist>/],
      [(x: string) => x.replace('</array>', '</dict>'), /mismatched end tag/],
      [(x: string) => x.replace('<data>', '<data>!!'), /not base64/],
      [(x: string) => x.replace('<key>blkx</key>', ''), /key/],
      [(x: string) => x.replace('&amp;', '&bogus;'), /unknown entity/],
      [
        (x: string) => x.replace('<plist', '<plist><dict>'.repeat(40).concat('<plist')),
        /nested too deep|root|mismatched/,
      ],
    ] as const) {
      writeFileSync(p, buildDmg({ parts: one(), xml: edit }).file);
      const v = await vdisk(['info', p]);
      expect(v.code).toBe(1);
      expect(v.stderr).toMatch(why);
      expect(v.stderr.split('\n').filter(Boolean)).toHaveLength(1);
    }
  });

  it('the XML reader keeps to the structure', () => {
    expect(
      parseXml('<?xml version="1.0"?><a x="1"><b/>t&lt;<c>d</c></a>').children.map((c) => c.tag),
    ).toEqual(['b', 'c']);
    expect(() => parseXml('<a><b></a></b>')).toThrow(/mismatched/);
    expect(() => parseXml('<a></a><b></b>')).toThrow(/after the root/);
    expect(() => parseXml('<!DOCTYPE a [<!ENTITY x "y">]><a/>')).toThrow(/DOCTYPE/);
  });

  it('a property list cut inside a tag, or with a bad character reference, is refused (found by npm run fuzz:cov)', async () => {
    // The reader skipped white space with ' \t\r\n'.includes(text[pos] ?? ''): past the end
    // of the text that is includes(''), always true.
    expect(() => parseXml('<inte')).toThrow(/bad attribute at byte 5/);
    expect(() => parseXml('<a></a')).toThrow(/bad end tag at byte 6/);
    // A character reference that is no code point: a RangeError from String.fromCodePoint before.
    for (const ref of ['&#x;', '&#xZZ;', '&#1114112;', '&#x110000;', '&#;'])
      expect(() => parseXml(`<a>${ref}</a>`)).toThrow(/bad character reference/);
    expect(parseXml('<a>&#x41;&#66;</a>').text).toBe('AB');
    const p = join(dir, 'cut.dmg');
    writeFileSync(p, buildDmg({ parts: one(), xml: (x) => x.slice(0, x.indexOf('<dict>') + 5) }).file);
    const v = await vdisk(['info', p]);
    expect(v.code).toBe(1);
    expect(v.stderr).toMatch(/^vdisk: .*malformed XML property list \(bad attribute at byte \d+\)\n$/);
  });
});
