/**
 * `vdisk nbd -B NAME` (the built CLI) beside `qemu-nbd -B NAME`, same arguments, same images:
 * qcow2 bitmaps made by `qemu-img bitmap --add` (several granularities, an empty one, a fully
 * dirty one, a disabled one, one in a backing file) and dirtied by qemu-io writes. What nbdinfo
 * (--map=qemu:dirty-bitmap:NAME, --list), libnbd's context listing, qemu-img map (QEMU's
 * x-dirty-bitmap trick) and raw block status replies show must be identical, and so must the
 * errors.
 */
import { type ChildProcess, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectedBitmapMap, qemuBitmapMap } from '../test/bitmap-helpers.js';
import { exec, execOk, type Served, serveProcess, serveQemu } from '../test/nbd-helpers.js';
import { qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';
import { NbdClient } from './client.js';
import * as P from './protocol.js';

const BIN = join(process.cwd(), 'bin', 'vdisk');
const KiB = 1024;
const MiB = 1 << 20;
/** Not a multiple of any granularity but 512: the last granule is partial. */
const SIZE = 5 * MiB + 512;
let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);
let sockets = 0;
const sock = () => p(`b${sockets++}.sock`);
const children: ChildProcess[] = [];

/** The built CLI's `vdisk nbd -t -k SOCKET ARGS… IMAGE`. */
function serveCli(image: string, socket: string, args: string[]): Promise<Served> {
  return serveProcess(BIN, ['nbd', '-t', '-k', socket, ...args, image], socket, '', (c) => children.push(c));
}

/** Serve `image` with qemu-nbd, then with vdisk nbd (same arguments); `fn` on each. */
async function both<T>(
  image: string | [string, string],
  args: string[],
  fn: (s: Served, who: 'qemu' | 'vdisk') => Promise<T>,
): Promise<{ qemu: T; vdisk: T }> {
  const [qi, vi] = typeof image === 'string' ? [image, image] : image;
  const q = await serveQemu(qi, sock(), args);
  let qemu: T;
  try {
    qemu = await fn(q, 'qemu');
  } finally {
    await q.stop();
  }
  const v = await serveCli(vi, sock(), args);
  try {
    return { qemu, vdisk: await fn(v, 'vdisk') };
  } finally {
    await v.stop();
  }
}

const BITMAPS = ['g512', 'g4k', 'g64k', 'g1m', 'empty', 'full', 'dis'];
const map = (uri: string, name: string) => execOk('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, uri]);

beforeAll(() => {
  expect(existsSync(join(process.cwd(), 'dist', 'cli', 'bin.js')), 'build first: npm run build').toBe(true);
  ({ dir, cleanup } = tempDir('vdisk-nbdbm-'));
  const img = p('bm.qcow2');
  qemuImgOk(['create', '-q', '-f', 'qcow2', img, String(SIZE)]);
  qemuImgOk(['bitmap', '--add', '-g', '512', img, 'g512']);
  qemuImgOk(['bitmap', '--add', '-g', '4096', img, 'g4k']);
  qemuImgOk(['bitmap', '--add', img, 'g64k']);
  qemuImgOk(['bitmap', '--add', '-g', '1M', img, 'g1m']);
  qemuImgOk(['bitmap', '--add', img, 'dis']);
  qemuImgOk(['bitmap', '--add', '-g', '65536', img, 'full']);
  qemuIo(img, ['write -P 0x55 0 5243392'], 'qcow2');
  for (const b of ['g512', 'g4k', 'g64k', 'g1m', 'dis']) qemuImgOk(['bitmap', '--clear', img, b]);
  // Unaligned writes, adjacent ones, the partial last granule.
  qemuIo(
    img,
    [
      'write 1000 100',
      'write 70k 4k',
      'write 74k 4k',
      'write 1M 1536',
      'write 3000k 300k',
      `write ${SIZE - 512} 512`,
    ],
    'qcow2',
  );
  qemuImgOk(['bitmap', '--disable', img, 'dis']);
  qemuIo(img, ['write 2M 64k'], 'qcow2');
  qemuImgOk(['bitmap', '--add', img, 'empty']);
  // A chain: the base's bitmaps are found through the top (qemu-nbd searches the chain).
  qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'bm.qcow2', '-F', 'qcow2', p('top.qcow2')]);
  qemuImgOk(['bitmap', '--add', '-g', '512', p('top.qcow2'), 'g4k']);
  qemuIo(p('top.qcow2'), ['write 4M 1k'], 'qcow2');
  // In use: a process died with the image open.
  copyFileSync(img, p('inuse.qcow2'));
  spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write 0 512', '-c', 'abort', p('inuse.qcow2')]);
  expect(qemuImgOk(['info', p('inuse.qcow2')])).toContain('in-use');
  qemuImgOk(['create', '-q', '-f', 'raw', p('r.raw'), '1M']);
});
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  cleanup?.();
});

