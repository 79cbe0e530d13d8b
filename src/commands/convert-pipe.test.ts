/**
 * `vdisk convert … -` through real pipes: the built CLI (bin/vdisk) in a shell pipeline, with
 * images made by qemu-img as sources and qemu-img compare/check as the judges of what comes
 * out. qemu-img itself cannot write to a pipe, so there is no golden text to match; where it
 * writes a file, vdisk's file output is the reference.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../test/oracle.js';

const BIN = join(process.cwd(), 'bin', 'vdisk');
const MiB = 1 << 20;

let dir: string;
let tmp: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);

/** Run a bash pipeline in the test directory (pipefail: the status of the first failure). */
function sh(script: string): { code: number; stdout: string; stderr: string } {
  const prelude = `set -o pipefail\nV=${JSON.stringify(BIN)}\nvdisk() { "$V" "$@"; }\n`;
  const r = spawnSync('bash', ['-c', prelude + script], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, TMPDIR: tmp },
    maxBuffer: 16 << 20,
  });
  if (r.error) throw r.error;
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

function same(a: string, b: string, fa?: string, fb?: string): void {
  const r = qemuImg(['compare', ...(fa ? ['-f', fa] : []), ...(fb ? ['-F', fb] : []), p(a), p(b)]);
  expect(r.stdout + r.stderr).toContain('Images are identical.');
  expect(r.code).toBe(0);
}

function checked(name: string, format: string): void {
  const r = qemuImg(['check', '-f', format, p(name)]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
}

const noSpill = () => expect(readdirSync(tmp)).toEqual([]);

beforeAll(() => {
  if (!existsSync(join(process.cwd(), 'dist', 'cli', 'bin.js'))) throw new Error('run `npm run build` first');
  ({ dir, cleanup } = tempDir('vdisk-pipe-'));
  tmp = join(dir, 'tmp');
  mkdirSync(tmp);
  // The source of everything: 64 MiB, data at both ends and in the middle, written by qemu-io
  // back to front so that the qcow2's clusters are not in guest order (its layout needs the spill).
  qemuImgOk(['create', '-f', 'qcow2', p('src.qcow2'), '64M']);
  qemuIo(p('src.qcow2'), ['write -P 0x33 60M 4M', 'write -P 0x22 30M 3M', 'write -P 0x11 0 1M'], 'qcow2');
  qemuImgOk(['convert', '-f', 'qcow2', '-O', 'raw', p('src.qcow2'), p('src.raw')]);
  qemuImgOk(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('src.qcow2'), p('src.vmdk')]);
  qemuImgOk(['convert', '-O', 'vpc', p('src.qcow2'), p('src.vhd')]);
  qemuImgOk(['convert', '-O', 'vdi', p('src.qcow2'), p('src.vdi')]);
  qemuImgOk(['convert', '-O', 'qcow2', p('src.qcow2'), p('seq.qcow2')]);
  qemuImgOk(['convert', '-O', 'vpc', '-o', 'subformat=fixed', p('src.qcow2'), p('fixed.vhd')]);
  qemuImgOk(['convert', '-O', 'vmdk', p('src.qcow2'), p('sparse.vmdk')]);
  qemuImgOk(['convert', '-O', 'qed', p('src.qcow2'), p('src.qed')]);
  qemuImgOk(['convert', '-O', 'qcow', p('src.qcow2'), p('src.qcow')]);
  // vdisk's own sequential qcow2 writer (metadata first).
  spawnSync(BIN, ['convert', '-f', 'qcow2', '-O', 'qcow2', p('src.qcow2'), '-'], {
    stdio: ['ignore', openSync(p('vseq.qcow2'), 'w'), 'inherit'],
  });
  // 2 GiB, 16 MiB of data.
  spawnSync('truncate', ['-s', '2G', p('big.raw')]);
  qemuIo(p('big.raw'), ['write -P 0x44 1G 8M', 'write -P 0x55 2040M 8M'], 'raw');
});

afterAll(() => cleanup?.());

