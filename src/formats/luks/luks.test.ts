import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { Secrets } from '../../core/secrets.js';
import { luksOpts, OBJ, qemuCreateLuks, qemuIoLuks, qemuRawLuks, vdiskRawLuks } from '../../test/luks.js';
import { qemuImg, qemuImgLuks, qemuImgOk, tempDir, vdisk } from '../../test/oracle.js';
import { expectSameAsQemu } from '../../test/same.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => {
  cleanup();
});

const VARIANTS: Array<[string, string]> = [
  ['default (aes-256 xts plain64 sha256)', ''],
  ['aes-128 cbc essiv, sha1', ',cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1'],
  ['aes-128 xts plain', ',cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain'],
  [
    'aes-256 cbc essiv sha512 ivgen hash',
    ',cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512',
  ],
  ['aes-256 ctr plain64', ',cipher-mode=ctr'],
  ['aes-128 ecb', ',cipher-alg=aes-128,cipher-mode=ecb'],
  ['aes-192 xts plain64 (no AES-192-XTS in OpenSSL: built on ECB)', ',cipher-alg=aes-192'],
];

describe('luks images made by qemu-img', () => {
  for (const [name, extra] of VARIANTS) {
    it(`reads ${name} byte-identical, info equal`, async () => {
      const p = join(dir, 'a.luks');
      qemuCreateLuks(['-o', `key-secret=s0,iter-time=10${extra}`, p, '3M']);
      qemuIoLuks(p, ['write -P 0x5a 4096 100k', 'write -P 0xc3 1000k 3000', 'write -P 0x01 3069k 3k']);
      const want = qemuRawLuks(dir, p);
      expect(want.subarray(4096, 4097)[0]).toBe(0x5a);
      expect((await vdiskRawLuks(dir, p)).equals(want)).toBe(true);
      for (const args of [
        ['info', p],
        ['info', '--output=json', p],
        ['info', ...OBJ, '--image-opts', luksOpts(p)],
        ['info', '--output=json', ...OBJ, '--image-opts', luksOpts(p)],
      ]) {
        const q = qemuImg(args);
        const v = await vdisk(args);
        expect(v.stdout).toBe(q.stdout);
        expect(v.code).toBe(q.code);
      }
    });
  }

  it('writes what qemu-img reads (unaligned, across sectors)', async () => {
    const p = join(dir, 'a.luks');
    qemuCreateLuks(['-o', 'key-secret=s0,iter-time=10,cipher-mode=cbc,ivgen-alg=essiv', p, '2M']);
    // A fresh luks payload decrypts to noise: what lies around the write must stay as it was.
    const before = qemuRawLuks(dir, p);
    const secrets = new Secrets().define('s0', new TextEncoder().encode('hunter2'));
    const img = await openImage(p, {
      secrets,
      format: 'luks',
      writable: true,
      driverOptions: { 'key-secret': 's0' },
    });
    const data = Buffer.alloc(70000, 0x77);
    await img.writeAt(data, 1001);
    await img.writeZeroes(1 << 20, 4096);
    await img.flush();
    await img.close();
    const raw = qemuRawLuks(dir, p);
    expect(raw.subarray(1001, 71001).equals(data)).toBe(true);
    expect(raw.subarray(0, 1001).equals(before.subarray(0, 1001))).toBe(true);
    expect(raw.subarray(71001, 1 << 20).equals(before.subarray(71001, 1 << 20))).toBe(true);
    expect(raw.subarray(1 << 20, (1 << 20) + 4096).equals(Buffer.alloc(4096))).toBe(true);
    expect(raw.subarray((1 << 20) + 4096).equals(before.subarray((1 << 20) + 4096))).toBe(true);
  });
});

