/**
 * `npm run bench:storage`: what the registry stores for a class's images, layered against
 * flattened. One master of STORAGE_MASTER (2 GiB virtual, 60 % of it data) and STORAGE_OVERLAYS
 * (30) overlays of ~STORAGE_DELTA (50 MiB) each, made by qemu-img and qemu-io, uploaded to
 * `vdisk serve` as overlays of the master (backing_image_id). Glance cannot hold overlays: each
 * would be uploaded flattened, whose size `qemu-img measure -O qcow2` gives (checked against two
 * real flattens through the API, whose stored size is printed beside the measure).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSize } from '../core/size.js';
import { adminToken } from './keystone.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MiB = 1 << 20;
const MASTER = parseSize(process.env['STORAGE_MASTER'] ?? '2G') ?? 2 ** 31;
const OVERLAYS = Number(process.env['STORAGE_OVERLAYS'] ?? 30);
const DELTA = parseSize(process.env['STORAGE_DELTA'] ?? '50M') ?? 50 * MiB;
const PASSWORD = 'storage-secret';

function ok(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A deterministic generator for offsets and patterns. */
function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

async function serve(dir: string): Promise<{ child: ChildProcess; url: string; token: string }> {
  const child = spawn(
    process.execPath,
    [join(ROOT, 'bin/vdisk'), 'serve', '--port', '0', '--data-dir', dir],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, VDISK_ADMIN_PASSWORD: PASSWORD },
    },
  );
  const url = await new Promise<string>((res, rej) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) res(m[1]!);
    });
    child.on('exit', (c) => rej(new Error(`vdisk serve exited ${c}: ${err}`)));
  });
  return { child, url, token: await adminToken(url, PASSWORD) };
}

async function upload(
  url: string,
  token: string,
  file: string,
  body: Record<string, unknown>,
): Promise<string> {
  const c = await fetch(`${url}/v2/images`, {
    method: 'POST',
    headers: { 'X-Auth-Token': token, 'Content-Type': 'application/json' },
    body: JSON.stringify({ disk_format: 'qcow2', container_format: 'bare', ...body }),
  });
  const id = ((await c.json()) as { id: string }).id;
  await new Promise<void>((res, rej) => {
    const req = request(`${url}/v2/images/${id}/file`, {
      method: 'PUT',
      headers: {
        'X-Auth-Token': token,
        'Content-Type': 'application/octet-stream',
        'Content-Length': statSync(file).size,
      },
    });
    req.on('response', (r) => {
      r.resume();
      if (r.statusCode === 204) res();
      else rej(new Error(`upload ${file}: ${r.statusCode}`));
    });
    req.on('error', rej);
    createReadStream(file).pipe(req);
  });
  return id;
}

async function image(url: string, token: string, id: string): Promise<{ size: number; status: string }> {
  return (await (await fetch(`${url}/v2/images/${id}`, { headers: { 'X-Auth-Token': token } })).json()) as {
    size: number;
    status: string;
  };
}

async function main() {
  const dir = mkdtempSync(join(process.env['BENCH_DIR'] ?? tmpdir(), 'vdisk-storage-'));
  let child: ChildProcess | undefined;
  try {
    const master = join(dir, 'master.qcow2');
    process.stderr.write(
      `making a ${MASTER / MiB} MiB master and ${OVERLAYS} overlays of ~${DELTA / MiB} MiB…\n`,
    );
    ok('qemu-img', ['create', '-q', '-f', 'qcow2', master, String(MASTER)]);
    // 60 % data in 8 MiB runs with patterns (their content does not change qcow2's sizes).
    const cmds: string[] = [];
    for (let off = 0; off + 8 * MiB <= MASTER; off += 8 * MiB)
      if ((off / (8 * MiB)) % 5 < 3) cmds.push(`write -P ${(off / MiB) % 251} ${off} 8m`);
    for (let i = 0; i < cmds.length; i += 64)
      ok('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 64).flatMap((c) => ['-c', c]), master]);
    const overlays: string[] = [];
    for (let n = 0; n < OVERLAYS; n++) {
      const ov = join(dir, `student-${n}.qcow2`);
      ok('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'master.qcow2', '-F', 'qcow2', ov]);
      const rand = lcg(n + 1);
      const writes: string[] = [];
      for (let w = 0; w < DELTA / MiB; w++) {
        const off = Math.floor(rand() * (MASTER / MiB - 1)) * MiB;
        writes.push(`write -P ${(n * 7 + w) % 251} ${off} 1m`);
      }
      ok('qemu-io', ['-f', 'qcow2', ...writes.flatMap((c) => ['-c', c]), ov]);
      overlays.push(ov);
    }
    const s = await serve(join(dir, 'registry'));
    child = s.child;
    const masterId = await upload(s.url, s.token, master, { name: 'master' });
    const ids: string[] = [];
    for (const [n, ov] of overlays.entries())
      ids.push(await upload(s.url, s.token, ov, { name: `student-${n}`, backing_image_id: masterId }));
    let stored = (await image(s.url, s.token, masterId)).size;
    for (const id of ids) stored += (await image(s.url, s.token, id)).size;
    // What Glance would store: each overlay flattened (qemu-img measure's required size).
    let flattened = 0;
    const measured: number[] = [];
    for (const ov of overlays) {
      const m = JSON.parse(ok('qemu-img', ['measure', '--output=json', '-O', 'qcow2', ov])) as {
        required: number;
      };
      measured.push(m.required);
      flattened += m.required;
    }
    // Two real flattens through the API, to check the measure against what is stored.
    const real: string[] = [];
    for (const [k, id] of ids.slice(0, 2).entries()) {
      const r = await fetch(`${s.url}/v2/images/${id}/actions/flatten`, {
        method: 'POST',
        headers: { 'X-Auth-Token': s.token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ name: `flat-${k}` }),
      });
      const nid = ((await r.json()) as { id: string }).id;
      let img = await image(s.url, s.token, nid);
      while (img.status === 'importing') {
        await new Promise((res) => setTimeout(res, 200));
        img = await image(s.url, s.token, nid);
      }
      real.push(
        `${(img.size / MiB).toFixed(0)} MiB stored (measure: ${(measured[k]! / MiB).toFixed(0)} MiB)`,
      );
    }
    const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
    console.log(
      `Storage: one ${MASTER / MiB} MiB master (${cmds.length * 8} MiB of data), ${OVERLAYS} overlays of ${DELTA / MiB} MiB of writes each\n`,
    );
    console.log(`| | bytes stored |`);
    console.log(`| --- | --- |`);
    console.log(`| vdisk: the master + ${OVERLAYS} overlays as deltas | ${gib(stored)} |`);
    console.log(`| Glance: ${OVERLAYS} flattened images (qemu-img measure -O qcow2) | ${gib(flattened)} |`);
    console.log(`| ratio | ${(flattened / stored).toFixed(1)}× less with vdisk |`);
    console.log(`\nflatten through the API, checked: ${real.join('; ')}`);
  } finally {
    child?.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(`bench:storage: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
