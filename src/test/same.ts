/**
 * Run qemu-img and vdisk on the same arguments and compare what they print: vdisk's text is
 * qemu-img's with the program name changed ("qemu-img: …" → "vdisk: …").
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { qemuImg, qemuImgOk, type RunResult, vdisk } from './oracle.js';

/** qemu-img's output as vdisk would print it. */
export function asVdisk(text: string): string {
  return text.replaceAll('qemu-img: ', 'vdisk: ').replaceAll("'qemu-img --help'", "'vdisk --help'");
}

export interface Both {
  qemu: RunResult;
  ours: RunResult;
}

/** Run both; `expect(ours).toEqual(expected)` style checks are left to the caller. */
export async function runBoth(args: string[], cwd?: string): Promise<Both> {
  const qemu = qemuImg(args, cwd);
  const ours = await vdisk(args, cwd);
  return {
    qemu: { code: qemu.code, stdout: asVdisk(qemu.stdout), stderr: asVdisk(qemu.stderr) },
    ours,
  };
}

/**
 * qemu-img on `qemuArgs` and vdisk on `oursArgs`: for commands that write, each tool its own
 * target (runBoth would have both write one, the second over the first).
 */
export async function runEach(qemuArgs: string[], oursArgs: string[], cwd?: string): Promise<Both> {
  const qemu = qemuImg(qemuArgs, cwd);
  const ours = await vdisk(oursArgs, cwd);
  return {
    qemu: { code: qemu.code, stdout: asVdisk(qemu.stdout), stderr: asVdisk(qemu.stderr) },
    ours,
  };
}

/**
 * qemu-img and vdisk on the same arguments: the same stderr (vdisk's "vdisk:" read as
 * "qemu-img:"), exit code and, unless `stdout: false`, stdout. Returns vdisk's result.
 */
export async function expectSameAsQemu(args: string[], opts: { stdout?: boolean } = {}): Promise<RunResult> {
  const q = qemuImg(args);
  const v = await vdisk(args);
  if (opts.stdout !== false) expect(v.stdout).toBe(q.stdout);
  expect(v.stderr.replaceAll('vdisk:', 'qemu-img:')).toBe(q.stderr);
  expect(v.code).toBe(q.code);
  return v;
}

export interface ConvertBothOptions {
  /** Compare `qemu-img map --output=json` of the two outputs (default true). */
  layout?: boolean;
  /** ... including host offsets (default true). */
  offsets?: boolean;
  /** Compare `qemu-img info --output=json` too (actual-size within 64 KiB; default false). */
  info?: boolean;
  /** How far actual-size may differ with `info` (bytes; default 64 KiB). */
  actualSlack?: number;
}

let convertRuns = 0;

/**
 * `convert ARGS` by qemu-img and by vdisk, each writing OUT inside its own new directory under
 * `dir`: the same messages and exit code, then (when it succeeded) outputs that qemu-img
 * compares equal, the same layout, a clean `qemu-img check` where the format has one.
 */
export async function convertBoth(
  dir: string,
  args: string[],
  out: string,
  fmt: string,
  opts: ConvertBothOptions = {},
): Promise<void> {
  convertRuns++;
  const q = join(dir, `qc${convertRuns}`);
  const v = join(dir, `vc${convertRuns}`);
  mkdirSync(q);
  mkdirSync(v);
  const abs = (d: string) => args.map((a) => (a === 'OUT' ? join(d, out) : a));
  const { qemu, ours } = await runEach(['convert', ...abs(q)], ['convert', ...abs(v)], dir);
  expect(ours).toEqual({
    ...qemu,
    stderr: qemu.stderr.replaceAll(q, v),
    stdout: qemu.stdout.replaceAll(q, v),
  });
  if (qemu.code !== 0) {
    expect(existsSync(join(v, out))).toBe(existsSync(join(q, out)));
    return;
  }
  const qo = join(q, out);
  const vo = join(v, out);
  expect(qemuImg(['compare', '-f', fmt, '-F', fmt, qo, vo]).stdout).toBe('Images are identical.\n');
  if (opts.layout !== false) {
    const map = (f: string, d: string) => {
      const text = qemuImgOk(['map', '--output=json', '-f', fmt, f]).replaceAll(d, '');
      return opts.offsets === false ? text.replace(/, "offset": \d+/g, '') : text;
    };
    expect(map(vo, v)).toBe(map(qo, q));
  }
  const check = qemuImg(['check', '-f', fmt, vo]);
  if (!check.stderr.includes('does not support checks')) {
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
  }
  if (opts.info === true) {
    // actual-size is the file system's allocation, which may differ by a block or two between
    // two files written alike (delayed allocation): compared within 64 KiB, the rest exactly.
    const info = (f: string, from: string) => {
      const j = JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, f]).replaceAll(from, q)) as Record<
        string,
        unknown
      >;
      const actual = j['actual-size'] as number;
      delete j['actual-size'];
      return { j, actual };
    };
    const vi = info(vo, v);
    const qi = info(qo, q);
    expect(vi.j).toEqual(qi.j);
    expect(Math.abs(vi.actual - qi.actual)).toBeLessThanOrEqual(opts.actualSlack ?? 65536);
  }
}
