import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync, deflateSync, gzipSync, inflateRawSync, inflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../native/index.js';
import { qemuImg, qemuImgOk, tempDir, vdisk } from '../test/oracle.js';
import { deflateCluster, deflateZlib } from './deflate.js';

const CS = 65536;

/** Clusters of every kind the probe must tell apart, named. */
function corpus(): Array<[string, Buffer]> {
  const text = Buffer.alloc(CS);
  const line = Buffer.from('The quick brown fox jumps over the lazy dog. 0123456789 ');
  for (let i = 0; i < CS; i++) text[i] = line[i % line.length]!;
  // Random bytes drawn from 240 values: entropy 7.91 bits, deflate saves ~1 %.
  const narrow = randomBytes(CS).map((b) => b % 240);
  // Random bytes drawn from 254 values: entropy 7.989 bits; deflate saves ~40 bytes (it fits).
  const nearly = randomBytes(CS).map((b) => b % 254);
  // 255 values, 7.994 bits: deflate no longer fits; the probe leaves it to deflate all the same.
  const edge = randomBytes(CS).map((b) => b % 255);
  const rep2k = Buffer.alloc(CS);
  const r2 = randomBytes(2048);
  for (let i = 0; i < CS; i += 2048) r2.copy(rep2k, i);
  // A 32 KiB repeat: beyond qcow2's 4 KiB window, within zlib's 32 KiB one.
  const rep32k = randomBytes(CS / 2);
  const rep32 = Buffer.concat([rep32k, rep32k]);
  const half = Buffer.concat([randomBytes(CS / 2), Buffer.alloc(CS / 2)]);
  const sparseZeros = randomBytes(CS);
  for (let i = 0; i < CS; i += 64) sparseZeros[i] = 0;
  // A random cluster with a short repeated run (a few hundred bytes) inside the window.
  const fewRepeats = randomBytes(CS);
  fewRepeats.copy(fewRepeats, 3000, 1000, 1400);
  const gz = gzipSync(Buffer.concat([text, randomBytes(CS)])).subarray(0, CS);
  const binary = readFileSync(process.execPath).subarray(4 * CS, 5 * CS);
  return [
    ['random', randomBytes(CS)],
    ['text', text],
    ['240 symbols', Buffer.from(narrow)],
    ['254 symbols', Buffer.from(nearly)],
    ['255 symbols', Buffer.from(edge)],
    ['2 KiB repeat', rep2k],
    ['32 KiB repeat', rep32],
    ['half zeros', half],
    ['every 64th byte zero', sparseZeros],
    ['400-byte repeat', fewRepeats],
    ['gzip stream', Buffer.from(gz)],
    ['executable', Buffer.from(binary)],
    ['zeros', Buffer.alloc(CS)],
  ];
}

