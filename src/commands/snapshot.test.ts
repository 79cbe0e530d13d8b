/**
 * `vdisk snapshot` against `qemu-img snapshot` (7.2): every operation runs with vdisk on one
 * copy of an image and with qemu-img on another; both copies must then pass `qemu-img check`,
 * list the same snapshots (dates aside), read the same content from each snapshot
 * (`qemu-img convert -l`) and from the active layer, and the snapshot must hold the content
 * of the moment it was taken, across later writes (copy-on-write), apply and delete.
 */
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../chain/open.js';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-snapshot-'));
});
afterAll(() => cleanup());

const p = (name: string) => join(dir, name);

/** `snapshot -l` without the DATE column (the two tools take snapshots at different instants). */
function listing(out: string): string {
  return out.replace(/ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d /g, ' <date> ');
}

/** Content of a snapshot as qemu-img reads it. */
function snapDigest(image: string, name: string): string {
  const out = join(dir, 'snap-digest.raw');
  qemuImgOk(['convert', '-U', '-l', name, '-O', 'raw', image, out]);
  return qemuRawDigest(out, 'raw');
}

/** qemu-img check must find nothing at all (no corruption, no leak). */
function expectClean(image: string): void {
  const r = qemuImg(['check', image]);
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.code).toBe(0);
}

/** The "allocated" figure of qemu-img check (guest clusters that hold data). */
function allocated(image: string): string {
  return /(\d+\/\d+) = [\d.]+% allocated/.exec(qemuImgOk(['check', image]))?.[1] ?? '';
}

function both(
  a: string,
  b: string,
  args: string[],
): Promise<[Awaited<ReturnType<typeof vdisk>>, ReturnType<typeof qemuImg>]> {
  return vdisk(['snapshot', ...args, a]).then((v) => [v, qemuImg(['snapshot', ...args, b])]);
}

async function expectSame(a: string, b: string, args: string[]): Promise<void> {
  const [v, q] = await both(a, b, args);
  expect(v.stderr).toBe(q.stderr.replaceAll('qemu-img', 'vdisk').replaceAll(b, a));
  expect(listing(v.stdout)).toBe(listing(q.stdout));
  expect(v.code).toBe(q.code);
}

/** Same writes through vdisk's write path (a) and qemu-io (b). */
async function writeBoth(a: string, b: string, writes: Array<[number, number, number]>): Promise<void> {
  const img = await openImage(a, { writable: true, backing: 'follow' });
  try {
    for (const [pattern, off, len] of writes) await img.writeAt(Buffer.alloc(len, pattern), off);
    await img.flush();
  } finally {
    await img.close();
  }
  qemuIo(
    b,
    writes.map(([pattern, off, len]) => `write -P ${pattern} ${off} ${len}`),
  );
}

const variants: Array<{ name: string; opts: string; size: string }> = [
  { name: 'default', opts: '', size: '8M' },
  { name: 'v2 (compat=0.10)', opts: 'compat=0.10', size: '8M' },
  { name: 'extended L2', opts: 'extended_l2=on,cluster_size=128k', size: '8M' },
  { name: 'refcount_bits=64, 512-byte clusters', opts: 'refcount_bits=64,cluster_size=512', size: '2M' },
  { name: 'refcount_bits=4, zstd', opts: 'refcount_bits=4,compression_type=zstd', size: '8M' },
  { name: 'lazy_refcounts', opts: 'lazy_refcounts=on', size: '8M' },
];

