/**
 * `vdisk check` against `qemu-img check` on clean images and on images damaged on purpose
 * (leaked clusters, refcounts too low, L2 entries past end of file, overlapping
 * references): the same report on stdout, the same messages on stderr, the same exit
 * status, in human and JSON form, and the same repairs with -r leaks / -r all.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir, vdisk } from '../../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-qcow2-check-'));
});
afterAll(() => cleanup());

const u64 = (b: Buffer, off: number) => Number(b.readBigUInt64BE(off));

/** Rewrite the 16-bit refcount of host cluster `index` (default 64 KiB clusters). */
function setRefcount(path: string, index: number, value: number): void {
  const b = readFileSync(path);
  const cs = 2 ** b.readUInt32BE(20);
  const reftable = u64(b, 48);
  const per = cs / 2;
  const block = u64(b, reftable + 8 * Math.floor(index / per));
  b.writeUInt16BE(value, block + 2 * (index % per));
  writeFileSync(path, b);
}

/** Point L2 entry `i` of the first L2 table at `host` (flags kept). */
function setL2(path: string, i: number, host: bigint): void {
  const b = readFileSync(path);
  const l1 = u64(b, 40);
  const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const old = b.readBigUInt64BE(l2 + 8 * i);
  b.writeBigUInt64BE((old & 0xc000000000000000n) | host, l2 + 8 * i);
  writeFileSync(path, b);
}

async function compareCheck(path: string, args: string[] = []): Promise<void> {
  // Repairs change the image: each tool works on its own copy.
  const q = `${path}.q`;
  const v = `${path}.v`;
  copyFileSync(path, q);
  copyFileSync(path, v);
  for (const out of [[], ['--output=json']]) {
    copyFileSync(path, q);
    copyFileSync(path, v);
    const qr = qemuImg(['check', ...args, ...out, q]);
    const vr = await vdisk(['check', ...args, ...out, v]);
    expect(vr.stdout).toBe(qr.stdout.replaceAll(q, v));
    expect(vr.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(qr.stderr.replaceAll(q, v));
    expect(vr.code).toBe(qr.code);
  }
}

function made(name: string, opts: string[], ops: string[]): string {
  const p = join(dir, name);
  qemuImgOk(['create', '-f', 'qcow2', ...opts, p, '64M']);
  if (ops.length > 0) qemuIo(p, ops, 'qcow2');
  return p;
}

describe('qcow2 check against qemu-img', () => {
  it('reports clean images the same way (data, compressed, snapshots, bitmaps, small clusters)', async () => {
    await compareCheck(made('empty.qcow2', [], []));
    await compareCheck(
      made(
        'mixed.qcow2',
        [],
        ['write -P 1 0 1M', 'write -P 2 8M 64k', 'write -c -P 3 16M 64k', 'write -z 20M 1M'],
      ),
    );
    const s = made('snap.qcow2', ['-o', 'cluster_size=4k'], ['write -P 1 0 256k']);
    qemuImgOk(['snapshot', '-c', 's1', s]);
    qemuIo(s, ['write -P 2 64k 64k'], 'qcow2');
    qemuImgOk(['bitmap', '--add', s, 'b0']);
    await compareCheck(s);
    await compareCheck(made('rc1.qcow2', ['-o', 'refcount_bits=1,cluster_size=512'], ['write -P 1 0 100k']));
    await compareCheck(
      made('extl2.qcow2', ['-o', 'extended_l2=on'], ['write -P 1 4k 4k', 'write -c -P 2 1M 64k']),
    );
    await compareCheck(made('v2.qcow2', ['-o', 'compat=0.10'], ['write -P 1 0 1M', 'write -c -P 2 2M 64k']));
    const df = join(dir, 'df.qcow2');
    await compareCheck(
      made('df.qcow2', ['-o', `data_file=${df}.data`], ['write -P 1 0 1M', 'write -P 2 8M 64k']),
    );
  });

  it('finds leaked clusters and repairs them with -r leaks and -r all', async () => {
    const p = made('leak.qcow2', [], ['write -P 1 0 128k']);
    // Clusters 7 and 9 lie past everything used: refcount 1 without a reference.
    const b = readFileSync(p);
    writeFileSync(p, Buffer.concat([b, Buffer.alloc(5 * 65536)]));
    setRefcount(p, 7, 1);
    setRefcount(p, 9, 2);
    await compareCheck(p);
    await compareCheck(p, ['-r', 'leaks']);
    await compareCheck(p, ['-r', 'all']);
  });

  it('finds refcounts that are too low, and repairs them with -r all', async () => {
    const p = made('low.qcow2', [], ['write -P 1 0 128k']);
    // Cluster 5 holds data (referenced once); give it refcount 2 → leak, then 0 → error.
    setRefcount(p, 5, 2);
    await compareCheck(p);
    const p2 = made('low2.qcow2', [], ['write -P 1 0 128k']);
    setRefcount(p2, 4, 0);
    await compareCheck(p2);
    // A refcount of 0 under a reference: -r all rebuilds the refcount structure.
    await compareCheck(p2, ['-r', 'all']);
    await compareCheck(p2, ['-r', 'leaks']);
  });

  it('reports L2 entries past the end of the file and overlapping references', async () => {
    const p = made('past.qcow2', [], ['write -P 1 0 128k']);
    setL2(p, 1, 0x40000000n);
    await compareCheck(p);
    const o = made('overlap.qcow2', [], ['write -P 1 0 128k']);
    // Cluster 1 of the guest points at the L1 table (host cluster 3).
    setL2(o, 1, 0x30000n);
    await compareCheck(o);
  });
});