describe('convert … - (standard output)', () => {
  const outputs: Array<{ fmt: string; opts: string[]; check: string | null }> = [
    { fmt: 'raw', opts: [], check: null },
    { fmt: 'qcow2', opts: [], check: 'qcow2' },
    { fmt: 'qed', opts: [], check: 'qed' },
    { fmt: 'qcow', opts: [], check: null },
    { fmt: 'vdi', opts: [], check: 'vdi' },
    { fmt: 'vpc', opts: [], check: null },
    { fmt: 'vpc', opts: ['-o', 'subformat=fixed'], check: null },
    { fmt: 'vmdk', opts: ['-o', 'subformat=streamOptimized'], check: 'vmdk' },
    { fmt: 'vmdk', opts: [], check: 'vmdk' },
  ];
  for (const { fmt, opts, check } of outputs) {
    it(`${fmt} ${opts.join(' ')}: reads as the source and passes qemu-img check`, () => {
      const out = `out-${fmt}${opts.length}.img`;
      const r = sh(`vdisk convert -f qcow2 -O ${fmt} ${opts.join(' ')} src.qcow2 - | cat > ${out}`);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      same('src.qcow2', out, 'qcow2', fmt);
      if (check !== null) checked(out, check);
    });
  }

  it('raw is byte for byte what convert writes to a file', () => {
    const r = sh(
      'vdisk convert -f qcow2 -O raw src.qcow2 - > piped.raw && vdisk convert -f qcow2 src.qcow2 file.raw',
    );
    expect(r.code).toBe(0);
    expect(readFileSync(p('piped.raw')).equals(readFileSync(p('file.raw')))).toBe(true);
  });

  it('-p draws on standard error and leaves the image alone', () => {
    const r = sh(
      'vdisk convert -p -f qcow2 -O qcow2 src.qcow2 - | cat > bar.qcow2 && vdisk convert -f qcow2 -O qcow2 src.qcow2 - | cat > nobar.qcow2',
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^ {4}\(0\.00\/100%\)\r.*\(100\.00\/100%\)\r\n$/s);
    expect(readFileSync(p('bar.qcow2')).equals(readFileSync(p('nobar.qcow2')))).toBe(true);
  });

  it('a format without a sequential writer: one line naming those that have one, nothing written', () => {
    const r = sh('vdisk convert -O vhdx src.qcow2 - | wc -c');
    expect(r.code).toBe(1);
    expect(r.stdout.trim()).toBe('0');
    expect(r.stderr).toBe(
      'vdisk: A vhdx image cannot be written in order to standard output; formats that can: qcow, qcow2, qed, raw, vdi, vmdk, vpc\n',
    );
    const c = sh('vdisk convert -c -O qcow2 src.qcow2 - | wc -c');
    expect(c.code).toBe(1);
    expect(c.stderr).toMatch(/^vdisk: A compressed qcow2 image cannot be written in order[^\n]*\n$/);
    const v = sh('vdisk convert -O vmdk -o subformat=monolithicFlat src.qcow2 - | wc -c');
    expect(v.code).toBe(1);
    expect(v.stderr.split('\n')).toHaveLength(2);
  });

  it('a reader that goes away (EPIPE): one line, exit 1, no stack trace', () => {
    const r = sh('vdisk convert -f qcow2 -O raw src.qcow2 - | head -c 1000 > /dev/null');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vdisk: error while writing at byte \d+: Broken pipe\n$/);
  });

  it('a 2 GiB sparse image streams out with a small peak RSS (VmHWM)', () => {
    const r = sh('/usr/bin/time -f %M -o rss.txt "$V" convert -f raw -O qcow2 big.raw - | cat > big.qcow2');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const kib = Number(readFileSync(p('rss.txt'), 'utf8').trim());
    expect(kib).toBeGreaterThan(0);
    expect(kib).toBeLessThan(200 * 1024);
    same('big.raw', 'big.qcow2', 'raw', 'qcow2');
    checked('big.qcow2', 'qcow2');
  });
});