describe('vdisk nbd -B beside qemu-nbd -B', () => {
  it('nbdinfo --map=qemu:dirty-bitmap:NAME is identical for every granularity, empty, full, disabled', async () => {
    const args = ['-r', '-f', 'qcow2', ...BITMAPS.flatMap((b) => ['-B', b])];
    const r = await both(p('bm.qcow2'), args, async (s) => {
      const out: Record<string, string> = {};
      for (const b of BITMAPS) out[b] = await map(s.uri, b);
      return out;
    });
    expect(r.vdisk).toEqual(r.qemu);
    // The test can fail: the maps differ from one another as the writes say.
    expect(r.vdisk['empty']).toBe(expectedBitmapMap(SIZE, []));
    expect(r.vdisk['full']).toBe(expectedBitmapMap(SIZE, [[0, SIZE]]));
    // Disabled before the write at 2M, which the enabled ones have.
    expect(r.vdisk['g64k']).toContain('   2097152       65536    1  dirty');
    expect(r.vdisk['dis']).not.toContain('2097152');
    expect(r.vdisk['g512']).toContain(`${String(SIZE - 512).padStart(10)}         512    1  dirty`);
    expect(r.vdisk['g4k']).toContain(`${String(68 * KiB).padStart(10)}       12288    1  dirty`);
    expect(r.vdisk['g1m']).toContain('         0     4194304    1  dirty');
  });

  it('lists the contexts as qemu-nbd: nbdinfo --list, libnbd queries, the -B order, a name given twice', async () => {
    const args = ['-r', '-B', 'g64k', '-B', 'g4k', '-B', 'g64k', '-A'];
    const queries = [
      [],
      ['qemu:'],
      ['qemu:dirty-bitmap:'],
      ['qemu:dirty-bitmap:g64k'],
      ['qemu:dirty-bitmap:nope', 'base:'],
      ['qemu:dirty-bitmap'],
      ['qemu:dirty-bitmap:g4k', 'qemu:allocation-depth', 'base:allocation'],
    ];
    const script = [
      'import nbd, sys, json',
      'h = nbd.NBD()',
      'h.set_opt_mode(True)',
      'h.connect_uri(sys.argv[1])',
      'out = []',
      `for q in ${JSON.stringify(queries)}:`,
      '    got = []',
      '    h.clear_meta_contexts()',
      '    for x in q: h.add_meta_context(x)',
      '    h.opt_list_meta_context(lambda c: got.append(c) or 0)',
      '    out.append(got)',
      'h.opt_abort()',
      'print(json.dumps(out))',
    ].join('\n');
    const r = await both(p('bm.qcow2'), args, async (s) => ({
      list: (await execOk('nbdinfo', ['--list', s.uri])).replaceAll(s.socket, 'SOCK'),
      // Debian's python3, where python3-libnbd is installed.
      queries: JSON.parse(await execOk('/usr/bin/python3', ['-c', script, s.uri])) as string[][],
    }));
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.queries[0]).toEqual([
      'base:allocation',
      'qemu:allocation-depth',
      'qemu:dirty-bitmap:g64k',
      'qemu:dirty-bitmap:g4k',
      'qemu:dirty-bitmap:g64k',
    ]);
  });

  it('SET_META_CONTEXT ids and BLOCK_STATUS replies are identical (unaligned ranges, REQ_ONE)', async () => {
    const args = ['-r', '-B', 'g512', '-B', 'g4k', '-B', 'g1m', '-B', 'full'];
    const contexts = [
      'qemu:dirty-bitmap:g1m',
      'base:allocation',
      'qemu:dirty-bitmap:g4k',
      'qemu:dirty-bitmap:full',
      'qemu:dirty-bitmap:g512',
    ];
    const ranges: [number, number, number][] = [
      [0, SIZE, 0],
      [1000, 100, 0],
      [1001, 70 * KiB, 0],
      [70 * KiB + 7, 3 * MiB, 0],
      [SIZE - 513, 513, 0],
      [0, SIZE, P.CMD_FLAG_REQ_ONE],
      [1000, MiB, P.CMD_FLAG_REQ_ONE],
    ];
    const r = await both(p('bm.qcow2'), args, async (s) => {
      const c = await NbdClient.connect({ path: s.socket }, { contexts });
      try {
        const out: unknown[] = [[...c.contexts.entries()].sort()];
        for (const [off, len, flags] of ranges) {
          out.push([...(await c.blockStatus(off, len, flags)).entries()].sort((a, b) => a[0] - b[0]));
        }
        return out;
      } finally {
        c.close();
      }
    });
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk[0]).toHaveLength(5);
  });

  it('finds a bitmap in the backing chain (the top one wins a name both have)', async () => {
    const args = ['-r', '-B', 'g4k', '-B', 'g64k', '-B', 'full'];
    const r = await both(p('top.qcow2'), args, async (s) => ({
      g4k: await map(s.uri, 'g4k'),
      g64k: await map(s.uri, 'g64k'),
      full: await map(s.uri, 'full'),
    }));
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.g4k).toBe(expectedBitmapMap(SIZE, [[4 * MiB, 4 * MiB + KiB]]));
  });

  it("with -l SNAPSHOT exports the image's bitmap (as qemu-nbd), not the snapshot's state", async () => {
    copyFileSync(p('bm.qcow2'), p('snap.qcow2'));
    qemuImgOk(['snapshot', '-c', 's1', p('snap.qcow2')]);
    qemuIo(p('snap.qcow2'), ['write 4M 64k'], 'qcow2');
    const r = await both(p('snap.qcow2'), ['-l', 's1', '-B', 'g64k'], (s) => map(s.uri, 'g64k'));
    expect(r.vdisk).toBe(r.qemu);
    expect(r.vdisk).toContain('   4194304       65536    1  dirty');
  });

  it('qemu-img map through x-dirty-bitmap (QEMU trick) reads the same', async () => {
    const r = await both(p('bm.qcow2'), ['-r', '-B', 'g4k'], (s) =>
      execOk('qemu-img', [
        'map',
        '--output=json',
        '--image-opts',
        `driver=nbd,server.type=unix,server.path=${s.socket},x-dirty-bitmap=qemu:dirty-bitmap:g4k`,
      ]),
    );
    expect(r.vdisk).toBe(r.qemu);
    expect(r.vdisk).toContain('"present": false');
  });

  it('a writable export sees its own writes in an enabled bitmap at once, and keeps them', async () => {
    copyFileSync(p('bm.qcow2'), p('wq.qcow2'));
    copyFileSync(p('bm.qcow2'), p('wv.qcow2'));
    const r = await both(
      [p('wq.qcow2'), p('wv.qcow2')],
      ['-f', 'qcow2', '-B', 'g4k', '-B', 'dis'],
      async (s) => {
        await execOk('qemu-io', ['-f', 'raw', '-c', 'write 1536k 5k', '-c', 'write -z 4100k 8k', s.uri]);
        return { g4k: await map(s.uri, 'g4k'), dis: await map(s.uri, 'dis') };
      },
    );
    expect(r.vdisk).toEqual(r.qemu);
    expect(r.vdisk.g4k).toContain(`${String(1536 * KiB).padStart(10)}        8192    1  dirty`);
    // Stored at close: qemu-nbd reads the same bitmap from both images.
    expect(await qemuBitmapMap(dir, p('wv.qcow2'), 'g4k')).toBe(
      await qemuBitmapMap(dir, p('wq.qcow2'), 'g4k'),
    );
  });

  it('fails as qemu-nbd: unknown bitmap, inconsistent (in-use) bitmap, an image without bitmaps', async () => {
    for (const [image, args] of [
      [p('bm.qcow2'), ['-r', '-B', 'nope']],
      [p('bm.qcow2'), ['-r', '-B', 'g4k', '-B', 'nope']],
      [p('inuse.qcow2'), ['-r', '-B', 'g4k']],
      [p('inuse.qcow2'), ['-B', 'g64k']],
      [p('r.raw'), ['-f', 'raw', '-r', '-B', 'g4k']],
    ] as const) {
      const q = await exec('qemu-nbd', ['-k', sock(), ...args, image]);
      const v = await vdisk(['nbd', '-k', sock(), ...args, image]);
      expect(v.stderr.replace(/^vdisk: /, ''), args.join(' ')).toBe(q.stderr.replace(/^qemu-nbd: /, ''));
      expect(v.code).toBe(q.code);
      expect(v.code).toBe(1);
    }
  });
});
