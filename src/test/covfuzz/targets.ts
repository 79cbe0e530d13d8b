/**
 * The fuzz targets: each parser on its own, called directly on a Buffer (HostFile.fromSource
 * over it), not through the CLI. A target has seeds (made by qemu-img / qemu-io, or by the
 * builders the format tests use), a dictionary (magic numbers, header-field values and the
 * offsets of header fields, taken from the drivers' structs where they export them), the
 * scripts whose coverage guides it, what counts as an expected refusal, and how a finding is
 * replayed through the CLI.
 *
 * Seeds are built in the parent (they need qemu-img); `run` executes in the worker thread.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DriverOpenOptions, FormatDriver } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import { buildDmg, makeBochs, makeCloop } from '../builders.js';
import type { Dictionary } from './mutate.js';

export interface Target {
  name: string;
  /** Substrings of the script URLs whose blocks guide this target. */
  scripts: string[];
  /** Largest input kept (bytes). */
  maxLen: number;
  /** Seed inputs, made in `dir` (a scratch directory). */
  seeds(dir: string): Buffer[];
  dict(): Dictionary;
  /** Parse one input. Resolves, or rejects with an error `expected` accepts. */
  run(input: Buffer): Promise<void>;
  /** A refusal the parser may give (a VdiskError; HttpError for the registry). */
  expected(e: unknown): boolean;
  /** CLI arguments that replay a saved input (the path of the saved file). */
  replay?(path: string): string[][];
  /** File extension of saved inputs. */
  ext: string;
  /** `run` only copies out of its input (no TextDecoder): it may be a view of shared memory. */
  sharedInputOk?: boolean;
}

const isVdisk = (e: unknown) => e instanceof VdiskError;

// --------------------------------------------------------------------------- seeds

function sh(dir: string, cmd: string, args: string[]): void {
  for (let attempt = 0; ; attempt++) {
    const r = spawnSync(cmd, args, { cwd: dir, encoding: 'utf8' });
    if (r.status === 0) return;
    // QEMU's PBKDF2 calibration fails now and then on a busy machine.
    if (attempt < 20 && r.stderr.includes('Unable to get accurate CPU usage')) continue;
    throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  }
}

/** qemu-io writes leaving data, zeros and holes in a 4 MiB image. */
const WRITES = ['-c', 'write -P 0xab 0 64k', '-c', 'write -P 0xcd 1M 64k', '-c', 'write -P 0x5a 3145728 8k'];
const SECRET = ['--object', 'secret,id=sec0,data=fuzz-pass'];

/** A qemu-img-made image of `fmt`, with the usual writes unless `write` is false. */
function qemuSeed(dir: string, name: string, fmt: string, opts: string[], write = true, size = '4M'): Buffer {
  const f = join(dir, `${name}.${fmt}`);
  sh(dir, 'qemu-img', ['create', '-q', '-f', fmt, ...opts, f, size]);
  if (write) sh(dir, 'qemu-io', ['-f', fmt, ...WRITES, f]);
  return readFileSync(f);
}

function rawSeed(dir: string): string {
  const f = join(dir, 'data.raw');
  sh(dir, 'qemu-img', ['create', '-q', '-f', 'raw', f, '4M']);
  sh(dir, 'qemu-io', ['-f', 'raw', ...WRITES, f]);
  return f;
}

function convertSeed(dir: string, name: string, fmt: string, opts: string[]): Buffer {
  const f = join(dir, `${name}.${fmt}`);
  sh(dir, 'qemu-img', ['convert', ...opts, '-O', fmt, rawSeed(dir), f]);
  return readFileSync(f);
}

const text = (n: number, tag: string) => Buffer.alloc(n, `${tag} sector data 0123456789 `);

function dmgSeeds(): Buffer[] {
  const chunks = [
    { kind: 'zlib' as const, sectors: 16, data: text(16 * 512, 'zlib') },
    { kind: 'zero' as const, sectors: 8 },
    { kind: 'raw' as const, sectors: 4, data: text(4 * 512, 'raw') },
    { kind: 'bzip2' as const, sectors: 16, data: text(16 * 512, 'bzip2') },
    { kind: 'ignore' as const, sectors: 4 },
  ];
  return [
    buildDmg({ parts: [chunks, chunks.slice(0, 2)] }).file,
    buildDmg({ parts: [chunks], resourceFork: true }).file,
  ];
}

