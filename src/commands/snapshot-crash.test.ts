/**
 * Crash safety of `vdisk snapshot -c` and `-d` (issue 3's proof): the CLI runs as a child
 * process and is killed with SIGKILL at random instants of its work. `qemu-img check` must
 * then find no corruption (vdisk's shadow transaction even leaves no leak: everything before
 * the single header write lands in clusters that are free in the old state), and the image
 * must read as either the state before or the state after: the active content unchanged,
 * the snapshot either absent or complete.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, watch } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLI_ENTRY,
  qemuImg,
  qemuImgOk,
  qemuIo,
  qemuRawDigest,
  sha256,
  TSX_LOADER,
  tempDir,
} from '../test/oracle.js';
import { rng } from '../test/rng.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-snapshot-crash-'));
});
afterAll(() => cleanup());

const p = (name: string) => join(dir, name);
const cli = (args: string[]) => [...['--import', TSX_LOADER, CLI_ENTRY], ...args];

function timed(args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, cli(args), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`vdisk ${args.join(' ')} failed: ${r.stderr}`);
  return performance.now() - t0;
}

/**
 * Run vdisk and kill it: after delayMs, or (watchFile) delayMs after its first write to
 * that file, which aims the kill at the write phase. True when the kill came first.
 */
function runAndKill(args: string[], delayMs: number, watchFile?: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, cli(args), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    let timer: NodeJS.Timeout | undefined;
    const watcher =
      watchFile === undefined
        ? undefined
        : watch(watchFile, () => {
            watcher?.close();
            timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
          });
    if (watcher === undefined) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      watcher?.close();
      if (signal === 'SIGKILL') resolve(true);
      else if (code === 0) resolve(false);
      else reject(new Error(`vdisk exited with ${code}: ${err}`));
    });
  });
}

function snapshotNames(image: string): string[] {
  const info = JSON.parse(qemuImgOk(['info', '--output=json', image])) as {
    snapshots?: Array<{ name: string }>;
  };
  return (info.snapshots ?? []).map((s) => s.name);
}

function snapDigest(image: string, name: string): string {
  const out = p('snap.raw');
  qemuImgOk(['convert', '-l', name, '-O', 'raw', image, out]);
  return qemuRawDigest(out, 'raw');
}

describe('snapshot crash safety (SIGKILL)', () => {
  it('a killed snapshot -c / -d / -a leaves the before or the after state, and check finds no error', async () => {
    // Many small clusters and L2 tables, so that the work takes long enough to be hit.
    const master = p('master.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-o', 'cluster_size=512', master, '24M']);
    qemuIo(master, ['write -P 1 0 12M', 'write -c -P 2 12M 1M']);
    qemuImgOk(['snapshot', '-c', 'old', master]);
    const oldDigest = qemuRawDigest(master);
    qemuIo(master, ['write -P 3 0 6M', 'write -P 4 20M 2M']);
    const active = qemuRawDigest(master);
    expect(active).not.toBe(oldDigest);

    // Start-up (open + list) and the whole operations, to aim the kills at the work itself.
    const probe = p('probe.qcow2');
    copyFileSync(master, probe);
    const startup = timed(['snapshot', '-l', probe]);
    const create = timed(['snapshot', '-c', 'new', probe]);
    copyFileSync(master, probe);
    const del = timed(['snapshot', '-d', 'old', probe]);
    copyFileSync(master, probe);
    const apply = timed(['snapshot', '-a', 'old', probe]);

    const masterBytes = sha256(readFileSync(master));
    const rand = rng(20261124);
    let killedMidway = 0;
    for (const [op, total] of [
      ['create', create],
      ['delete', del],
      ['apply', apply],
    ] as const) {
      for (let round = 0; round < 10; round++) {
        const img = p(`${op}-${round}.qcow2`);
        copyFileSync(master, img);
        const flag = op === 'create' ? ['-c', 'new'] : op === 'delete' ? ['-d', 'old'] : ['-a', 'old'];
        const args = ['snapshot', ...flag, img];
        // Even rounds: a random instant of the whole run; odd rounds: soon after the first write.
        const lo = startup * 0.9;
        const killed =
          round % 2 === 0
            ? await runAndKill(args, lo + rand() * Math.max(20, total - lo))
            : await runAndKill(args, rand() * 40, img);
        // Killed in the middle of the work: the file was written, the header not switched.
        const midway = killed && sha256(readFileSync(img)) !== masterBytes;
        const r = qemuImg(['check', img]);
        expect(r.stdout + r.stderr).not.toMatch(/ERROR|\d+ errors were found|Leaked/);
        expect(r.code).toBe(0);
        const names = snapshotNames(img);
        const now = qemuRawDigest(img);
        if (op === 'apply') {
          // Before (the active content) or after (the snapshot's); the snapshot itself intact.
          expect([active, oldDigest]).toContain(now);
          expect(names).toEqual(['old']);
          expect(snapDigest(img, 'old')).toBe(oldDigest);
          if (midway && now === active) killedMidway++;
          expect(spawnSync(process.execPath, cli(args)).status).toBe(0);
          expect(qemuImg(['check', img]).code).toBe(0);
          expect(qemuRawDigest(img)).toBe(oldDigest);
          continue;
        }
        expect(now).toBe(active);
        if (op === 'create') {
          expect(names[0]).toBe('old');
          expect(snapDigest(img, 'old')).toBe(oldDigest);
          if (names.length === 2) {
            expect(names[1]).toBe('new');
            expect(snapDigest(img, 'new')).toBe(active);
          } else expect(names).toEqual(['old']);
          if (midway && names.length === 1) killedMidway++;
        } else {
          if (names.length === 1) expect(snapDigest(img, 'old')).toBe(oldDigest);
          else expect(names).toEqual([]);
          if (midway && names.length === 1) killedMidway++;
        }
        // Whatever state it was left in, the operation can be run (again) to the end.
        if (!(op === 'delete' && names.length === 0)) {
          expect(spawnSync(process.execPath, cli(args)).status).toBe(0);
          expect(qemuImg(['check', img]).code).toBe(0);
          expect(qemuRawDigest(img)).toBe(active);
        }
      }
    }
    // Some kills landed after the work began and before the header switch (so the test can fail).
    expect(killedMidway).toBeGreaterThan(0);
  }, 300_000);
});
