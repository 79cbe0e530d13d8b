/**
 * Run qemu-img and vdisk on the same arguments and compare what they print: vdisk's text is
 * qemu-img's with the program name changed ("qemu-img: …" → "vdisk: …").
 */
import { qemuImg, type RunResult, vdisk } from './oracle.js';

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