// --------------------------------------------------------------------------- helpers

/**
 * A module loaded on first use (in the worker: after coverage has started, so its scripts carry
 * block counters) and kept. An `await import()` per input cost more than most parses: each one
 * resolves its specifier again, and under tsx resolution is a message round trip to the loader's
 * hooks thread (40% of a qcow2 run's CPU, in two threads; docs/fuzzing.md).
 */
function lazy<T>(load: () => Promise<T>): () => T | Promise<T> {
  let mod: T | undefined;
  let loading: Promise<T> | undefined;
  return () => {
    if (mod !== undefined) return mod;
    loading ??= load().then((m) => {
      mod = m;
      return m;
    });
    return loading;
  };
}

const imageModule = lazy(() => import('../../core/image.js'));
const formatsModule = lazy(async () => {
  const { registerBuiltinFormats } = await import('../../formats/index.js');
  const { getDriver } = await import('../../core/formats.js');
  registerBuiltinFormats();
  return { getDriver };
});
const luksHeaderModule = lazy(() => import('../../formats/luks/header.js'));
const secretsModule = lazy(() => import('../../core/secrets.js'));
const descriptorModule = lazy(() => import('../../formats/vmdk/descriptor.js'));
const plistModule = lazy(() => import('../../formats/dmg/plist.js'));
const inspectModule = lazy(() => import('../../server/image/inspect.js'));
const apiModule = lazy(() => import('../../server/image/api.js'));
const schemasModule = lazy(() => import('../../server/image/schemas.js'));
const listModule = lazy(() => import('../../server/image/list.js'));

/** A read-only HostFile over a Buffer. */
export function bufferFile(name: string, buf: Buffer): HostFile {
  return HostFile.fromSource(name, {
    size: buf.length,
    async read(dst, offset) {
      if (offset >= buf.length) return 0;
      const n = Math.min(dst.length, buf.length - offset);
      dst.set(buf.subarray(offset, offset + n));
      return n;
    },
    async close() {},
  });
}

const u32be = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const u32le = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const s = (t: string) => Buffer.from(t, 'latin1');

/** Open, walk block status, read a few ranges, ask info and check, close. */
async function exercise(
  driver: FormatDriver,
  input: Buffer,
  name: string,
  opts: Partial<DriverOpenOptions> = {},
) {
  const { Image } = await imageModule();
  const drv = await driver.open(bufferFile(name, input), { writable: false, forceShare: true, ...opts });
  const img = new Image(drv, name);
  try {
    drv.formatSpecific?.();
    drv.snapshots?.();
    await drv.actualSize();
    const size = img.size;
    let off = 0;
    for (let i = 0; i < 64 && off < size; i++) {
      const e = await img.blockStatus(off, size - off);
      if (!(e.length > 0)) throw new Error(`block status at ${off} returned an extent of ${e.length} bytes`);
      off += e.length;
    }
    if (opts.noIo !== true && size > 0) {
      const buf = new Uint8Array(Math.min(size, 65536));
      await img.readAt(buf, 0);
      const mid = Math.floor(size / 2 / 512) * 512;
      await img.readAt(buf.subarray(0, Math.min(4096, size - mid)), mid);
      await img.readAt(buf, size - buf.length);
    }
    if (drv.check !== undefined && opts.noIo !== true) await drv.check('none');
  } finally {
    await img.close();
  }
}

async function driverOf(name: string): Promise<FormatDriver> {
  const { getDriver } = await formatsModule();
  return getDriver(name);
}

