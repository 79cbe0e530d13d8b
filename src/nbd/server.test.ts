/**
 * vdisk's NBD server against the real clients, beside the real qemu-nbd serving the same
 * image: qemu-img (info, map, convert, compare), qemu-io (writes), nbdinfo (--map on both
 * metadata contexts) and nbdcopy (multi-conn). What the clients print through vdisk must be
 * what they print through qemu-nbd.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, execOk, type Served, serveQemu, serveVdisk } from '../test/nbd-helpers.js';
import { qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';

const MiB = 1 << 20;
let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);
let sockets = 0;
const sock = () => p(`s${sockets++}.sock`);

/** Serve `image` with both servers (same options), run `fn` on each URI, stop both. */
async function both<T>(
  image: string,
  o: { readOnly?: boolean; allocationDepth?: boolean; name?: string; shared?: number; format?: string },
  fn: (uri: string, who: 'qemu' | 'vdisk') => Promise<T>,
): Promise<{ qemu: T; vdisk: T }> {
  const args = [
    ...(o.readOnly ? ['-r'] : []),
    ...(o.allocationDepth ? ['-A'] : []),
    ...(o.shared !== undefined ? ['-e', String(o.shared)] : []),
    ...(o.format !== undefined ? ['-f', o.format] : []),
  ];
  let q: Served | undefined;
  let v: Served | undefined;
  try {
    q = await serveQemu(image, sock(), args, o.name);
    const qemu = await fn(q.uri, 'qemu');
    await q.stop();
    q = undefined;
    v = await serveVdisk(image, sock(), o);
    const vdisk = await fn(v.uri, 'vdisk');
    return { qemu, vdisk };
  } finally {
    await q?.stop();
    await v?.stop();
  }
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-nbd-'));
  // A chain whose backing files are shorter than the top: base.raw (32 MiB, data at 0 and a
  // hole after), mid.qcow2 (48 MiB: data, a zero cluster past base's end), top.qcow2 (64 MiB).
  const raw = Buffer.alloc(32 * MiB);
  raw.fill(0x11, 0, MiB);
  raw.fill(0x12, 20 * MiB, 21 * MiB);
  writeFileSync(p('base.raw'), raw);
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', p('mid.qcow2'), `${48 * MiB}`]);
  qemuIo(p('mid.qcow2'), ['write -P 0x21 2M 1M', 'write -z 40M 1M', 'write -P 0x22 44M 64k'], 'qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2'), `${64 * MiB}`]);
  qemuIo(
    p('top.qcow2'),
    ['write -P 0x31 512k 1M', 'write -z 20M 512k', 'write -P 0x32 50M 3M', 'write -P 0x33 63M 4k'],
    'qcow2',
  );
  // A standalone qcow2 with data, zero clusters and unallocated space.
  qemuImgOk(['create', '-q', '-f', 'qcow2', p('a.qcow2'), `${32 * MiB}`]);
  qemuIo(
    p('a.qcow2'),
    ['write -P 0x41 0 3M', 'write -z 4M 2M', 'write -P 0x42 10M 100k', 'write -P 0 16M 1M'],
    'qcow2',
  );
  qemuImgOk(['convert', '-O', 'raw', p('a.qcow2'), p('a.raw')]);
});
afterAll(() => cleanup?.());

