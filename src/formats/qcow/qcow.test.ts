import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, sha256, tempDir, vdisk } from '../../test/oracle.js';

runDeviceConformance({
  format: 'qcow',
  label: 'qcow (made by qemu-img)',
  create: async (path, size) => void qemuImgOk(['create', '-q', '-f', 'qcow', path, String(size)]),
});
runDeviceConformance({
  format: 'qcow',
  label: 'qcow (made by vdisk)',
  create: async (path, size) => {
    const r = await vdisk(['create', '-q', '-f', 'qcow', path, String(size)]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());
const p = (n: string) => join(dir, n);

async function vdiskDigest(path: string): Promise<string> {
  const img = await openImage(path, { backing: 'follow' });
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  await img.close();
  return sha256(buf);
}

describe('qcow against qemu-img', () => {
  it('reads plain, compressed and overlay images byte for byte', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow', p('a.qcow'), '32M']);
    qemuIo(p('a.qcow'), ['write -P 3 0 6k', 'write -P 4 3M 1k', 'write -P 5 30M 2M'], 'qcow');
    expect(await vdiskDigest(p('a.qcow'))).toBe(qemuRawDigest(p('a.qcow')));
    // qemu-img 7.2's `convert -c -O qcow` exits 1 without a message on most inputs; qemu-io's
    // compressed writes work.
    qemuImgOk(['create', '-q', '-f', 'qcow', p('c.qcow'), '8M']);
    qemuIo(
      p('c.qcow'),
      ['write -c -P 5 0 4k', 'write -c -P 6 64k 4k', 'write -P 7 1M 64k', 'write -c -P 8 4M 4k'],
      'qcow',
    );
    expect(await vdiskDigest(p('c.qcow'))).toBe(qemuRawDigest(p('c.qcow')));
    qemuImgOk(['create', '-q', '-f', 'qcow', '-b', 'c.qcow', '-F', 'qcow', p('o.qcow')]);
    qemuIo(p('o.qcow'), ['write -P 9 5000 3000', 'write -P 8 4M 700k'], 'qcow');
    expect(await vdiskDigest(p('o.qcow'))).toBe(qemuRawDigest(p('o.qcow')));
  });

  it('creates the same bytes, Formatting line and info', async () => {
    writeFileSync(p('b.raw'), Buffer.alloc(1 << 20));
    const cases: Array<[string[], string[]]> = [
      [[], ['100M']],
      [[], ['5G']],
      [['-b', 'b.raw', '-F', 'raw'], []],
    ];
    for (const [opts, size] of cases) {
      const q = qemuImgOk(['create', '-f', 'qcow', ...opts, 'q.qcow', ...size], dir);
      const v = await vdisk(['create', '-f', 'qcow', ...opts, 'v.qcow', ...size], dir);
      expect(v.stdout).toBe(q.replace("'q.qcow'", "'v.qcow'"));
      expect(readFileSync(p('v.qcow')).equals(readFileSync(p('q.qcow')))).toBe(true);
      for (const extra of [[], ['--output=json']]) {
        const vi = await vdisk(['info', ...extra, 'v.qcow'], dir);
        expect(vi.stdout).toBe(qemuImgOk(['info', ...extra, 'q.qcow'], dir).replaceAll('q.qcow', 'v.qcow'));
      }
    }
  });

  it('writes overlays and compressed clusters that qemu reads back', async () => {
    const base = Buffer.alloc(4 << 20);
    randomBytes(4 << 20).copy(base);
    writeFileSync(p('base.raw'), base);
    expect(
      (await vdisk(['create', '-q', '-f', 'qcow', '-b', 'base.raw', '-F', 'raw', p('o.qcow')])).code,
    ).toBe(0);
    const img = await openImage(p('o.qcow'), { writable: true, backing: 'follow' });
    const model = Buffer.from(base);
    for (const [off, len] of [
      [100, 10],
      [4096 * 3 + 7, 9000],
      [1 << 20, 1 << 20],
    ] as const) {
      const d = randomBytes(len);
      d.copy(model, off);
      await img.writeAt(d, off);
    }
    const text = Buffer.alloc(512, 'a');
    await img.driver.writeCompressed!(text, 3 << 20);
    text.copy(model, 3 << 20);
    await img.close();
    writeFileSync(p('model.raw'), model);
    expect(qemuImg(['compare', '-F', 'raw', p('o.qcow'), p('model.raw')]).stdout).toBe(
      'Images are identical.\n',
    );
    expect(qemuImg(['check', p('o.qcow')]).code).toBe(63);
  });

  it('reads a header size that is not a multiple of 512 as the whole sectors it covers (npm run fuzz)', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow', p('s.qcow'), '1M']);
    qemuIo(p('s.qcow'), ['write -P 3 0 4k'], 'qcow');
    const b = readFileSync(p('s.qcow'));
    b.writeBigUInt64BE(1000n, 24);
    writeFileSync(p('s.qcow'), b);
    expect((await vdisk(['info', '--output=json', p('s.qcow')])).stdout).toBe(
      qemuImgOk(['info', '--output=json', p('s.qcow')]),
    );
    expect((await vdisk(['convert', '-O', 'raw', p('s.qcow'), p('v.raw')])).code).toBe(0);
    qemuImgOk(['convert', '-O', 'raw', p('s.qcow'), p('q.raw')]);
    expect(readFileSync(p('v.raw')).equals(readFileSync(p('q.raw')))).toBe(true);
  });

  it('refuses hostile headers with one line', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow', p('h.qcow'), '10M']);
    const good = readFileSync(p('h.qcow'));
    const edits: Array<[(b: Buffer) => void, string]> = [
      [(b) => b.writeUInt8(30, 32), 'Cluster size'],
      [(b) => b.writeUInt8(2, 33), 'L2 table size'],
      [(b) => b.writeUInt32BE(7, 36), 'encryption method'],
      // crypt_method 1 (AES) is no longer refused: info opens it as qemu-img does (luks/legacy-aes.test.ts).
      [(b) => b.writeBigUInt64BE(1n << 52n, 24), 'too big'],
      [(b) => b.writeBigUInt64BE(1n << 40n, 40), 'L1 table offset'],
      [
        (b) => {
          b.writeBigUInt64BE(40n, 8);
          b.writeUInt32BE(5000, 16);
        },
        'backing file name',
      ],
    ];
    for (const [edit, msg] of edits) {
      const b = Buffer.from(good);
      edit(b);
      writeFileSync(p('h.qcow'), b);
      const r = await vdisk(['info', p('h.qcow')]);
      expect(r.code, msg).toBe(1);
      expect(r.stderr).toContain(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});