function imageTarget(
  name: string,
  fmt: string,
  seeds: (dir: string) => Buffer[],
  dict: Dictionary,
  opts: Partial<DriverOpenOptions> = {},
  extra: Partial<Target> = {},
): Target {
  let driver: FormatDriver | undefined;
  return {
    name,
    scripts: [`/formats/${fmt}/`, '/core/'],
    maxLen: 16 << 20,
    seeds,
    dict: () => dict,
    async run(input) {
      driver ??= await driverOf(fmt);
      await exercise(driver, input, `fuzz.${fmt}`, opts);
    },
    expected: isVdisk,
    sharedInputOk: true,
    replay: (p) => [
      ['info', '-f', fmt, p],
      ['check', '-f', fmt, p],
      ['convert', '-f', fmt, '-O', 'raw', p, `${p}.out`],
    ],
    ext: fmt,
    ...extra,
  };
}

/**
 * luks: unlocked with the seeds' password (so key derivation, the anti-forensic merge, the
 * digest check and sector decryption run, then reads and check) unless an iteration count in the
 * header lies between UNLOCK_ITERS and the driver's MAX_ITERS: PBKDF2 would then run up to 64 Mi
 * iterations (seconds, as QEMU would: not a finding). Counts above MAX_ITERS are unlocked too: the
 * driver refuses them before deriving anything. Those inputs open with noIo (header and key
 * slots parsed). The seeds have 1000 iterations (qemu-img's floor; iter-time=0) and 3600+.
 */
const UNLOCK_ITERS = 4096;
let luksDriver: FormatDriver | undefined;
let luksSecrets: import('../../core/secrets.js').Secrets | undefined;
async function runLuks(input: Buffer): Promise<void> {
  const { parseHeader, HEADER_SIZE, MAX_ITERS, SLOT_ENABLED } = await luksHeaderModule();
  if (luksDriver === undefined) {
    const { Secrets } = await secretsModule();
    luksDriver = await driverOf('luks');
    luksSecrets = new Secrets().define('sec0', Buffer.from('fuzz-pass'));
  }
  let unlock = false;
  try {
    const h = parseHeader(input.subarray(0, HEADER_SIZE)).header;
    const slow = (n: number) => n > UNLOCK_ITERS && n <= MAX_ITERS;
    unlock =
      !slow(h.mkDigestIter) && !h.slots.some((sl) => sl.active === SLOT_ENABLED && slow(sl.iterations));
  } catch {
    // The driver's open refuses it: with noIo.
  }
  await exercise(
    luksDriver,
    input,
    'fuzz.luks',
    unlock ? { options: { 'key-secret': 'sec0' }, secrets: luksSecrets } : { noIo: true },
  );
}

// --------------------------------------------------------------------------- dictionaries

const QCOW2_DICT: Dictionary = {
  tokens: [
    u32be(0x514649fb),
    u32be(2),
    u32be(3),
    u32be(0xe2792aca),
    u32be(0x6803f857),
    u32be(0x0537be77),
    u32be(0x23852875),
    u32be(0x44415441),
    u32be(0x80000000),
    u32be(1),
    u32be(9),
    u32be(16),
    u32be(21),
    u32be(112),
    u32be(104),
    s('raw\0'),
  ],
  // version, backing offset/size, cluster bits, size, crypt, l1 size/offset, refcount table
  // offset/clusters, snapshots, incompat/compat/autoclear, refcount order, header length, compression.
  offsets: [4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 88, 96, 100, 104, 105, 112, 116, 120],
};

