/**
 * The pipe phase of `npm run bench`: `vdisk convert … -` against the same convert to or from a
 * file, in the same run, on a qcow2 image made by qemu-img (and the raw image it was made from). qemu-img has no pipe mode (it
 * seeks in its output), so the reference is vdisk's own file-to-file convert: the ratio says
 * what streaming costs. Each case runs `repeat` times per side, alternating, `sync` before
 * each; wall time is measured around `bash -c` (the pipeline's `cat` included) and the peak RSS
 * is the vdisk process's own (/usr/bin/time -f %M around it, inside the pipeline).
 */

import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { markdownTable, median } from './stats.js';

export interface PipeBenchOptions {
  dir: string;
  /** A qcow2 image made by qemu-img, in `dir`. */
  image: string;
  /** The raw image it was made from, in `dir`. */
  raw: string;
  label: string;
  repeat: number;
  only?: string | undefined;
  vdisk: string;
}

interface Side {
  /** A bash command; $V is vdisk, $IMG the image, $RAW the raw one, $RSS where time writes the peak RSS. */
  script: string;
  out: string;
}

function run(dir: string, side: Side, o: PipeBenchOptions): { seconds: number; rssKiB: number } {
  rmSync(join(dir, side.out), { force: true });
  spawnSync('sync');
  const t0 = performance.now();
  const r = spawnSync('bash', ['-c', `set -eo pipefail\n${side.script}`], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, V: o.vdisk, IMG: o.image, RAW: o.raw, RSS: 'rss.txt' },
  });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${side.script} failed (${r.status}): ${r.stderr}`);
  return { seconds, rssKiB: Number(readFileSync(join(dir, 'rss.txt'), 'utf8').trim()) };
}

const T = '/usr/bin/time -f %M -o "$RSS" "$V"';

export function runPipeBench(o: PipeBenchOptions): string {
  const cases: Array<{ name: string; file: Side; pipe: Side }> = [
    {
      name: `qcow2→qcow2 to stdout (${o.label})`,
      file: { script: `${T} convert -f qcow2 -O qcow2 "$IMG" f.qcow2`, out: 'f.qcow2' },
      pipe: { script: `${T} convert -f qcow2 -O qcow2 "$IMG" - | cat > p.qcow2`, out: 'p.qcow2' },
    },
    {
      name: `qcow2→vmdk streamOptimized to stdout (${o.label})`,
      file: {
        script: `${T} convert -f qcow2 -O vmdk -o subformat=streamOptimized "$IMG" f.vmdk`,
        out: 'f.vmdk',
      },
      pipe: {
        script: `${T} convert -f qcow2 -O vmdk -o subformat=streamOptimized "$IMG" - | cat > p.vmdk`,
        out: 'p.vmdk',
      },
    },
    {
      // No temporary file: the target is made at a provisional size and set to the length.
      name: `raw→qcow2 from stdin (${o.label})`,
      file: { script: `${T} convert -f raw -O qcow2 "$RAW" f.qcow2`, out: 'f.qcow2' },
      pipe: { script: `cat "$RAW" | ${T} convert -f raw -O qcow2 - p.qcow2`, out: 'p.qcow2' },
    },
    {
      name: `qcow2→raw from stdin, in order (${o.label})`,
      file: { script: `${T} convert -f qcow2 -O raw "$IMG" f.raw`, out: 'f.raw' },
      pipe: { script: `cat "$IMG" | ${T} convert -f qcow2 -O raw - p.raw`, out: 'p.raw' },
    },
  ];
  const rows: string[][] = [];
  for (const c of cases) {
    if (o.only !== undefined && !c.name.includes(o.only)) continue;
    const t: Record<'file' | 'pipe', number[]> = { file: [], pipe: [] };
    const rss: Record<'file' | 'pipe', number[]> = { file: [], pipe: [] };
    for (let i = 0; i < o.repeat; i++) {
      for (const side of i % 2 === 0 ? (['file', 'pipe'] as const) : (['pipe', 'file'] as const)) {
        const r = run(o.dir, c[side], o);
        t[side].push(r.seconds);
        rss[side].push(r.rssKiB);
      }
    }
    // Both outputs must read the same.
    const cmp = spawnSync('qemu-img', ['compare', c.file.out, c.pipe.out], { cwd: o.dir, encoding: 'utf8' });
    if (cmp.status !== 0) throw new Error(`${c.name}: outputs differ: ${cmp.stdout}${cmp.stderr}`);
    rmSync(join(o.dir, c.file.out), { force: true });
    rmSync(join(o.dir, c.pipe.out), { force: true });
    const f = median(t.file);
    const p = median(t.pipe);
    const mib = (xs: number[]) => (Math.max(...xs) / 1024).toFixed(0);
    rows.push([c.name, f.toFixed(3), p.toFixed(3), (p / f).toFixed(2), mib(rss.file), mib(rss.pipe)]);
    process.stderr.write(`bench: ${c.name} done\n`);
  }
  if (rows.length === 0) return '';
  const head = ['pipe case', 'file s', 'pipe s', 'ratio', 'file MiB', 'pipe MiB'];
  return (
    `${markdownTable(head, rows)}\n\nvdisk convert through a pipe (- as output, or as the source fed by cat) against ` +
    `the same convert with files; median wall time of ${o.repeat} runs each (alternating, sync before ` +
    `each, the pipeline's cat included); ratio pipe / file; MiB: vdisk's peak RSS (/usr/bin/time -f %M)\n`
  );
}