describe('convert - … (standard input)', () => {
  const SPILL = /^vdisk: reading standard input into a temporary file in \S+ \(at most \d+ bytes stored\)\n$/;
  const SKIPPED =
    /^vdisk: standard input is not in order: keeping what was skipped in a temporary file in \S+ \(at most \d+ bytes stored\)\n$/;
  // How each is read: in order (nothing on stderr), in order with what was skipped kept, or
  // spilled whole first.
  const inputs: Array<{ file: string; fmt: string; note: RegExp }> = [
    // Raw into qcow2: the target is made at a provisional size and set to the stream's length.
    { file: 'src.raw', fmt: 'raw', note: /^$/ },
    { file: 'src.vmdk', fmt: 'vmdk', note: /^$/ },
    { file: 'sparse.vmdk', fmt: 'vmdk', note: SPILL },
    { file: 'src.vhd', fmt: 'vpc', note: /^$/ },
    { file: 'src.vdi', fmt: 'vdi', note: /^$/ },
    { file: 'src.qcow2', fmt: 'qcow2', note: SKIPPED },
    { file: 'seq.qcow2', fmt: 'qcow2', note: /^$/ },
    { file: 'vseq.qcow2', fmt: 'qcow2', note: /^$/ },
    { file: 'fixed.vhd', fmt: 'vpc', note: SPILL },
    { file: 'src.qed', fmt: 'qed', note: SPILL },
    { file: 'src.qcow', fmt: 'qcow', note: SPILL },
  ];
  for (const { file, fmt, note } of inputs) {
    it(`${file} made by ${file.startsWith('v') ? 'vdisk' : 'qemu-img'}, with -f ${fmt} and probed`, () => {
      const r = sh(`cat ${file} | vdisk convert -f ${fmt} -O qcow2 - in-${file}.qcow2`);
      expect(r.code).toBe(0);
      expect(r.stderr).toMatch(note);
      same(file, `in-${file}.qcow2`, fmt, 'qcow2');
      checked(`in-${file}.qcow2`, 'qcow2');
      if (fmt !== 'raw' && file !== 'fixed.vhd') {
        const q = sh(`vdisk convert -O vdi - probed-${file}.vdi < ${file}`);
        expect(q.code).toBe(0);
        same(file, `probed-${file}.vdi`, fmt, 'vdi');
      }
      noSpill();
    });
  }

  it('- to -: vdisk qcow2 stream in, vmdk streamOptimized out', () => {
    const r = sh(
      'vdisk convert -f qcow2 -O qcow2 src.qcow2 - | vdisk convert -f qcow2 -O vmdk -o subformat=streamOptimized - - | cat > both.vmdk',
    );
    expect(r.code).toBe(0);
    same('src.qcow2', 'both.vmdk', 'qcow2', 'vmdk');
    checked('both.vmdk', 'vmdk');
    noSpill();
  });

  for (const { file, fmt } of inputs.filter((i) => i.fmt !== 'raw')) {
    it(`${file} cut short: one line, exit 1, the temporary file removed`, () => {
      const half = Math.floor(readFileSync(p(file)).length / 2);
      const r = sh(`head -c ${half} ${file} | vdisk convert -f ${fmt} - cut.raw`);
      expect(r.code).toBe(1);
      // The error, after the note on a spill if there is one.
      const lines = r.stderr.split('\n');
      expect(lines.pop()).toBe('');
      expect(lines.length).toBeLessThanOrEqual(2);
      expect(lines[lines.length - 1]).toMatch(/^vdisk: \S/);
      expect(lines[lines.length - 1]).not.toContain(tmp);
      noSpill();
    });
  }

  it('hostile streamOptimized vmdk: a huge grain marker, grains going backwards', () => {
    const vmdk = readFileSync(p('src.vmdk'));
    const start = Number(vmdk.readBigUInt64LE(64)) * 512;
    // The grains as qemu-img wrote them (metadata markers skipped).
    const grains: Buffer[] = [];
    for (let pos = start; pos < vmdk.length; ) {
      const size = vmdk.readUInt32LE(pos + 8);
      if (size === 0) {
        if (vmdk.readUInt32LE(pos + 12) === 0) break;
        pos += 512 + Number(vmdk.readBigUInt64LE(pos)) * 512;
        continue;
      }
      const len = Math.ceil((12 + size) / 512) * 512;
      grains.push(vmdk.subarray(pos, pos + len));
      pos += len;
    }
    expect(grains.length).toBeGreaterThan(2);
    const eos = Buffer.alloc(512);
    const huge = Buffer.alloc(512);
    huge.writeUInt32LE(0xffffff00, 8);
    writeFileSync(p('huge.vmdk'), Buffer.concat([vmdk.subarray(0, start), huge, eos]));
    const h = sh('cat huge.vmdk | vdisk convert -f vmdk - h.raw');
    expect(h.code).toBe(1);
    expect(h.stderr).toMatch(
      /^vdisk: error while reading block status at offset 0: grain marker of 4294967040 bytes\n$/,
    );
    writeFileSync(p('back.vmdk'), Buffer.concat([vmdk.subarray(0, start), grains[1]!, grains[0]!, eos]));
    const b = sh('cat back.vmdk | vdisk convert -f vmdk - b.raw');
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(
      /^vdisk: error while reading block status at offset \d+: standard input: vmdk grains are not in order \(sector \d+ after \d+\); convert from a file instead\n$/,
    );
    noSpill();
  });

  it('a terminal is refused as standard input or output', () => {
    // script(1) gives the command a terminal for its standard streams.
    const tty = (cmd: string) =>
      spawnSync('script', ['-qec', cmd, '/dev/null'], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, TMPDIR: tmp },
      });
    const out = tty(`${BIN} convert -f qcow2 src.qcow2 -`);
    expect(out.status).toBe(1);
    expect(out.stdout).toBe('vdisk: Refusing to write an image to a terminal\r\n');
    const inp = tty(`${BIN} convert -f qcow2 - t.raw`);
    expect(inp.status).toBe(1);
    expect(inp.stdout).toBe('vdisk: Refusing to read an image from a terminal\r\n');
    noSpill();
  });

  it('a spill over --spill-limit stops with one line and is removed', () => {
    const r = sh('cat src.raw | vdisk convert --spill-limit=1M -f raw -O vdi - lim.vdi');
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n')[1]).toBe(
      'vdisk: standard input needs more than 1048576 bytes of temporary space',
    );
    noSpill();
    // Out of order: what is skipped beyond 4 MiB in memory goes to the spill, within its bound.
    const q = sh('cat src.qcow2 | vdisk convert --spill-limit=1M -f qcow2 - lim.raw');
    expect(q.code).toBe(1);
    expect(q.stderr.split('\n').slice(1)).toEqual([
      'vdisk: error while reading at byte 0: standard input needs more than 1048576 bytes of temporary space',
      '',
    ]);
    noSpill();
  });

  it('a 2 GiB qcow2 in order: small peak RSS, no temporary file', () => {
    qemuImgOk(['convert', '-f', 'raw', '-O', 'qcow2', p('big.raw'), p('big-src.qcow2')]);
    const r = sh(
      'cat big-src.qcow2 | /usr/bin/time -f %M -o rss-q.txt "$V" convert -f qcow2 -O raw - big-q.raw',
    );
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const kib = Number(readFileSync(p('rss-q.txt'), 'utf8').trim());
    expect(kib).toBeGreaterThan(0);
    expect(kib).toBeLessThan(200 * 1024);
    same('big.raw', 'big-q.raw', 'raw', 'raw');
    noSpill();
  });

  it('a 2 GiB sparse raw stream in: small peak RSS, nothing stored for its holes', () => {
    const r = sh(
      'cat big.raw | /usr/bin/time -f %M -o rss-in.txt "$V" convert -f raw -O qcow2 - big-in.qcow2',
    );
    expect(r.code).toBe(0);
    const kib = Number(readFileSync(p('rss-in.txt'), 'utf8').trim());
    expect(kib).toBeGreaterThan(0);
    expect(kib).toBeLessThan(200 * 1024);
    same('big.raw', 'big-in.qcow2', 'raw', 'qcow2');
    noSpill();
  });

  it('raw to raw streams with no temporary file: 1 GiB through a pipe, TMPDIR missing', () => {
    // A directory that does not exist (a read-only one would not stop root).
    const ro = p('no-such-tmp');
    // 1 GiB: 5 MiB of data at the start, zeros, 3 MiB of data and an odd tail at the end.
    const run = (cmd: string) =>
      spawnSync('bash', ['-c', `set -o pipefail\n${cmd}`], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, TMPDIR: ro },
      });
    const input =
      '{ head -c 5M src.raw; head -c 1063M /dev/zero; head -c 3M src.raw | tail -c 3M; head -c 1234 src.raw; }';
    const big = 'big-in-1.raw';
    expect(run(`${input} > ${big}`).status).toBe(0);
    const r = run(
      `${input} | /usr/bin/time -f %M -o rss-raw.txt ${JSON.stringify(BIN)} convert -f raw -O raw - piped.raw`,
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(run(`cmp ${big} piped.raw`).status).toBe(0);
    // The holes stay holes; memory stays small.
    expect(Number(run('du -k piped.raw').stdout.split('\t')[0])).toBeLessThan(20 * 1024);
    expect(Number(readFileSync(p('rss-raw.txt'), 'utf8').trim())).toBeLessThan(200 * 1024);
    // To qcow2 neither (the target is resized to the stream's length at the end).
    const q = run(`${input} | ${JSON.stringify(BIN)} convert -f raw -O qcow2 - piped.qcow2`);
    expect(q.stderr).toBe('');
    expect(q.status).toBe(0);
    same(big, 'piped.qcow2', 'raw', 'qcow2');
    // To vdi (no shrinking resize) the input is spilled first, and the spill cannot be made here.
    const v = run(`${input} | ${JSON.stringify(BIN)} convert -f raw -O vdi - piped.vdi`);
    expect(v.status).toBe(1);
    expect(v.stderr).toBe(
      `vdisk: cannot make a temporary directory in ${ro} for standard input: No such file or directory (set TMPDIR)\n`,
    );
  });

  describe('raw into qcow2 without a temporary file: what qemu-img makes from the file', () => {
    // Layout, allocation and content as qemu-img's convert of the same bytes read from a file;
    // the stream's length is known only at its end, so the target is made at a provisional size
    // and shrunk to it (the L1 table keeps its provisional length, as QEMU's shrink keeps it).
    const mixed = 'mixed.raw';
    beforeAll(() => {
      // 37 MiB + 1234 bytes: data, a hole, a partial cluster of zeros and data, an odd tail.
      const r = sh(
        `{ head -c 3M src.raw; head -c 30M /dev/zero; head -c 100K src.raw | tail -c 60K; head -c 4M /dev/zero; head -c 1234 /dev/urandom; } > ${mixed}`,
      );
      expect(r.code).toBe(0);
    });
    // l1: the provisional L1 table's bytes (qcow2StreamTargetSize): the target keeps them, where
    // qemu-img's L1 table of a small image takes one 4 KiB block. With one cluster of L1 table
    // the clusters are qemu-img's; with more (small clusters) the data comes after them.
    const cases: Array<{ name: string; input: string; args: string; l1: number }> = [
      { name: 'default options', input: mixed, args: '', l1: 65536 },
      {
        name: 'cluster_size=4096 (an L1 table of 1024 clusters)',
        input: mixed,
        args: '-o cluster_size=4096',
        l1: 4 * MiB,
      },
      { name: 'extended_l2=on, compat=1.1', input: mixed, args: '-o extended_l2=on,compat=1.1', l1: 65536 },
      { name: 'compat=0.10 and -S 64k', input: mixed, args: '-o compat=0.10 -S 64k', l1: 65536 },
      { name: 'lazy_refcounts=on', input: mixed, args: '-o lazy_refcounts=on', l1: 65536 },

      { name: 'the 2 GiB sparse image', input: 'big.raw', args: '', l1: 65536 },
    ];
    for (const c of cases) {
      it(c.name, () => {
        const out = `grown-${cases.indexOf(c)}`;
        const r = sh(`cat ${c.input} | vdisk convert -f raw -O qcow2 ${c.args} - ${out}.v.qcow2`);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        const q = sh(`qemu-img convert -f raw -O qcow2 ${c.args} ${c.input} ${out}.q.qcow2`);
        expect(q.code).toBe(0);
        same(c.input, `${out}.v.qcow2`, 'raw', 'qcow2');
        checked(`${out}.v.qcow2`, 'qcow2');
        const info = (f: string) => JSON.parse(qemuImgOk(['info', '--output=json', p(f)]));
        const [vi, qi] = [info(`${out}.v.qcow2`), info(`${out}.q.qcow2`)];
        expect(vi['virtual-size']).toBe(qi['virtual-size']);
        expect(vi['format-specific']).toEqual(qi['format-specific']);
        const extra = vi['actual-size'] - qi['actual-size'];
        expect(extra).toBeGreaterThanOrEqual(0);
        expect(extra).toBeLessThanOrEqual(c.l1 - 4096);
        const map = (f: string, offsets: boolean) =>
          JSON.parse(qemuImgOk(['map', '--output=json', '-f', 'qcow2', p(f)])).map(
            (e: Record<string, unknown>) => (offsets ? e : { ...e, offset: e['offset'] !== undefined }),
          );
        const one = c.l1 === 65536;
        expect(map(`${out}.v.qcow2`, one)).toEqual(map(`${out}.q.qcow2`, one));
        noSpill();
      });
    }

    it('-c: compressed clusters, content and check as qemu-img -c', () => {
      const r = sh(`cat ${mixed} | vdisk convert -c -f raw -O qcow2 - grown-c.qcow2`);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      same(mixed, 'grown-c.qcow2', 'raw', 'qcow2');
      checked('grown-c.qcow2', 'qcow2');
      const q = sh(`qemu-img convert -c -f raw -O qcow2 ${mixed} grown-c.q.qcow2`);
      expect(q.code).toBe(0);
      const check = (f: string) => JSON.parse(qemuImgOk(['check', '--output=json', p(f)]));
      const [vc, qc] = [check('grown-c.qcow2'), check('grown-c.q.qcow2')];
      expect(vc['allocated-clusters']).toBe(qc['allocated-clusters']);
      expect(vc['compressed-clusters']).toBe(qc['compressed-clusters']);
      noSpill();
    });

    it('encrypted (luks in qcow2): content and check with the key, through the shrink', () => {
      const r = sh(
        `cat ${mixed} | vdisk convert -f raw -O qcow2 --object secret,id=s0,data=pw -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 - grown-e.qcow2`,
      );
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const opts = `driver=qcow2,file.filename=${p('grown-e.qcow2')},encrypt.key-secret=s0`;
      const secret = ['--object', 'secret,id=s0,data=pw'];
      const raw = `driver=raw,file.filename=${p(mixed)}`;
      const cmp = qemuImg(['compare', ...secret, '--image-opts', raw, opts]);
      expect(cmp.stdout + cmp.stderr).toBe('Images are identical.\n');
      expect(qemuImg(['check', ...secret, '--image-opts', opts]).code).toBe(0);
      noSpill();
    });

    it('an empty stream: a qcow2 of size 0', () => {
      const r = sh('vdisk convert -f raw -O qcow2 - empty.qcow2 < /dev/null');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(JSON.parse(qemuImgOk(['info', '--output=json', p('empty.qcow2')]))['virtual-size']).toBe(0);
      checked('empty.qcow2', 'qcow2');
    });

    it('options that need the size first (preallocation, -S 0) still spill, and say so', () => {
      for (const [args, out] of [
        ['-o preallocation=metadata', 'pre.qcow2'],
        ['-S 0', 's0.qcow2'],
      ] as const) {
        const r = sh(`cat src.raw | vdisk convert -f raw -O qcow2 ${args} - ${out}`);
        expect(r.code).toBe(0);
        expect(r.stderr).toMatch(SPILL);
        same('src.raw', out, 'raw', 'qcow2');
        noSpill();
      }
    });
  });

  it('a signal while reading removes the temporary file', async () => {
    const child = spawn(BIN, ['convert', '-f', 'raw', '-O', 'vdi', '-', p('sig.vdi')], {
      cwd: dir,
      env: { ...process.env, TMPDIR: tmp },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    // The child is killed with its input open: its end of the pipe goes away (EPIPE here).
    child.stdin.on('error', () => {});
    child.stdin.write(Buffer.alloc(MiB, 7));
    for (let i = 0; i < 200 && readdirSync(tmp).length === 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(readdirSync(tmp)).toHaveLength(1);
    const done = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })),
    );
    child.kill('SIGTERM');
    expect(await done).toEqual({ code: null, signal: 'SIGTERM' });
    noSpill();
  });
});