describe('vdisk snapshot vs qemu-img snapshot', () => {
  for (const [i, v] of variants.entries()) {
    it(`create, copy-on-write, apply, delete: ${v.name}`, async () => {
      const a = p(`a${i}.qcow2`);
      const b = p(`b${i}.qcow2`);
      qemuImgOk(['create', '-f', 'qcow2', ...(v.opts ? ['-o', v.opts] : []), a, v.size]);
      qemuIo(a, ['write -P 1 0 1M', 'write -P 2 1536k 100k', 'write -c -P 3 1M 128k', 'write -z 1100k 64k']);
      copyFileSync(a, b);
      const before = qemuRawDigest(a);

      await expectSame(a, b, ['-c', 's1']);
      expectClean(a);
      await expectSame(a, b, ['-l']);
      expect(snapDigest(a, 's1')).toBe(before);
      expect(snapDigest(b, 's1')).toBe(before);

      // Writes after the snapshot: copy-on-write through vdisk's writer and qemu's.
      await writeBoth(a, b, [
        [7, 0, 4096],
        [8, 1024 * 1024 + 512, 8192],
        [9, 1600 * 1024, 4096],
      ]);
      expectClean(a);
      expect(snapDigest(a, 's1')).toBe(before);
      const after = qemuRawDigest(a);
      expect(qemuRawDigest(b)).toBe(after);
      expect(after).not.toBe(before);

      await expectSame(a, b, ['-c', 's2']);
      expectClean(a);
      await expectSame(a, b, ['-l']);
      expect(snapDigest(a, 's2')).toBe(after);

      // Apply: the active content becomes the snapshot's again.
      await expectSame(a, b, ['-a', 's1']);
      expectClean(a);
      expect(qemuRawDigest(a)).toBe(before);
      expect(qemuRawDigest(b)).toBe(before);
      // Writes after apply must not leak into either snapshot.
      await writeBoth(a, b, [[5, 0, 65536]]);
      expectClean(a);
      expect(snapDigest(a, 's1')).toBe(before);
      expect(snapDigest(a, 's2')).toBe(after);

      // -d finds by name only (an id is not found); the space goes back, nothing leaks.
      await expectSame(a, b, ['-d', '1']);
      await expectSame(a, b, ['-d', 's1']);
      expectClean(a);
      await expectSame(a, b, ['-l']);
      expect(snapDigest(a, 's2')).toBe(after);
      await expectSame(a, b, ['-d', 's2']);
      expectClean(a);
      await expectSame(a, b, ['-l']);
      expect(qemuRawDigest(a)).toBe(qemuRawDigest(b));
      expect(allocated(a)).toBe(allocated(b));
      // The active layer can be written in place again (COPIED flags back).
      await writeBoth(a, b, [[6, 4096, 4096]]);
      expectClean(a);
      expect(qemuRawDigest(a)).toBe(qemuRawDigest(b));
      expect(allocated(a)).toBe(allocated(b));
    });
  }

  it('delete and apply give the freed space back to the host, as qemu-img does', async () => {
    // qemu-img discards what a snapshot operation frees (pass-discard-snapshot is on by
    // default): the file's blocks go, not only the refcounts. vdisk's transaction also
    // moves the refcount table and blocks it touches (snapshot-write.ts): a few clusters.
    const cs = 65536;
    const hostBytes = (f: string) => statSync(f).blocks * 512;
    const a = p('space-a.qcow2');
    const b = p('space-b.qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', a, '64M']);
    qemuIo(a, ['write -P 1 0 16M']);
    qemuImgOk(['snapshot', '-c', 's1', a]);
    qemuIo(a, ['write -P 2 0 16M']);
    const start = join(dir, 'space-start.qcow2');
    copyFileSync(a, start);
    // Delete: the snapshot's own clusters go; apply: the active layer's own clusters go.
    for (const op of ['-d', '-a']) {
      copyFileSync(start, a);
      copyFileSync(start, b);
      await expectSame(a, b, [op, 's1']);
      expectClean(a);
      expect(hostBytes(b)).toBeLessThan(hostBytes(start) - 15 * 1024 * 1024);
      expect(Math.abs(hostBytes(a) - hostBytes(b))).toBeLessThanOrEqual(4 * cs);
      expect(qemuRawDigest(a)).toBe(qemuRawDigest(b));
    }
  });

  it('snapshots made by one tool are applied and deleted by the other', async () => {
    const a = p('x-a.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', a, '8M']);
    qemuIo(a, ['write -P 1 0 2M']);
    const first = qemuRawDigest(a);
    expect((await vdisk(['snapshot', '-c', 'v', a])).code).toBe(0);
    qemuIo(a, ['write -P 2 64k 1M']);
    const second = qemuRawDigest(a);
    qemuImgOk(['snapshot', '-c', 'q', a]);
    qemuIo(a, ['write -P 3 0 4M']);
    qemuImgOk(['snapshot', '-a', 'v', a]);
    expectClean(a);
    expect(qemuRawDigest(a)).toBe(first);
    expect((await vdisk(['snapshot', '-a', 'q', a])).code).toBe(0);
    expectClean(a);
    expect(qemuRawDigest(a)).toBe(second);
    qemuImgOk(['snapshot', '-d', 'v', a]);
    expectClean(a);
    expect((await vdisk(['snapshot', '-d', 'q', a])).code).toBe(0);
    expectClean(a);
    expect(qemuRawDigest(a)).toBe(second);
    expect(qemuImgOk(['snapshot', '-l', a])).toBe('');
  });

  it('a snapshot table that points outside the file: one-line error, image untouched', async () => {
    const a = p('bad.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', a, '1M']);
    qemuIo(a, ['write -P 1 0 64k']);
    qemuImgOk(['snapshot', '-c', 's', a]);
    // Point the snapshot's L1 table far past the end of the file.
    const buf = readFileSync(a);
    const table = Number(buf.readBigUInt64BE(64));
    buf.writeBigUInt64BE(0x7000000000n, table);
    writeFileSync(a, buf);
    for (const args of [
      ['-d', 's'],
      ['-a', 's'],
    ]) {
      const r = await vdisk(['snapshot', ...args, a]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^vdisk: Could not (delete|apply) snapshot 's': .*invalid.*\n$/);
      expect(readFileSync(a).equals(buf)).toBe(true);
    }
  });

  it('snapshots of an overlay read through its backing file', async () => {
    const base = p('base.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', base, '4M']);
    qemuIo(base, ['write -P 11 0 4M']);
    const a = p('ova.qcow2');
    const b = p('ovb.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', a]);
    qemuIo(a, ['write -P 12 64k 64k']);
    copyFileSync(a, b);
    const before = qemuRawDigest(a);
    await expectSame(a, b, ['-c', 'snap']);
    expectClean(a);
    await writeBoth(a, b, [[13, 0, 200000]]);
    expect(snapDigest(a, 'snap')).toBe(before);
    expect(qemuRawDigest(a)).toBe(qemuRawDigest(b));
    await expectSame(a, b, ['-a', 'snap']);
    expect(qemuRawDigest(a)).toBe(before);
    expectClean(a);
    await expectSame(a, b, ['-d', 'snap']);
    expectClean(a);
  });

  it('apply restores the virtual size the snapshot had', async () => {
    const a = p('size-a.qcow2');
    const b = p('size-b.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', a, '1M']);
    qemuIo(a, ['write -P 1 0 64k']);
    copyFileSync(a, b);
    const before = qemuRawDigest(a);
    await expectSame(a, b, ['-c', 'small']);
    for (const img of [a, b]) {
      qemuImgOk(['resize', img, '600M']);
      qemuIo(img, ['write -P 2 590M 64k', 'write -P 3 0 4k']);
    }
    await expectSame(a, b, ['-a', 'small']);
    expectClean(a);
    const info = (f: string) => JSON.parse(qemuImgOk(['info', '--output=json', f]))['virtual-size'];
    expect(info(a)).toBe(1024 * 1024);
    expect(info(a)).toBe(info(b));
    expect(qemuRawDigest(a)).toBe(before);
    // And the other way: a snapshot of the big image applied on the small one.
    await expectSame(a, b, ['-d', 'small']);
    expectClean(a);
  });

  it('empty images, duplicate names and ids as qemu-img picks them', async () => {
    const a = p('empty-a.qcow2');
    const b = p('empty-b.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', a, '1M']);
    copyFileSync(a, b);
    // qemu-img 7.2 accepts a name that exists already (the id is what is unique).
    await expectSame(a, b, ['-c', 'x']);
    await expectSame(a, b, ['-c', 'x']);
    await expectSame(a, b, ['-c', '1']);
    await expectSame(a, b, ['-l']);
    await expectSame(a, b, ['-q', '-l']);
    expectClean(a);
    // -d finds by name: '1' is the snapshot named 1 (id 3), not id 1.
    await expectSame(a, b, ['-d', '1']);
    await expectSame(a, b, ['-l']);
    await expectSame(a, b, ['-c', 'y']);
    await expectSame(a, b, ['-l']);
    // -a finds by id first.
    await expectSame(a, b, ['-a', '1']);
    await expectSame(a, b, ['-d', 'x']);
    await expectSame(a, b, ['-d', 'x']);
    await expectSame(a, b, ['-d', 'y']);
    await expectSame(a, b, ['-l']);
    expectClean(a);
    // Empty snapshot tables are laid out as QEMU lays them out.
    const raw = (f: string) => qemuImgOk(['check', f]).replace(/\d+\.\d+% fragmented/, '');
    expect(raw(a)).toContain('No errors');
  });

  it('refcount_bits=1: snapshots of empty images only, as qemu-img', async () => {
    const a = p('rc1-a.qcow2');
    const b = p('rc1-b.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-o', 'refcount_bits=1', a, '1M']);
    copyFileSync(a, b);
    await expectSame(a, b, ['-c', 'empty']);
    expectClean(a);
    qemuIo(a, ['write -P 1 0 64k']);
    qemuIo(b, ['write -P 1 0 64k']);
    const before = qemuRawDigest(a);
    await expectSame(a, b, ['-c', 'full']);
    // qemu-img leaks a cluster on this failure; vdisk leaves the image untouched.
    expectClean(a);
    expect(qemuRawDigest(a)).toBe(before);
    await expectSame(a, b, ['-l']);
  });

  it('errors: unknown snapshot, read-only, wrong usage, formats without snapshots', async () => {
    const a = p('err-a.qcow2');
    const b = p('err-b.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', a, '1M']);
    copyFileSync(a, b);
    await expectSame(a, b, ['-a', 'nope']);
    await expectSame(a, b, ['-d', 'nope']);
    await expectSame(a, b, ['-U', '-c', 'x']);
    await expectSame(a, b, ['-U', '-l']);
    await expectSame(a, b, ['-l', '-c', 'x']);
    await expectSame(a, b, ['-c']);
    await expectSame(a, b, ['-f', 'qcow2', '-l']);
    await expectSame(a, b, []);
    const v = await vdisk(['snapshot', '-l', a, b]);
    const q = qemuImg(['snapshot', '-l', a, b]);
    expect(v.stderr).toBe(q.stderr.replaceAll('qemu-img', 'vdisk'));
    expect(v.code).toBe(q.code);
    const missing = await vdisk(['snapshot', '-l', p('missing.qcow2')]);
    expect(missing.stderr).toBe(
      qemuImg(['snapshot', '-l', p('missing.qcow2')]).stderr.replaceAll('qemu-img', 'vdisk'),
    );
    expect(missing.code).toBe(1);
    const ra = p('r-a.raw');
    const rb = p('r-b.raw');
    writeFileSync(ra, Buffer.alloc(1 << 20));
    writeFileSync(rb, Buffer.alloc(1 << 20));
    for (const args of [['-l'], ['-c', 'x'], ['-a', 'x'], ['-d', 'x']]) await expectSame(ra, rb, args);
    const ma = p('m-a.vmdk');
    const mb = p('m-b.vmdk');
    qemuImgOk(['create', '-f', 'vmdk', ma, '1M']);
    qemuImgOk(['create', '-f', 'vmdk', mb, '1M']);
    for (const args of [['-l'], ['-c', 'x'], ['-a', 'x'], ['-d', 'x']]) await expectSame(ma, mb, args);
    // External data files: no internal snapshots (qemu-img refuses -c and -a).
    const da = p('df-a.qcow2');
    const db = p('df-b.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-o', `data_file=${p('df-a.raw')}`, da, '1M']);
    qemuImgOk(['create', '-f', 'qcow2', '-o', `data_file=${p('df-b.raw')}`, db, '1M']);
    for (const args of [['-l'], ['-c', 'x'], ['-a', 'x'], ['-d', 'x']]) await expectSame(da, db, args);
    const help = await vdisk(['snapshot', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot');
  });
});