export const TARGETS: Target[] = [
  imageTarget(
    'qcow2',
    'qcow2',
    (dir) => {
      const v3 = join(dir, 'snap.qcow2');
      sh(dir, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', v3, '4M']);
      sh(dir, 'qemu-io', ['-f', 'qcow2', ...WRITES, v3]);
      sh(dir, 'qemu-img', ['snapshot', '-c', 'snap1', v3]);
      sh(dir, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xcd 0 8k', '-c', 'write -z 2M 64k', v3]);
      const backed = join(dir, 'backed.qcow2');
      sh(dir, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'base.raw', '-u', backed, '4M']);
      return [
        readFileSync(v3),
        qemuSeed(dir, 'v2', 'qcow2', ['-o', 'compat=0.10,cluster_size=4096']),
        qemuSeed(dir, 'l2ext', 'qcow2', ['-o', 'extended_l2=on,cluster_size=16k']),
        qemuSeed(dir, 'refbits1', 'qcow2', ['-o', 'refcount_bits=1,cluster_size=512']),
        convertSeed(dir, 'zlib', 'qcow2', ['-c', '-o', 'compression_type=zlib,cluster_size=4096']),
        convertSeed(dir, 'zstd', 'qcow2', ['-c', '-o', 'compression_type=zstd,cluster_size=4096']),
        readFileSync(backed),
      ];
    },
    QCOW2_DICT,
  ),
  imageTarget(
    'qcow2-luks',
    'qcow2',
    (dir) => {
      const f = join(dir, 'luks.qcow2');
      sh(dir, 'qemu-img', [
        'create',
        '-q',
        ...SECRET,
        '-f',
        'qcow2',
        '-o',
        'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=4096',
        f,
        '1M',
      ]);
      return [readFileSync(f)];
    },
    { tokens: [...QCOW2_DICT.tokens, s('LUKS\xba\xbe')], offsets: QCOW2_DICT.offsets },
    // Header and crypto extension only: unlocking runs PBKDF2 with the image's own iteration
    // count (QEMU's too), whose cost a mutant sets at will.
    { noIo: true },
    { name: 'qcow2-luks' },
  ),
  imageTarget('qed', 'qed', (dir) => [qemuSeed(dir, 'qed', 'qed', ['-o', 'cluster_size=4096'])], {
    tokens: [u32le(0x00444551), u32le(4096), u32le(1), u32le(16), u32le(2), u32le(1), s('raw\0')],
    // cluster size, table size, header size, features, compat, autoclear, l1 offset, image size, backing offset/size
    offsets: [4, 8, 12, 16, 24, 32, 40, 48, 56, 60],
  }),
  imageTarget('qcow', 'qcow', (dir) => [qemuSeed(dir, 'qcow', 'qcow', [])], {
    tokens: [u32be(0x514649fb), u32be(1), u32be(0x80000000), u32be(9), u32be(12), u32be(1)],
    // version, backing offset/size, mtime, size, cluster bits, l2 bits, crypt, l1 offset
    offsets: [4, 8, 16, 20, 24, 32, 33, 36, 40],
  }),
  imageTarget(
    'vmdk',
    'vmdk',
    (dir) => {
      const flat = join(dir, 'flat.vmdk');
      sh(dir, 'qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', flat, '1M']);
      return [
        qemuSeed(dir, 'sparse', 'vmdk', []),
        convertSeed(dir, 'stream', 'vmdk', ['-o', 'subformat=streamOptimized']),
        readFileSync(flat),
      ];
    },
    {
      tokens: [
        s('KDMV'),
        s('COWD'),
        u32le(1),
        u32le(3),
        u32le(0x30000),
        u32le(128),
        u32le(512),
        s('createType="monolithicSparse"'),
        s('createType="streamOptimized"'),
        s('createType="vmfs"'),
        s('createType="seSparse"'),
        s('RW 2048 SPARSE "x.vmdk"'),
        s('RW 2048 FLAT "flat-flat.vmdk" 0'),
        s('RDONLY 0 ZERO'),
        s('parentCID=ffffffff'),
        s('CID='),
        s('ddb.geometry.cylinders = "2"'),
        s('\n'),
        s('"'),
      ],
      // version, flags, capacity, grain size, descriptor offset/size, GTEs per GT, rgd, gd, overhead, compression
      offsets: [4, 8, 12, 20, 28, 36, 44, 48, 56, 64, 72, 73, 77, 512],
    },
    {
      // A monolithicFlat descriptor names its extent: a 1 MiB extent of zeros, in memory.
      openExtentFile: async (n) => bufferFile(n, Buffer.alloc(1 << 20)),
    },
  ),
  {
    name: 'vmdk-descriptor',
    scripts: ['/formats/vmdk/descriptor'],
    maxLen: 64 << 10,
    seeds: (dir) => {
      const flat = join(dir, 'flat.vmdk');
      sh(dir, 'qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', flat, '1M']);
      const sparse = qemuSeed(dir, 'sparse', 'vmdk', [], false);
      return [readFileSync(flat), sparse.subarray(512, 512 + 1024)];
    },
    dict: () => ({
      tokens: [
        'createType=',
        'RW ',
        'RDONLY ',
        'NOACCESS ',
        'SPARSE ',
        'FLAT ',
        'ZERO',
        'VMFS',
        'VMFSSPARSE',
        'SESPARSE',
        '"',
        '\n',
        '#',
        '=',
        'CID=',
        'parentCID=',
        'parentFileNameHint=',
        '\0',
        ' 0\n',
        ' 4294967296 ',
        '-1',
      ].map(s),
      offsets: [],
    }),
    async run(input) {
      const d = await descriptorModule();
      const desc = d.parseDescriptor(d.descriptorText(input));
      d.createTypeOf(desc);
      d.cidOf(desc, 'CID', 'fuzz.vmdk');
      d.cidOf(desc, 'parentCID', 'fuzz.vmdk');
    },
    expected: isVdisk,
    ext: 'txt',
  },
  imageTarget(
    'vdi',
    'vdi',
    (dir) => [
      qemuSeed(dir, 'vdi', 'vdi', []),
      qemuSeed(dir, 'vdi-static', 'vdi', ['-o', 'static=on'], false, '1M'),
    ],
    {
      tokens: [
        u32le(0xbeda107f),
        u32le(0x00010001),
        u32le(1),
        u32le(2),
        u32le(512),
        u32le(1 << 20),
        u32le(0xffffffff),
        u32le(0xfffffffe),
        s('<<< QEMU VM Virtual Disk Image >>>\n'),
      ],
      offsets: [
        0x40, 0x44, 0x48, 0x4c, 0x50, 0x154, 0x158, 0x15c, 0x160, 0x164, 0x168, 0x170, 0x178, 0x17c, 0x180,
        0x184, 0x200,
      ],
    },
  ),
  imageTarget(
    'vpc',
    'vpc',
    (dir) => [
      qemuSeed(dir, 'vpc', 'vpc', []),
      qemuSeed(dir, 'vpc-fixed', 'vpc', ['-o', 'subformat=fixed'], false, '1M'),
    ],
    {
      tokens: [
        s('conectix'),
        s('cxsparse'),
        u32be(2),
        u32be(3),
        u32be(4),
        u32be(0x10000),
        u32be(0x200000),
        u32be(0xffffffff),
        s('qemu'),
        s('d2v\0'),
      ],
      // footer: features, version, data offset, timestamp, creator, sizes, geometry, type, checksum;
      // dynamic header (at 512): data offset, table offset, version, max entries, block size, checksum
      offsets: [
        8,
        12,
        16,
        24,
        28,
        40,
        48,
        56,
        60,
        64,
        512 + 8,
        512 + 16,
        512 + 24,
        512 + 28,
        512 + 32,
        512 + 36,
      ],
    },
  ),
  imageTarget('vhdx', 'vhdx', (dir) => [qemuSeed(dir, 'vhdx', 'vhdx', ['-o', 'block_size=1M,log_size=1M'])], {
    tokens: [
      s('vhdxfile'),
      s('head'),
      s('regi'),
      s('metadata'),
      s('loge'),
      s('desc'),
      s('data'),
      s('zero'),
      u32le(1 << 20),
      u32le(512),
      u32le(4096),
      u32le(1),
      u32le(6),
      u32le(7),
    ],
    // file identifier, the two headers (signature, checksum, sequence, log guid/offset/length) and region tables
    offsets: [
      0, 8, 65536, 65540, 65544, 65600, 65604, 65608, 65612, 131072, 131080, 196608, 196612, 196616, 196632,
      196640, 196644, 262144,
    ],
  }),
  imageTarget(
    'parallels',
    'parallels',
    (dir) => [qemuSeed(dir, 'parallels', 'parallels', ['-o', 'cluster_size=64k'])],
    {
      tokens: [
        s('WithoutFreeSpace'),
        s('WithouFreSpacExt'),
        u32le(2),
        u32le(0x746f6e59),
        u32le(128),
        u32le(16),
        u32le(32),
      ],
      offsets: [0, 16, 20, 24, 28, 32, 36, 44, 48, 52, 56, 64],
    },
  ),
  imageTarget(
    'luks',
    'luks',
    (dir) => {
      const f = join(dir, 'luks.luks');
      sh(dir, 'qemu-img', [
        'create',
        '-q',
        ...SECRET,
        '-f',
        'luks',
        '-o',
        'key-secret=sec0,iter-time=10',
        f,
        '1M',
      ]);
      // iter-time=0: the fewest iterations qemu-img writes (1000 for the key slot and the
      // digest), so unlocking costs about a millisecond.
      const fast = join(dir, 'fast.luks');
      sh(dir, 'qemu-img', [
        'create',
        '-q',
        ...SECRET,
        '-f',
        'luks',
        '-o',
        'key-secret=sec0,iter-time=0',
        fast,
        '1M',
      ]);
      return [readFileSync(f).subarray(0, 1 << 20), readFileSync(fast)];
    },
    {
      tokens: [
        s('LUKS\xba\xbe'),
        s('aes\0'),
        s('twofish\0'),
        s('serpent\0'),
        s('cast5\0'),
        s('xts-plain64\0'),
        s('cbc-essiv:sha256\0'),
        s('sha256\0'),
        s('sha1\0'),
        u32be(0x00ac71f3),
        u32be(0x0000dead),
        u32be(4000),
        u32be(32),
        u32be(64),
      ],
      // version, cipher name/mode, hash, payload offset, key bytes, digest iterations, uuid, key slots
      offsets: [6, 8, 40, 72, 104, 108, 132, 164, 168, 208, 212, 244, 248, 256],
    },
    // Replaced by run below (unlocks when the iteration counts allow it).
    { noIo: true },
    { run: runLuks },
  ),
  imageTarget('dmg', 'dmg', () => dmgSeeds(), {
    tokens: [
      s('koly'),
      s('mish'),
      u32be(0x80000005),
      u32be(0x80000006),
      u32be(0x80000007),
      u32be(0x7ffffffe),
      u32be(0xffffffff),
      u32be(1),
      u32be(2),
      s('<key>blkx</key>'),
      s('<data>'),
      s('</data>'),
      s('<array>'),
      s('<dict>'),
      s('resource-fork'),
    ],
    offsets: [],
  }),
  {
    name: 'dmg-plist',
    scripts: ['/formats/dmg/plist'],
    maxLen: 256 << 10,
    seeds: () =>
      dmgSeeds()
        .slice(0, 1)
        .map((f) => {
          const t = f.toString('latin1');
          return Buffer.from(t.slice(t.indexOf('<?xml'), t.indexOf('</plist>') + 8), 'latin1');
        }),
    dict: () => ({
      tokens: [
        '<dict>',
        '</dict>',
        '<key>',
        '</key>',
        '<array>',
        '</array>',
        '<data>',
        '</data>',
        '<string>',
        '<integer>',
        '<!--',
        '-->',
        '<?xml ?>',
        '<![CDATA[',
        ']]>',
        '&amp;',
        '&#x41;',
        '&lt;',
        '/>',
        '"',
        "'",
        '=',
        'blkx',
        'resource-fork',
      ].map(s),
      offsets: [],
    }),
    async run(input) {
      const p = await plistModule();
      p.blkxBlobs(input.toString('latin1'));
    },
    expected: isVdisk,
    ext: 'xml',
  },
  imageTarget(
    'cloop',
    'cloop',
    () => {
      const bs = 4096;
      return [makeCloop(bs, [text(bs, 'a'), Buffer.alloc(bs), text(bs, 'b')])];
    },
    {
      tokens: [s('#!/bin/sh\n'), u32be(4096), u32be(512), u32be(0xffffffff)],
      offsets: [128, 132, 136, 144, 152, 160],
    },
  ),
  imageTarget(
    'bochs',
    'bochs',
    () => [
      makeBochs(1 << 20, 64 << 10, 2, (n) => Buffer.alloc(n, 0xab)),
      makeBochs(1 << 20, 64 << 10, 1, (n) => Buffer.alloc(n, 0xcd)),
    ],
    {
      tokens: [
        s('Bochs Virtual HD Image'),
        s('Redolog'),
        s('Growing'),
        u32le(0x00020000),
        u32le(0x00010000),
        u32le(512),
        u32le(0xffffffff),
      ],
      offsets: [0, 32, 48, 64, 68, 72, 76, 80, 84, 88],
    },
  ),
  // The registry's upload inspector: byte 0 picks disk_format, the rest is the upload, fed in
  // chunks whose size byte 1 picks.
  {
    name: 'upload',
    scripts: [
      '/server/image/inspect',
      '/formats/qcow2/header',
      '/formats/qed/header',
      '/formats/vmdk/',
      '/core/formats',
    ],
    maxLen: 3 << 20,
    seeds(dir) {
      const mbr = Buffer.alloc(65536);
      mbr.writeUInt16LE(0xaa55, 510);
      mbr[446] = 0x80;
      mbr[446 + 4] = 0x83;
      const gpt = Buffer.alloc(65536);
      gpt.writeUInt16LE(0xaa55, 510);
      gpt[446 + 4] = 0xee;
      gpt.write('EFI PART', 512, 'latin1');
      const vhd = qemuSeed(dir, 'u', 'vpc', ['-o', 'subformat=fixed'], false, '1M');
      const pre = (fmt: number, b: Buffer) => Buffer.concat([Buffer.from([fmt, 7]), b]);
      return [
        pre(0, qemuSeed(dir, 'u', 'qcow2', ['-o', 'cluster_size=4096'], false)),
        pre(1, qemuSeed(dir, 'u', 'vmdk', [], false)),
        pre(2, qemuSeed(dir, 'u', 'qed', ['-o', 'cluster_size=4096'], false)),
        pre(3, vhd),
        pre(4, mbr),
        pre(4, gpt),
      ];
    },
    dict: () => ({
      ...QCOW2_DICT,
      tokens: [
        ...QCOW2_DICT.tokens,
        s('KDMV'),
        u32le(0x00444551),
        s('conectix'),
        s('EFI PART'),
        Buffer.from([0x55, 0xaa]),
        Buffer.from([0xee]),
      ],
    }),
    async run(input) {
      if (input.length < 2) return;
      const { inspectUpload } = await inspectModule();
      const fmts = ['qcow2', 'vmdk', 'qed', 'vhd', 'raw', 'vdi', 'iso', 'vhdx'];
      const diskFormat = fmts[input[0]! % fmts.length]!;
      const chunk = [1, 512, 4096, 65536, 1 << 20][input[1]! % 5]!;
      const data = input.subarray(2);
      const row = { disk_format: diskFormat } as Parameters<typeof inspectUpload>[0];
      const ins = inspectUpload(row, input[1]! & 0x80 ? null : data.length, null, {
        requireFormatMatch: (input[1]! & 0x40) === 0,
      });
      for (let o = 0; o < data.length; o += chunk) ins.feed(data.subarray(o, o + chunk));
      ins.finish(data.length);
    },
    expected: (e) => isVdisk(e) || (e instanceof Error && e.constructor.name === 'HttpError'),
    ext: 'bin',
  },
  // The registry's JSON-patch parsing (PATCH /v2/images/{id}: both media types).
  {
    name: 'registry-patch',
    scripts: ['/server/image/api', '/server/image/schemas'],
    maxLen: 16 << 10,
    seeds: () =>
      [
        '[{"op":"replace","path":"/name","value":"x"}]',
        '[{"op":"add","path":"/locations/-","value":{"url":"http://a/b","metadata":{}}}]',
        '[{"op":"remove","path":"/locations/0"},{"op":"replace","path":"/locations","value":[]}]',
        '[{"replace":"/min_disk","value":3},{"add":"/tags","value":["a"]}]',
        '[{"op":"add","path":"/os_hidden","value":true},{"op":"replace","path":"/disk_format","value":"qcow2"}]',
        '[{"op":"add","path":"/a~1b~0c","value":"v"},{"op":"remove","path":"/x_prop"}]',
        '[{"op":"replace","path":"/visibility","value":"public"},{"op":"replace","path":"/protected","value":false}]',
      ].map((t) => Buffer.from(t)),
    dict: () => ({
      tokens: [
        '"op"',
        '"path"',
        '"value"',
        '"add"',
        '"remove"',
        '"replace"',
        '"/locations/-"',
        '"/',
        '~0',
        '~1',
        '~',
        '//',
        'null',
        'true',
        '1e999',
        '-1',
        '{}',
        '[]',
        '"min_ram"',
        '"checksum"',
        '"os_glance_x"',
        '"id"',
        '"container_format"',
        '\\u0000',
      ].map(s),
      offsets: [],
    }),
    async run(input) {
      let doc: unknown;
      try {
        doc = JSON.parse(input.toString('utf8'));
      } catch {
        return;
      }
      const { parseChange } = await apiModule();
      const { DISK_FORMATS, CONTAINER_FORMATS } = await schemasModule();
      const formats = { diskFormats: DISK_FORMATS, containerFormats: CONTAINER_FORMATS };
      for (const op of Array.isArray(doc) ? doc : [doc]) {
        for (const draft of [4, 10] as const) {
          try {
            parseChange(op, draft, formats);
          } catch (e) {
            if (!(e instanceof Error && e.constructor.name === 'HttpError')) throw e;
          }
        }
      }
    },
    expected: (e) => e instanceof Error && e.constructor.name === 'HttpError',
    ext: 'json',
  },
  // The registry's list query parsing: sort keys and directions, quoted filter values.
  {
    name: 'registry-query',
    scripts: ['/server/image/list'],
    maxLen: 4096,
    seeds: () =>
      [
        'sort=name:asc,size:desc',
        'sort_key=name&sort_key=created_at&sort_dir=asc&sort_dir=desc',
        'sort_key=size',
        'name=in:"a,b",c&tag=x',
        'sort=status&sort_dir=asc',
      ].map((t) => Buffer.from(t)),
    dict: () => ({
      tokens: [
        'sort=',
        'sort_key=',
        'sort_dir=',
        ':asc',
        ':desc',
        ',',
        '&',
        '"',
        '\\"',
        'in:',
        '%2C',
        '%00',
        'created_at',
        'id',
        'name',
      ].map(s),
      offsets: [],
    }),
    async run(input) {
      const { sortParams, splitQuoted } = await listModule();
      const params = new URLSearchParams(input.toString('utf8'));
      for (const [, v] of params) splitQuoted(v);
      sortParams(params);
    },
    expected: (e) => e instanceof Error && e.constructor.name === 'HttpError',
    ext: 'txt',
  },
];