describe.skipIf(native?.deflateCluster === undefined)('native deflate', () => {
  const d = native!.deflateCluster!;

  it("produces node:zlib's bytes (qcow2 raw deflate and vmdk zlib)", async () => {
    for (const [name, buf] of corpus()) {
      const raw = await d(buf, 0, CS - 1, 0);
      const ref = deflateRawSync(buf, { windowBits: 12, level: 6, memLevel: 9 });
      if (ref.length <= CS - 1) expect(raw, name).toEqual(ref);
      else expect(raw, name).toBeNull();
      const z = await d(buf, 1, CS + 1024, 0);
      expect(z, name).toEqual(deflateSync(buf));
    }
  });

  it('the probe skips only what deflate cannot fit in a cluster', async () => {
    const verdicts: string[] = [];
    for (const [name, buf] of corpus()) {
      const ref = deflateRawSync(buf, { windowBits: 12, level: 6, memLevel: 9 });
      const probed = await d(buf, 0, CS - 1, 1);
      // Whatever deflate fits, the probe lets through, with the same bytes.
      if (ref.length <= CS - 1) expect(probed, name).toEqual(ref);
      else expect(probed, name).toBeNull();
      verdicts.push(`${name}: ${probed === null ? 'stored' : probed.length}`);
    }
    // The corpus holds both kinds (else this test proves nothing).
    expect(verdicts.filter((v) => v.endsWith('stored')).length).toBeGreaterThanOrEqual(3);
    expect(verdicts.filter((v) => !v.endsWith('stored')).length).toBeGreaterThanOrEqual(6);
  });

  it('stores incompressible vmdk grains in a valid zlib stream', async () => {
    for (const [name, buf] of corpus()) {
      const z = await d(buf, 1, CS + 1024, 1);
      expect(z, name).not.toBeNull();
      expect(inflateSync(z!).equals(buf), name).toBe(true);
      // Never larger than what deflate itself makes of it.
      expect(z!.length, name).toBeLessThanOrEqual(deflateSync(buf).length + 8);
    }
  });

  it('refuses bad arguments with a TypeError', () => {
    expect(() => d(Buffer.alloc(0), 0, 10, 0)).toThrow(TypeError);
    expect(() => d(Buffer.alloc(16), 2 as 0, 10, 0)).toThrow(TypeError);
    expect(() => d('x' as unknown as Buffer, 0, 10, 0)).toThrow(TypeError);
  });
});

describe('core/deflate', () => {
  it('deflateCluster / deflateZlib round trip', async () => {
    for (const [name, buf] of corpus()) {
      const c = await deflateCluster(buf, CS - 1);
      if (c !== null) expect(inflateRawSync(c, { windowBits: 12 }).equals(buf), name).toBe(true);
      expect(inflateSync(await deflateZlib(buf)).equals(buf), name).toBe(true);
    }
  });
});

describe('convert -c against qemu-img on the corpus', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ dir, cleanup } = tempDir('vdisk-deflate-'));
    writeFileSync(join(dir, 'src.raw'), Buffer.concat(corpus().map(([, b]) => b)));
  });
  afterAll(() => cleanup());

  const compressed = (p: string) =>
    (JSON.parse(qemuImgOk(['check', '--output=json', p])) as { 'compressed-clusters'?: number })[
      'compressed-clusters'
    ] ?? 0;

  it('qcow2: the same clusters compressed as qemu-img, check clean, compare 0', async () => {
    qemuImgOk(['convert', '-c', '-O', 'qcow2', join(dir, 'src.raw'), join(dir, 'q.qcow2')]);
    const r = await vdisk(['convert', '-c', '-O', 'qcow2', join(dir, 'src.raw'), join(dir, 'v.qcow2')]);
    expect(r.code, r.stderr).toBe(0);
    expect(qemuImg(['compare', join(dir, 'src.raw'), join(dir, 'v.qcow2')]).code).toBe(0);
    expect(compressed(join(dir, 'v.qcow2'))).toBe(compressed(join(dir, 'q.qcow2')));
    expect(compressed(join(dir, 'v.qcow2'))).toBeGreaterThan(3);
  });

  it('vmdk streamOptimized: check clean, compare 0, no larger than qemu-img', async () => {
    const o = ['-O', 'vmdk', '-o', 'subformat=streamOptimized'];
    qemuImgOk(['convert', ...o, join(dir, 'src.raw'), join(dir, 'q.vmdk')]);
    const r = await vdisk(['convert', ...o, join(dir, 'src.raw'), join(dir, 'v.vmdk')]);
    expect(r.code, r.stderr).toBe(0);
    expect(qemuImg(['check', join(dir, 'v.vmdk')]).code).toBe(0);
    expect(qemuImg(['compare', join(dir, 'src.raw'), join(dir, 'v.vmdk')]).code).toBe(0);
    const size = (p: string) => readFileSync(p).length;
    expect(size(join(dir, 'v.vmdk'))).toBeLessThanOrEqual(size(join(dir, 'q.vmdk')) + 4096);
  });
});
