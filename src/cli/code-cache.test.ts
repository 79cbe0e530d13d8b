/**
 * bin/vdisk runs dist/cli/vdisk.cjs with V8's code cache (scripts/build-cli.mjs): the cache is
 * taken as built, and a cache that does not fit (made for another build, or damaged) is left
 * aside with the same output.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const SCRIPT = join(ROOT, 'dist', 'cli', 'vdisk.cjs');

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vdisk-code-cache-'));
  writeFileSync(join(dir, 'a.raw'), Buffer.alloc(1 << 20, 7));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(bin: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(bin, ['info', '--output=json', 'a.raw'], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, VDISK_CODE_CACHE: 'report' },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** bin/vdisk and the script in a tree of their own, with `cache` as the script's cache. */
function copyWith(name: string, cache: Buffer | null): string {
  const root = join(dir, name);
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'dist', 'cli'), { recursive: true });
  for (const f of ['vdisk', 'package.json']) copyFileSync(join(ROOT, 'bin', f), join(root, 'bin', f));
  copyFileSync(SCRIPT, join(root, 'dist', 'cli', 'vdisk.cjs'));
  if (cache !== null) writeFileSync(join(root, 'dist', 'cli', 'vdisk.cjs.cache'), cache);
  return join(root, 'bin', 'vdisk');
}

describe('the CLI script and its code cache', () => {
  it('bin/vdisk takes the cache the build made', () => {
    const r = run(join(ROOT, 'bin', 'vdisk'));
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe('vdisk: code cache taken\n');
    expect(JSON.parse(r.stdout)).toMatchObject({ format: 'raw', 'virtual-size': 1 << 20 });
  });

  it('a cache for another build, a damaged one or none: the same output without it', () => {
    const cache = readFileSync(`${SCRIPT}.cache`);
    const id = cache.subarray(0, cache.indexOf(10) + 1);
    expect(id.toString()).toMatch(/^\/\/ vdisk [0-9a-f]{16}\n$/);
    const expected = run(join(ROOT, 'bin', 'vdisk')).stdout;
    const other = Buffer.concat([Buffer.from('// vdisk 0000000000000000\n'), cache.subarray(id.length)]);
    const damaged = Buffer.concat([id, Buffer.alloc(cache.length - id.length, 0x5a)]);
    for (const [name, c, how] of [
      ['other', other, 'stale'],
      ['damaged', damaged, 'rejected'],
      ['none', null, 'absent'],
    ] as const) {
      const r = run(copyWith(name, c));
      expect(r.status, `${name}: ${r.stderr}`).toBe(0);
      expect(r.stderr).toBe(`vdisk: code cache ${how}\n`);
      expect(r.stdout).toBe(expected);
    }
  });
});

describe("V8 flags set while the CLI runs (the addon's setV8Flags)", () => {
  it('take effect without V8 refusing the code cache', () => {
    // --allow-natives-syntax changes what V8 parses: a %-call compiles only once it is set.
    const addon = join(ROOT, 'native', 'build', 'Release', 'vdisk_native.node');
    const probe = `
      const a = { exports: {} };
      process.dlopen(a, ${JSON.stringify(addon)});
      const parses = () => { try { new Function('f', 'return %GetOptimizationStatus(f)'); return true; } catch { return false; } };
      const before = parses();
      const took = a.exports.setV8Flags('--allow-natives-syntax');
      const errors = [];
      for (const bad of [undefined, 42, 'x'.repeat(300)]) {
        try { a.exports.setV8Flags(bad); } catch (e) { errors.push(e.constructor.name); }
      }
      console.log(JSON.stringify({ before, took, after: parses(), errors }));`;
    const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      before: false,
      took: true,
      after: true,
      errors: ['TypeError', 'TypeError', 'TypeError'],
    });
    // bin/vdisk's commands set theirs (src/cli/engine.ts) after the script was compiled with its
    // cache: V8 still takes it (the first test), and the command still runs.
    const v = run(join(ROOT, 'bin', 'vdisk'));
    expect(v.stderr).toBe('vdisk: code cache taken\n');
  });
});