export function targetNamed(name: string): Target | undefined {
  return TARGETS.find((t) => t.name === name);
}

/**
 * The harness's own test (covfuzz.test.ts), not a parser: byte 0 of an input picks a misdeed —
 * 'H' loops forever, 'M' fills the heap, 'B' allocates 300 MiB of buffers, 'E' throws a
 * TypeError, 'S' takes 300 ms — so that each kind of finding is seen to be caught.
 */
export const selfTestTarget: Target = {
  name: 'selftest',
  scripts: ['/covfuzz/targets'],
  maxLen: 64,
  seeds: () => [Buffer.from('x')],
  dict: () => ({ tokens: ['H', 'M', 'B', 'E', 'S'].map(s), offsets: [0] }),
  async run(input) {
    const c = String.fromCharCode(input[0] ?? 0);
    if (c === 'H') for (;;);
    if (c === 'M') {
      const keep: number[][] = [];
      for (;;) keep.push(new Array(1 << 16).fill(1));
    }
    if (c === 'B') (globalThis as { held?: unknown }).held = Buffer.alloc(300 << 20);
    if (c === 'E') (undefined as unknown as { x: () => void }).x();
    if (c === 'S') await new Promise((r) => setTimeout(r, 300));
  },
  expected: isVdisk,
  ext: 'bin',
};
