/**
 * --object secrets and --image-opts belong to one command invocation (OpenContext): two
 * commands running at once in one process (the registry's conversions, a library user's) each
 * see their own, whatever the other was given. The images are made by qemu-img, the same
 * secret id `s0` naming a different passphrase for each.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Secrets } from '../core/secrets.js';
import { qemuImgLuks, qemuImgOk, tempDir, vdisk } from '../test/oracle.js';
import { convertCommand } from './convert.js';
import { infoCommand } from './info.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const MiB = 1 << 20;
const PASS = { a: 'hunter2', b: 'swordfish' } as const;

/** A guest of 2 MiB whose bytes depend on `seed`. */
function content(seed: number): Buffer {
  const b = Buffer.alloc(2 * MiB);
  for (let i = 0; i < b.length; i += 4096) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

/** A luks image of `data`, made by qemu-img with secret s0 = `pass`. */
function luksImage(name: string, data: Buffer, pass: string): string {
  const raw = join(dir, `${name}.raw`);
  writeFileSync(raw, data);
  const p = join(dir, `${name}.luks`);
  const r = qemuImgLuks([
    'convert',
    '--object',
    `secret,id=s0,data=${pass}`,
    '-O',
    'luks',
    '-o',
    'key-secret=s0,iter-time=10',
    raw,
    p,
  ]);
  if (r.code !== 0) throw new Error(r.stderr);
  return p;
}

const opts = (p: string) => `driver=luks,key-secret=s0,file.filename=${p}`;
const secret = (pass: string) => new Secrets().define('s0', new TextEncoder().encode(pass));

describe('commands run at once keep their own secrets and --image-opts', () => {
  it('convert: two luks images under the same secret id, and a plain file name, at once', async () => {
    const da = content(1);
    const db = content(2);
    const dc = content(3);
    const a = luksImage('a', da, PASS.a);
    const b = luksImage('b', db, PASS.b);
    const c = join(dir, 'c.qcow2');
    writeFileSync(join(dir, 'c.raw'), dc);
    qemuImgOk(['convert', '-O', 'qcow2', join(dir, 'c.raw'), c]);
    const out = (n: string) => join(dir, `${n}.out`);
    const run = (source: string, output: string, ctx: { imageOpts?: boolean; secrets?: Secrets }) =>
      convertCommand({ sources: [source], output, outputFormat: 'raw', ...ctx });

    // Alone, each as the CLI would run it.
    await run(opts(a), out('a1'), { imageOpts: true, secrets: secret(PASS.a) });
    expect(readFileSync(out('a1')).equals(da)).toBe(true);

    // At once: the luks unlocks (PBKDF2 on libuv's pool) and the copies interleave.
    await Promise.all([
      run(opts(a), out('a'), { imageOpts: true, secrets: secret(PASS.a) }),
      run(opts(b), out('b'), { imageOpts: true, secrets: secret(PASS.b) }),
      // A file name, which as image options would name a block node ("Cannot find device").
      run(c, out('c'), {}),
    ]);
    expect(readFileSync(out('a')).equals(da)).toBe(true);
    expect(readFileSync(out('b')).equals(db)).toBe(true);
    expect(readFileSync(out('c')).equals(dc)).toBe(true);

    // The secrets decide: swapped, neither unlocks; without --image-opts the options are a name.
    const swapped = await Promise.allSettled([
      run(opts(a), out('x'), { imageOpts: true, secrets: secret(PASS.b) }),
      run(opts(b), out('y'), { imageOpts: true, secrets: secret(PASS.a) }),
      run(opts(a), out('z'), { secrets: secret(PASS.a) }),
      run(opts(a), out('w'), { imageOpts: true }),
    ]);
    const reasons = swapped.map((s) => (s.status === 'rejected' ? String(s.reason) : 'fulfilled'));
    expect(reasons[0]).toContain('Invalid password, cannot unlock any keyslot');
    expect(reasons[1]).toContain('Invalid password, cannot unlock any keyslot');
    expect(reasons[2]).toContain('No such file or directory');
    expect(reasons[3]).toContain("No secret with id 's0'");
  });

  it('info and the CLI: --object and --image-opts of one command never reach another', async () => {
    const a = luksImage('a', content(4), PASS.a);
    const b = luksImage('b', content(5), PASS.b);
    const infos = await Promise.all([
      infoCommand({ filename: opts(a), imageOpts: true, secrets: secret(PASS.a) }),
      infoCommand({ filename: b, format: 'luks' }),
    ]);
    // qemu-img names the image opened by options json:{…}, the other by its file name.
    const q = JSON.parse(
      qemuImgOk([
        'info',
        '--output=json',
        '--object',
        `secret,id=s0,data=${PASS.a}`,
        '--image-opts',
        opts(a),
      ]),
    );
    expect(infos.map((i) => i[0]!.filename)).toEqual([q.filename, b]);
    expect(q.filename).toMatch(/^json:/);

    // The CLI, two commands at once in one process, each with its own s0 (main() used to
    // share them and forget them when the first one finished).
    const cli = (p: string, pass: string, out: string) =>
      vdisk(['convert', '--object', `secret,id=s0,data=${pass}`, '--image-opts', opts(p), '-O', 'raw', out]);
    const [ra, rb, rc] = await Promise.all([
      cli(a, PASS.a, join(dir, 'a.out')),
      cli(b, PASS.b, join(dir, 'b.out')),
      vdisk(['info', '--output=json', '-f', 'luks', a]),
    ]);
    expect([ra.stderr, rb.stderr, rc.stderr]).toEqual(['', '', '']);
    expect([ra.code, rb.code, rc.code]).toEqual([0, 0, 0]);
    expect(readFileSync(join(dir, 'a.out')).equals(content(4))).toBe(true);
    expect(readFileSync(join(dir, 'b.out')).equals(content(5))).toBe(true);
  });
});