describe('luks images made by vdisk', () => {
  for (const [name, extra] of VARIANTS) {
    it(`${name}: qemu-img reads and compares equal`, async () => {
      const src = join(dir, 'src.raw');
      const content = Buffer.alloc(3 << 20);
      for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE((i * 2654435761) >>> 0, i);
      writeFileSync(src, content);
      const p = join(dir, 'v.luks');
      const r = await vdisk([
        'convert',
        ...OBJ,
        '-O',
        'luks',
        '-o',
        `key-secret=s0,iter-time=10${extra}`,
        src,
        p,
      ]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(qemuRawLuks(dir, p).equals(content)).toBe(true);
      const cmp = qemuImg([
        'compare',
        ...OBJ,
        '--image-opts',
        luksOpts(p),
        `driver=raw,file.filename=${src}`,
      ]);
      expect(cmp.code).toBe(0);
      const q = qemuImg(['info', '--output=json', p]);
      const v = await vdisk(['info', '--output=json', p]);
      expect(v.stdout).toBe(q.stdout);
      // The layout is QEMU's: same key offsets and payload offset as an image qemu-img makes.
      const ref = join(dir, 'ref.luks');
      qemuCreateLuks(['-o', `key-secret=s0,iter-time=10${extra}`, ref, '3M']);
      const layout = (s: string) => {
        const d = JSON.parse(s)['format-specific'].data;
        return {
          ...d,
          uuid: 0,
          'master-key-iters': 0,
          slots: d.slots.map((x: Record<string, unknown>) => ({ ...x, iters: 0 })),
        };
      };
      expect(layout(v.stdout)).toEqual(layout(qemuImgOk(['info', '--output=json', ref])));
      expect(readFileSync(p).length).toBe(readFileSync(ref).length);
    });
  }

  it('create prints the Formatting line and the image opens in qemu-io', async () => {
    const p = join(dir, 'c.luks');
    const args = ['create', '-f', 'luks', ...OBJ, '-o', 'key-secret=s0,iter-time=10', p, '1M'];
    const v = await vdisk(args);
    expect(v.code).toBe(0);
    expect(v.stdout).toBe(`Formatting '${p}', fmt=luks size=1048576 key-secret=s0 iter-time=10\n`);
    qemuIoLuks(p, ['write -P 0x42 0 512']);
    expect(qemuRawLuks(dir, p)[0]).toBe(0x42);
    expect((await vdiskRawLuks(dir, p))[0]).toBe(0x42);
  });

  it('takes the passphrase from a file and in base64', async () => {
    const p = join(dir, 'c.luks');
    const pw = join(dir, 'pw');
    writeFileSync(pw, 'hunter2');
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'luks',
      '--object',
      `secret,id=k,file=${pw}`,
      '-o',
      'key-secret=k,iter-time=10',
      p,
      '1M',
    ]);
    expect(r.code).toBe(0);
    const b64 = Buffer.from('hunter2').toString('base64');
    const v = await vdisk([
      'convert',
      '--object',
      `secret,id=s0,data=${b64},format=base64`,
      '--image-opts',
      luksOpts(p),
      '-O',
      'raw',
      join(dir, 'o.raw'),
    ]);
    expect(v.stderr).toBe('');
    expect(qemuRawLuks(dir, p).equals(readFileSync(join(dir, 'o.raw')))).toBe(true);
  });
});

describe('luks errors as qemu-img', () => {
  async function same(args: string[]) {
    const v = await expectSameAsQemu(args, { stdout: false });
    expect(v.code).not.toBe(0);
  }

  it('wrong passphrase, missing secret, missing key-secret, bad objects', async () => {
    const p = join(dir, 'a.luks');
    qemuCreateLuks(['-o', 'key-secret=s0,iter-time=10', p, '1M']);
    const out = join(dir, 'o.raw');
    await same([
      'convert',
      '--object',
      'secret,id=s0,data=wrong',
      '--image-opts',
      luksOpts(p),
      '-O',
      'raw',
      out,
    ]);
    await same(['convert', '--image-opts', luksOpts(p), '-O', 'raw', out]);
    await same(['convert', '-f', 'luks', p, '-O', 'raw', out]);
    await same(['create', '-f', 'luks', join(dir, 'n.luks'), '1M']);
    await same(['create', '-f', 'luks', '-o', 'key-secret=nope', join(dir, 'n.luks'), '1M']);
    await same([
      'create',
      '-f',
      'luks',
      ...OBJ,
      '-o',
      'key-secret=s0,cipher-alg=aes-100',
      join(dir, 'n.luks'),
      '1M',
    ]);
    await same(['info', '--object', 'secret,id=s0', p]);
    await same(['info', '--object', 'secret,id=s0,data=a,file=/x', p]);
    await same(['info', '--object', 'foo,id=s0', p]);
    await same(['info', '--object', 'secret,data=x', p]);
    await same(['info', ...OBJ, ...OBJ, p]);
    await same(['info', '--object', 'secret,id=s0,data=x,bogus=1', p]);
  });
});