describe('vdisk nbd beside qemu-nbd, same image, same clients', () => {
  it('nbdinfo and qemu-img info see the same export', async () => {
    const r = await both(
      p('top.qcow2'),
      { readOnly: true, allocationDepth: true, name: 'top' },
      async (uri) => {
        const info = JSON.parse(await execOk('nbdinfo', ['--json', uri])) as {
          exports: Record<string, unknown>[];
        };
        delete info.exports[0]!['uri'];
        const img = await execOk('qemu-img', ['info', '--output=json', uri]);
        return { info, img: JSON.parse(img.replaceAll(uri, 'URI')) as unknown };
      },
    );
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.info.exports[0]!['contexts']).toEqual(['base:allocation', 'qemu:allocation-depth']);
  });

  it('writable and shared exports advertise what qemu-nbd advertises', async () => {
    for (const o of [{}, { shared: 2 }, { readOnly: true, shared: 3 }, { shared: 0 }]) {
      const r = await both(p('a.raw'), { ...o, format: 'raw' }, async (uri) => {
        const info = JSON.parse(await execOk('nbdinfo', ['--json', uri])) as {
          exports: Record<string, unknown>[];
        };
        delete info.exports[0]!['uri'];
        return info;
      });
      expect(r.vdisk, JSON.stringify(o)).toEqual(r.qemu);
    }
  });

  it('qemu-img map over NBD gives the same map (a chain with short backing files)', async () => {
    for (const image of ['top.qcow2', 'mid.qcow2', 'a.qcow2', 'a.raw']) {
      const r = await both(p(image), { readOnly: true }, (uri) =>
        execOk('qemu-img', ['map', '--output=json', '-f', 'raw', uri]).then((s) => s.replaceAll(uri, 'URI')),
      );
      expect(r.vdisk, image).toBe(r.qemu);
    }
  });

  it('qemu-img map over NBD says what vdisk map says of the file (data and zeros, byte for byte)', async () => {
    type E = { start: number; length: number; data: boolean; zero: boolean };
    // Ranges by (data, zero) only: the file's map also has depths and host offsets.
    const flat = (json: string): E[] => {
      const out: E[] = [];
      for (const e of JSON.parse(json) as E[]) {
        const last = out[out.length - 1];
        if (last !== undefined && last.data === e.data && last.zero === e.zero) last.length += e.length;
        else out.push({ start: e.start, length: e.length, data: e.data, zero: e.zero });
      }
      return out;
    };
    for (const image of ['top.qcow2', 'mid.qcow2', 'a.qcow2', 'a.raw']) {
      const file = await vdisk(['map', '--output=json', p(image)]);
      expect(file.code).toBe(0);
      const v = await serveVdisk(p(image), sock(), { readOnly: true });
      try {
        const nbd = await execOk('qemu-img', ['map', '--output=json', '-f', 'raw', v.uri]);
        expect(flat(nbd), image).toEqual(flat(file.stdout));
      } finally {
        await v.stop();
      }
    }
  });

  it('nbdinfo --map gives the same base:allocation and qemu:allocation-depth extents (-A)', async () => {
    for (const image of ['top.qcow2', 'mid.qcow2', 'a.qcow2']) {
      const r = await both(p(image), { readOnly: true, allocationDepth: true }, async (uri) => ({
        base: await execOk('nbdinfo', ['--map', uri]),
        depth: await execOk('nbdinfo', ['--map=qemu:allocation-depth', uri]),
        total: await execOk('nbdinfo', ['--map', '--totals', uri]),
      }));
      expect(r.vdisk, image).toEqual(r.qemu);
    }
    // The chain's depths: top data at 1, mid at 2, base at 3 (a raw file allocates everything);
    // past mid's end (48 MiB) the range counts at mid's depth, as QEMU synthesizes it there.
    const { vdisk } = await both(p('top.qcow2'), { readOnly: true, allocationDepth: true }, (uri) =>
      execOk('nbdinfo', ['--map=qemu:allocation-depth', uri]),
    );
    expect(vdisk).toMatch(/^\s+524288\s+1048576\s+1\s+local$/m);
    expect(vdisk).toMatch(/^\s+2097152\s+1048576\s+2\s+backing depth 2$/m);
    expect(vdisk).toMatch(/^\s+0\s+524288\s+3\s+backing depth 3$/m);
    expect(vdisk).toMatch(/^\s+50331648\s+2097152\s+2\s+backing depth 2$/m);
    // A standalone image: 0 (absent) where nothing is allocated.
    const a = await both(p('a.qcow2'), { readOnly: true, allocationDepth: true }, (uri) =>
      execOk('nbdinfo', ['--map=qemu:allocation-depth', uri]),
    );
    expect(a.vdisk).toMatch(/\b0\s+absent/);
  });

  it('qemu-img convert from the export copies the image, qemu-img compare agrees', async () => {
    const v = await serveVdisk(p('top.qcow2'), sock(), { readOnly: true });
    const q = await serveQemu(p('top.qcow2'), sock(), ['-r']);
    try {
      await execOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', v.uri, p('conv.qcow2')]);
      expect(await execOk('qemu-img', ['compare', p('conv.qcow2'), p('top.qcow2')])).toContain('identical');
      expect(await execOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', v.uri, q.uri])).toContain(
        'identical',
      );
      // A difference is found and located as through qemu-nbd.
      const diff = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', v.uri, p('a.raw')]);
      const diffQ = await exec('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', q.uri, p('a.raw')]);
      expect(diff.code).toBe(1);
      expect(diff.stdout).toBe(diffQ.stdout);
    } finally {
      await v.stop();
      await q.stop();
    }
  });

  it('qemu-io writes through vdisk leave the image qemu-nbd leaves', async () => {
    const cmds = [
      'write -P 0xab 0 64k',
      'write -P 0xcd 1000 3000',
      'write -z 1M 2M',
      'write -z -u 4M 1M',
      'discard 64k 64k',
      'write -P 7 15M 1M',
      'read -P 7 15M 1M',
      'write -f -P 3 9M 4k',
      // Two writes in flight at once, side by side: overlapping ones would race (NBD lets a
      // server complete them in any order, and both qemu-nbd and vdisk do; which one wins
      // the same bytes is then chance, not behaviour).
      'aio_write -P 9 8M 64k',
      'aio_write -P 10 8256k 64k',
      'aio_flush',
      'write -z -u -f 24M 8M',
      'flush',
    ];
    for (const fmt of ['qcow2', 'raw']) {
      copyFileSync(p(`a.${fmt}`), p(`wq.${fmt}`));
      copyFileSync(p(`a.${fmt}`), p(`wv.${fmt}`));
      const q = await serveQemu(p(`wq.${fmt}`), sock(), ['-f', fmt]);
      const outQ = await execOk('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), q.uri]);
      await q.stop();
      const v = await serveVdisk(p(`wv.${fmt}`), sock(), { format: fmt });
      const outV = await execOk('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), v.uri]);
      await v.stop();
      // The two aio_writes complete in either order (on both servers): compare the sets.
      const ops = (s: string) =>
        s
          .split('\n')
          .filter((l) => /^(wrote|read|discard)/.test(l))
          .sort();
      expect(ops(outV)).toEqual(ops(outQ));
      expect(qemuImgOk(['compare', p(`wq.${fmt}`), p(`wv.${fmt}`)])).toContain('identical');
      expect(qemuImgOk(['map', '--output=json', p(`wv.${fmt}`)]).replaceAll('wv.', 'w.')).toBe(
        qemuImgOk(['map', '--output=json', p(`wq.${fmt}`)]).replaceAll('wq.', 'w.'),
      );
      if (fmt === 'qcow2') expect(qemuImgOk(['check', p('wv.qcow2')])).toContain('No errors');
    }
  });

  it('a read-only export cannot be opened for writing, as with qemu-nbd', async () => {
    const r = await both(p('a.qcow2'), { readOnly: true }, async (uri) => {
      const w = await exec('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', uri]);
      const ro = await exec('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x41 0 4k', uri]);
      return { w: w.stdout + w.stderr.replaceAll(uri, 'URI'), code: w.code, ro: ro.code };
    });
    expect(r.vdisk.w).toContain('Permission denied');
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.ro).toBe(0);
  });

  it('nbdcopy copies out over several connections (multi-conn) and in', async () => {
    const v = await serveVdisk(p('top.qcow2'), sock(), { readOnly: true, shared: 8 });
    try {
      await execOk('nbdcopy', ['--connections=4', '--requests=64', v.uri, p('copy.raw')]);
      expect(qemuImgOk(['compare', '-f', 'raw', p('copy.raw'), p('top.qcow2')])).toContain('identical');
      // Four connections at once: more than one client served.
      expect(readFileSync(p('copy.raw')).length).toBe(64 * MiB);
    } finally {
      await v.stop();
    }
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('dst.qcow2'), `${64 * MiB}`]);
    const w = await serveVdisk(p('dst.qcow2'), sock(), { shared: 4 });
    try {
      await execOk('nbdcopy', ['--connections=4', '--flush', p('copy.raw'), w.uri]);
    } finally {
      await w.stop();
    }
    expect(qemuImgOk(['compare', p('dst.qcow2'), p('top.qcow2')])).toContain('identical');
    expect(qemuImgOk(['check', p('dst.qcow2')])).toContain('No errors');
  });

  it('qemu-img convert into a writable export (fast zero requests included)', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('cv.qcow2'), `${64 * MiB}`]);
    qemuIo(p('cv.qcow2'), ['write -P 0x77 0 64M'], 'qcow2');
    const v = await serveVdisk(p('cv.qcow2'), sock(), {});
    try {
      await execOk('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', p('top.qcow2'), v.uri]);
    } finally {
      await v.stop();
    }
    expect(qemuImgOk(['compare', p('cv.qcow2'), p('top.qcow2')])).toContain('identical');
  });

  it('serves an export in the TCP sense too: nbd:// URIs with a name and a description', async () => {
    const { NbdServer } = await import('./server.js');
    const { NbdExport } = await import('./export.js');
    const { openImage } = await import('../chain/open.js');
    const img = await openImage(p('a.qcow2'), { backing: 'follow' });
    const server = await NbdServer.start({
      exports: [new NbdExport({ name: 'disk', description: 'the disk', image: img, readOnly: true })],
      listen: { host: '127.0.0.1', port: 0 },
      persistent: true,
    });
    try {
      const a = server.address() as { port: number };
      const uri = `nbd://127.0.0.1:${a.port}/disk`;
      const info = await execOk('qemu-img', ['info', uri]);
      expect(info).toContain('virtual size: 32 MiB');
      expect(await execOk('qemu-img', ['compare', '-f', 'raw', uri, p('a.raw')])).toContain('identical');
      const list = await execOk('nbdinfo', ['--list', `nbd://127.0.0.1:${a.port}`]);
      expect(list).toContain('export="disk"');
      expect(list).toContain('description: the disk');
      expect((await exec('nbdinfo', [`nbd://127.0.0.1:${a.port}/other`])).code).not.toBe(0);
    } finally {
      await server.close();
      await img.close();
    }
  });
});
