import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openImage } from '../../chain/open.js';
import { runDeviceConformance } from '../../test/conformance.js';
import {
  qemuImg,
  qemuImgOk,
  qemuIo,
  qemuRawDigest,
  sha256,
  TSX_LOADER,
  tempDir,
  vdisk,
} from '../../test/oracle.js';

runDeviceConformance({
  format: 'qed',
  label: 'qed (made by qemu-img)',
  checkable: true,
  create: async (path, size) => void qemuImgOk(['create', '-f', 'qed', path, String(size)]),
});
runDeviceConformance({
  format: 'qed',
  label: 'qed cluster_size=4k table_size=2 (made by vdisk)',
  checkable: true,
  create: async (path, size) => {
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'qed',
      '-o',
      'cluster_size=4k,table_size=2',
      path,
      String(size),
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

async function vdiskDigest(path: string): Promise<string> {
  const img = await openImage(path, { backing: 'follow' });
  const buf = Buffer.alloc(img.size);
  await img.readAt(buf, 0);
  await img.close();
  return sha256(buf);
}

describe('qed against qemu-img', () => {
  it('reads what qemu-io wrote, byte for byte, for several geometries', async () => {
    // qemu 7.2 cannot open its own table_size=1 images ("QED table offset is invalid").
    for (const opts of [
      'cluster_size=4k,table_size=2',
      'cluster_size=64k',
      'cluster_size=1M,table_size=16',
    ]) {
      const p = join(dir, `g-${opts}.qed`);
      qemuImgOk(['create', '-f', 'qed', '-o', opts, p, '24M']);
      qemuIo(
        p,
        [
          'write -P 0x11 0 5k',
          'write -P 0x22 1M 3M',
          'write -z 2M 1M',
          'write -P 0x33 23M 512',
          'write -z 20M 2M',
        ],
        'qed',
      );
      expect(await vdiskDigest(p)).toBe(qemuRawDigest(p));
    }
  });

  it('reads overlays through raw and qed backing files, zero clusters hiding the backing', async () => {
    const base = join(dir, 'base.raw');
    writeFileSync(base, randomBytes(6 << 20));
    const mid = join(dir, 'mid.qed');
    qemuImgOk(['create', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', mid, '8M']);
    qemuIo(mid, ['write -P 0x44 100k 200k', 'write -z 1M 64k'], 'qed');
    const top = join(dir, 'top.qed');
    qemuImgOk(['create', '-f', 'qed', '-b', 'mid.qed', '-F', 'qed', top]);
    qemuIo(top, ['write -P 0x55 5M 10k'], 'qed');
    expect(await vdiskDigest(top)).toBe(qemuRawDigest(top));
    const map = JSON.parse(qemuImgOk(['map', '--output=json', top])) as Array<Record<string, unknown>>;
    const img = await openImage(top, { backing: 'follow' });
    for (const e of map) {
      const st = await img.blockStatus(e['start'] as number, e['length'] as number);
      expect({ depth: st.depth, zero: st.zero, data: st.data }).toEqual({
        depth: e['depth'],
        zero: e['zero'],
        data: e['data'],
      });
    }
    await img.close();
  });

  it('creates the same file, Formatting line and info as qemu-img', async () => {
    writeFileSync(join(dir, 'b.raw'), Buffer.alloc(1 << 20));
    const cases: Array<[string[], string[]]> = [
      [['-o', 'cluster_size=4k,table_size=2'], ['100M']],
      [[], ['1G']],
      [['-b', 'b.raw', '-F', 'raw'], ['3M']],
      [['-o', 'cluster_size=1M', '-b', 'b.raw', '-F', 'raw'], []],
    ];
    for (const [opts, size] of cases) {
      const q = qemuImgOk(['create', '-f', 'qed', ...opts, 'q.qed', ...size], dir);
      const v = await vdisk(['create', '-f', 'qed', ...opts, 'v.qed', ...size], dir);
      expect(v.stderr).toBe('');
      expect(v.stdout).toBe(q.replace("'q.qed'", "'v.qed'"));
      expect(readFileSync(join(dir, 'v.qed')).equals(readFileSync(join(dir, 'q.qed')))).toBe(true);
      for (const extra of [[], ['--output=json'], ['--backing-chain']]) {
        const qi = qemuImgOk(['info', ...extra, 'q.qed'], dir);
        const vi = await vdisk(['info', ...extra, 'v.qed'], dir);
        expect(vi.stdout).toBe(qi.replaceAll('q.qed', 'v.qed'));
      }
    }
  });

  it('writes images that qemu-img checks clean and compares equal, through a backing chain', async () => {
    const base = join(dir, 'base.raw');
    const content = randomBytes(4 << 20);
    writeFileSync(base, content);
    const top = join(dir, 'top.qed');
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'qed',
      '-o',
      'cluster_size=4k',
      '-b',
      'base.raw',
      '-F',
      'raw',
      top,
    ]);
    expect(r.code).toBe(0);
    const img = await openImage(top, { writable: true, backing: 'follow' });
    const model = Buffer.from(content);
    for (const [off, len] of [
      [100, 10],
      [4096 * 3 + 7, 9000],
      [1 << 20, 1 << 20],
      [(4 << 20) - 3, 3],
    ] as const) {
      const d = randomBytes(len);
      d.copy(model, off);
      await img.writeAt(d, off);
    }
    await img.writeZeroes(2 << 20, 8192);
    model.fill(0, 2 << 20, (2 << 20) + 8192);
    await img.close();
    writeFileSync(join(dir, 'model.raw'), model);
    expect(qemuImg(['check', top]).code).toBe(0);
    expect(qemuImg(['compare', '-F', 'raw', top, join(dir, 'model.raw')]).stdout).toBe(
      'Images are identical.\n',
    );
  });
});

describe('qed check and repair', () => {
  function damage(path: string): void {
    // Point cluster 1 at cluster 0's data (a double reference, leaking the old cluster) and
    // cluster 2 past the end of the file.
    const fd = openSync(path, 'r+');
    const b = Buffer.alloc(16);
    readSync(fd, b, 0, 8, 65536);
    const l2 = Number(b.readBigUInt64LE(0));
    readSync(fd, b, 0, 16, l2);
    const e0 = b.readBigUInt64LE(0);
    b.writeBigUInt64LE(e0, 0);
    writeSync(fd, b, 0, 8, l2 + 8);
    b.writeBigUInt64LE(BigInt(1_000_013_824), 0);
    writeSync(fd, b, 0, 8, l2 + 16);
    closeSync(fd);
  }

  it('counts corruptions, leaks and fragmentation as qemu-img does, and repairs the same', async () => {
    const p = join(dir, 'c.qed');
    qemuImgOk(['create', '-f', 'qed', p, '10M']);
    qemuIo(p, ['write -P 1 0 192k'], 'qed');
    damage(p);
    writeFileSync(p, Buffer.alloc(131072), { flag: 'a' });
    const q = JSON.parse(qemuImg(['check', '--output=json', p]).stdout) as Record<string, number>;
    const img = await openImage(p, { format: 'qed' });
    const r = await img.driver.check!('none');
    await img.close();
    expect({
      corruptions: r.corruptions,
      leaks: r.leaks,
      allocated: r.allocatedClusters,
      total: r.totalClusters,
      fragmented: r.fragmentedClusters,
    }).toEqual({
      corruptions: q['corruptions'],
      leaks: q['leaks'],
      allocated: q['allocated-clusters'],
      total: q['total-clusters'],
      fragmented: q['fragmented-clusters'],
    });
    const copy = join(dir, 'c2.qed');
    writeFileSync(copy, readFileSync(p));
    qemuImg(['check', '-r', 'all', copy]);
    // A writable open of a damaged image without NEED_CHECK does not check; repair explicitly.
    const fixable = await openImage(p, { format: 'qed', writable: true });
    const fixed = await fixable.driver.check!('all');
    expect(fixed.corruptionsFixed).toBe(1);
    await fixable.close();
    const after = JSON.parse(qemuImg(['check', '--output=json', p]).stdout) as Record<string, number>;
    const qemuAfter = JSON.parse(qemuImg(['check', '--output=json', copy]).stdout) as Record<string, number>;
    expect(after['corruptions']).toBe(qemuAfter['corruptions']);
    expect(after['allocated-clusters']).toBe(qemuAfter['allocated-clusters']);
  });

  it('clears NEED_CHECK left by a killed writer when opened for writing', async () => {
    const p = join(dir, 'n.qed');
    qemuImgOk(['create', '-f', 'qed', p, '1M']);
    const fd = openSync(p, 'r+');
    const b = Buffer.alloc(4);
    b.writeUInt32LE(2);
    writeSync(fd, b, 0, 4, 16);
    closeSync(fd);
    const ro = await openImage(p, { format: 'qed' });
    expect(ro.driver.dirty).toBe(true);
    await ro.close();
    const rw = await openImage(p, { format: 'qed', writable: true });
    expect(rw.driver.dirty).toBe(false);
    await rw.close();
    expect(readFileSync(p).readUInt32LE(16)).toBe(0);
  });

  it('survives SIGKILL at random moments during allocating writes with at most leaks', async () => {
    const p = join(dir, 'k.qed');
    qemuImgOk(['create', '-f', 'qed', '-o', 'cluster_size=4k', p, '64M']);
    const script = `
      import { openImage } from '${join(process.cwd(), 'src/chain/open.ts')}';
      const img = await openImage(process.argv[2], { format: 'qed', writable: true });
      process.stdout.write('ready\\n');
      for (let i = 0; ; i++) {
        const off = ((i * 7919) % 16000) * 4096 + (i % 3) * 512;
        await img.writeAt(Buffer.alloc(12288, i & 255), off);
      }
    `;
    const scriptPath = join(dir, 'writer.mts');
    writeFileSync(scriptPath, script);
    for (let round = 0; round < 4; round++) {
      const child = spawn(process.execPath, ['--import', TSX_LOADER, scriptPath, p], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 300));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const c = qemuImg(['check', p]);
      expect([0, 3]).toContain(c.code);
    }
  });
});

describe('qed hostile input', () => {
  const cases: Array<[string, (b: Buffer) => void, string]> = [
    ['bad cluster size', (b) => b.writeUInt32LE(1000, 4), 'cluster size'],
    ['bad table size', (b) => b.writeUInt32LE(3, 8), 'table size'],
    ['unknown feature', (b) => b.writeUInt32LE(0x100, 16), 'Unsupported QED features'],
    ['L1 past the end of file', (b) => b.writeBigUInt64LE(1n << 40n, 40), 'past the end'],
    [
      'backing name outside the header',
      (b) => {
        b.writeUInt32LE(1, 16);
        b.writeUInt32LE(65000, 56);
        b.writeUInt32LE(1000, 60);
      },
      'backing file name',
    ],
  ];
  it.each([
    ['not whole sectors', 1000n],
    ['beyond what its tables map', 1n << 50n],
  ])("an image size %s: qemu-img's message", async (_name, size) => {
    const p = join(dir, 'h.qed');
    qemuImgOk(['create', '-f', 'qed', p, '10M']);
    const b = readFileSync(p);
    b.writeBigUInt64LE(size, 48);
    writeFileSync(p, b);
    const q = qemuImg(['info', p]);
    const v = await vdisk(['info', p]);
    expect(v.code).toBe(q.code);
    expect(v.stderr.replace('vdisk:', 'qemu-img:')).toBe(q.stderr);
  });

  it.each(cases)('%s → one-line error', async (_name, edit, message) => {
    const p = join(dir, 'h.qed');
    qemuImgOk(['create', '-f', 'qed', p, '10M']);
    const b = readFileSync(p);
    edit(b);
    writeFileSync(p, b);
    const r = await vdisk(['info', p]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('refuses an L2 entry pointing past the end of file when reading', async () => {
    const p = join(dir, 'l2.qed');
    qemuImgOk(['create', '-f', 'qed', p, '10M']);
    qemuIo(p, ['write 0 64k'], 'qed');
    const b = readFileSync(p);
    const l2 = Number(b.readBigUInt64LE(65536));
    b.writeBigUInt64LE(1n << 45n, l2);
    writeFileSync(p, b);
    const img = await openImage(p, { format: 'qed' });
    await expect(img.readAt(Buffer.alloc(512), 0)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close();
  });
});