describe('hostile luks headers', () => {
  async function fails(p: string, code = 'vdisk: ') {
    const t0 = Date.now();
    const v = await vdisk(['convert', ...OBJ, '--image-opts', luksOpts(p), '-O', 'raw', join(dir, 'o.raw')]);
    expect(v.code).toBe(1);
    expect(v.stderr.startsWith(code)).toBe(true);
    expect(v.stderr.trim().split('\n')).toHaveLength(1);
    expect(Date.now() - t0).toBeLessThan(5000);
    return v.stderr;
  }

  function base(): { p: string; buf: Buffer } {
    const p = join(dir, 'a.luks');
    qemuCreateLuks(['-o', 'key-secret=s0,iter-time=10', p, '1M']);
    return { p, buf: readFileSync(p) };
  }

  async function sameAsQemu(args: string[]) {
    const q = qemuImg(args);
    const v = await vdisk(args);
    expect(v.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(q.stderr);
    expect(v.code).toBe(q.code);
  }

  it('truncated header, truncated key material, payload past the end: as qemu-img', async () => {
    const { p, buf } = base();
    for (const n of [0, 5, 300, 8192, 600000]) {
      writeFileSync(p, buf.subarray(0, n));
      await sameAsQemu(['convert', ...OBJ, '--image-opts', luksOpts(p), '-O', 'raw', join(dir, 'o.raw')]);
      await sameAsQemu(['info', '-f', 'luks', p]);
      expect((await fails(p)).trim().split('\n')).toHaveLength(1);
    }
  });

  it('absurd iteration counts are refused without running them', async () => {
    const { p, buf } = base();
    buf.writeUInt32BE(0xffffffff, 208 + 4);
    writeFileSync(p, buf);
    expect(await fails(p)).toMatch(/PBKDF2 iterations/);
    buf.writeUInt32BE(1000, 208 + 4);
    buf.writeUInt32BE(0xfffffff0, 164);
    writeFileSync(p, buf);
    expect(await fails(p)).toMatch(/PBKDF2 iterations/);
  });

  it('key slots overlapping, stripes and state corrupted, LUKS2', async () => {
    const { p, buf } = base();
    const cases: Array<[(b: Buffer) => void, string]> = [
      [(b) => b.writeUInt32BE(4001, 208 + 44), 'Keyslot 0 is corrupted (stripes 4001 != 4000)'],
      [(b) => b.writeUInt32BE(0x1234, 208 + 48), 'Keyslot 1 state (active/disable) is corrupted'],
      [(b) => b.writeUInt32BE(1, 208 + 40), 'Keyslot 0 is overlapping with the LUKS header'],
      [(b) => b.writeUInt32BE(0xffffff00, 208 + 40), 'Keyslot 0 is overlapping with the encrypted payload'],
      [
        (b) => b.writeUInt32BE(b.readUInt32BE(208 + 48 + 40), 208 + 40),
        'Keyslots 0 and 1 are overlapping in the header',
      ],
      [(b) => b.writeUInt16BE(2, 6), 'LUKS version 2 is not supported'],
      [(b) => b.fill(0x41, 8, 40), 'LUKS header cipher name is not NUL terminated'],
      [(b) => b.writeUInt32BE(17, 108), "Algorithm 'aes' with key size 8 bytes not supported"],
    ];
    for (const [mutate, msg] of cases) {
      const b = Buffer.from(buf);
      mutate(b);
      writeFileSync(p, b);
      const v = await vdisk([
        'convert',
        ...OBJ,
        '--image-opts',
        luksOpts(p),
        '-O',
        'raw',
        join(dir, 'o.raw'),
      ]);
      expect(v.code).toBe(1);
      expect(v.stderr).toContain(msg);
      expect(v.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('luks measure and resize', () => {
  /** measure does a dry-run create: the same PBKDF2 timing (see qemuImgLuks). */
  const qemuRetry = (args: string[]) => qemuImgLuks(args);

  it('measure -O luks and -O qcow2 encrypt.format=luks as qemu-img', async () => {
    const src = join(dir, 'src.raw');
    writeFileSync(src, Buffer.alloc(3 << 20, 1));
    for (const args of [
      ['measure', '-O', 'luks', ...OBJ, '-o', 'key-secret=s0,iter-time=10', '--size', '1G'],
      [
        'measure',
        '-O',
        'luks',
        ...OBJ,
        '-o',
        'key-secret=s0,cipher-alg=aes-128,iter-time=10',
        '-f',
        'raw',
        src,
      ],
      [
        'measure',
        '-O',
        'qcow2',
        ...OBJ,
        '-o',
        'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10',
        '--size',
        '1G',
      ],
      [
        'measure',
        '-O',
        'qcow2',
        ...OBJ,
        '-o',
        'encrypt.format=luks,encrypt.key-secret=s0,cluster_size=4096,encrypt.cipher-mode=cbc,encrypt.iter-time=10',
        '-f',
        'raw',
        src,
      ],
      ['measure', '-O', 'luks', '--size', '1G'],
    ]) {
      const q = qemuRetry(args);
      const v = await vdisk(args);
      expect(v.stdout).toBe(q.stdout);
      expect(v.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('resize grows the payload; qemu-img reads the old data back', async () => {
    const p = join(dir, 'a.luks');
    qemuCreateLuks(['-o', 'key-secret=s0,iter-time=10', p, '1M']);
    qemuIoLuks(p, ['write -P 0x5a 0 1M']);
    const r = await vdisk(['resize', ...OBJ, '--image-opts', luksOpts(p), '3M']);
    expect(r.stdout).toBe('Image resized.\n');
    const raw = qemuRawLuks(dir, p);
    expect(raw.length).toBe(3 << 20);
    expect(raw.subarray(0, 1 << 20).equals(Buffer.alloc(1 << 20, 0x5a))).toBe(true);
  });
});
