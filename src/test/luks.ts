/**
 * Oracle helpers for raw luks images opened with one secret (`s0`): qemu-img and qemu-io with
 * `--object secret` and `--image-opts`, retried while QEMU's PBKDF2 timing fails (qemuImgLuks).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { qemuImgLuks, qemuImgOk, vdisk } from './oracle.js';

export const OBJ = ['--object', 'secret,id=s0,data=hunter2'];
export const luksOpts = (p: string) => `driver=luks,key-secret=s0,file.filename=${p}`;

/** qemu-io commands on a luks image. */
export function qemuIoLuks(p: string, cmds: string[]): void {
  for (let i = 0; ; i++) {
    const r = spawnSync('qemu-io', [...OBJ, '--image-opts', luksOpts(p), ...cmds.flatMap((c) => ['-c', c])], {
      encoding: 'utf8',
    });
    const out = r.stderr + r.stdout;
    if (r.status === 0 && !/error|failed/i.test(out)) return;
    if (i >= 20 || !out.includes('Unable to get accurate CPU usage')) throw new Error(`qemu-io: ${out}`);
  }
}

/** qemu-img create -f luks with the secret. */
export function qemuCreateLuks(args: string[]): void {
  const r = qemuImgLuks(['create', '-q', '-f', 'luks', ...OBJ, ...args]);
  if (r.code !== 0) throw new Error(r.stderr);
}

/** qemu-img's raw content of a luks image (converted into `dir`). */
export function qemuRawLuks(dir: string, p: string): Buffer {
  const out = join(dir, 'q.raw');
  qemuImgOk(['convert', ...OBJ, '--image-opts', luksOpts(p), '-O', 'raw', out]);
  return readFileSync(out);
}

/** vdisk's raw content of a luks image (converted into `dir`), which must succeed silently. */
export async function vdiskRawLuks(dir: string, p: string): Promise<Buffer> {
  const out = join(dir, 'v.raw');
  const r = await vdisk(['convert', ...OBJ, '--image-opts', luksOpts(p), '-O', 'raw', out]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return readFileSync(out);
}
