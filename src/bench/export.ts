/**
 * The export phase of `npm run bench:server`: a qcow2 master of BENCH_EXPORT_SIZE (2 GiB)
 * handed out as a streamOptimized vmdk (what an ESXi or VirtualBox user asks for), two ways,
 * in the same run, rounds taking turns:
 *
 *   - vdisk: `GET /v2/images/{id}/export?disk_format=vmdk&subformat=streamOptimized`, written
 *     to a file by a plain HTTP client;
 *   - what users do today: `openstack image save --file x.qcow2 ID` (the real client, against
 *     the same vdisk server, whose downloads are faster than Glance's) then `qemu-img convert
 *     -O vmdk -o subformat=streamOptimized x.qcow2 x.vmdk`, one after the other.
 *
 * Both outputs are checked with `qemu-img compare` against the source. The image is made from
 * the files under /usr (binaries, libraries, text: what an OS image holds, compressible about
 * as much), laid out in runs with holes between them, converted to qcow2 by qemu-img.
 */
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  createReadStream,
  createWriteStream,
  lstatSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeSync,
} from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

const MiB = 1 << 20;

export interface ExportTarget {
  url: string;
  pid: number;
  headers: Record<string, string>;
  adminPassword: string;
}

export interface ExportFigures {
  size: number;
  dataBytes: number;
  vdisk: number[];
  today: { save: number; convert: number }[];
  rss: number | null;
  /** The server's resident memory just before the exports (what it holds idle). */
  rssBefore: number | null;
  outBytes: { vdisk: number; qemu: number };
}

/** Files under /usr, in a stable order, for content. */
function* usrFiles(): Generator<string> {
  const stack = ['/usr/lib', '/usr/share', '/usr/bin'];
  while (stack.length > 0) {
    const d = stack.shift()!;
    let names: string[];
    try {
      names = readdirSync(d).sort();
    } catch {
      continue;
    }
    for (const n of names) {
      const p = join(d, n);
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (st === undefined) continue;
      if (st.isDirectory()) stack.push(p);
      else if (st.isFile() && st.size > 0) yield p;
    }
  }
}

/** A raw disk of `size` bytes with about `data` bytes of /usr content in runs, holes between. */
function makeRaw(path: string, size: number, data: number): number {
  const out = openSync(path, 'w');
  const buf = Buffer.allocUnsafe(4 * MiB);
  let pos = 0;
  let written = 0;
  try {
    const files = usrFiles();
    let fill = 0;
    // Runs of 8 MiB of data, then a 1-4 MiB hole, until `data` bytes are written.
    while (written < data && pos < size) {
      let run = Math.min(8 * MiB, data - written, size - pos);
      while (run > 0) {
        // Fill the buffer from the next files.
        fill = 0;
        while (fill < Math.min(buf.length, run)) {
          const f = files.next();
          if (f.done === true) break;
          let fd: number;
          try {
            fd = openSync(f.value, 'r');
          } catch {
            continue;
          }
          try {
            fill += readSync(fd, buf, fill, Math.min(buf.length, run) - fill, 0);
          } catch {
            // unreadable: skip
          } finally {
            closeSync(fd);
          }
        }
        if (fill === 0) break;
        writeSync(out, buf, 0, fill, pos);
        pos += fill;
        written += fill;
        run -= fill;
      }
      pos += MiB * (1 + (Math.floor(pos / MiB) % 4));
    }
    if (pos < size) writeSync(out, Buffer.alloc(1), 0, 1, size - 1);
  } finally {
    closeSync(out);
  }
  return written;
}

/** VmRSS of a process, in MiB. */
function currentRss(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : null;
  } catch {
    return null;
  }
}

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.status} ${r.stderr}`);
  return (performance.now() - t0) / 1000;
}

function get(t: ExportTarget, path: string, file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    // A new connection each time: a kept-alive socket the server closes meanwhile would hang up.
    request(`${t.url}${path}`, { headers: t.headers, agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`GET ${path}: ${res.statusCode}`));
      pipeline(res, createWriteStream(file)).then(() => resolve((performance.now() - t0) / 1000), reject);
    })
      .on('error', reject)
      .end();
  });
}

async function uploadFile(t: ExportTarget, file: string): Promise<string> {
  const create = await fetch(`${t.url}/v2/images`, {
    method: 'POST',
    headers: { ...t.headers, 'Content-Type': 'application/json' },
    body: JSON.stringify({ name: 'bench-export', disk_format: 'qcow2', container_format: 'bare' }),
  });
  const id = ((await create.json()) as { id: string }).id;
  await new Promise<void>((resolve, reject) => {
    const req = request(`${t.url}/v2/images/${id}/file`, {
      agent: false,
      method: 'PUT',
      headers: {
        ...t.headers,
        'Content-Type': 'application/octet-stream',
        'Content-Length': statSync(file).size,
      },
    });
    req.on('response', (res) => {
      res.resume();
      if (res.statusCode === 204) resolve();
      else reject(new Error(`upload: ${res.statusCode}`));
    });
    req.on('error', reject);
    createReadStream(file).pipe(req);
  });
  return id;
}

export async function exportBench(
  t: ExportTarget,
  dir: string,
  o: {
    size: number;
    repeat: number;
    resetPeak: (pid: number) => void;
    peakRss: (pid: number) => number | null;
  },
  log: (s: string) => void,
): Promise<ExportFigures> {
  const raw = join(dir, 'export-src.raw');
  const src = join(dir, 'export-src.qcow2');
  log(`export: making a ${o.size / MiB} MiB qcow2 from /usr's files…\n`);
  const dataBytes = makeRaw(raw, o.size, Math.floor(o.size * 0.6));
  run('qemu-img', ['convert', '-O', 'qcow2', raw, src]);
  run('rm', ['-f', raw]);
  const id = await uploadFile(t, src);
  const env = {
    ...process.env,
    OS_AUTH_URL: `${t.url}/v3`,
    OS_USERNAME: 'admin',
    OS_PASSWORD: t.adminPassword,
    OS_PROJECT_NAME: 'admin',
    OS_USER_DOMAIN_NAME: 'Default',
    OS_PROJECT_DOMAIN_NAME: 'Default',
    OS_IDENTITY_API_VERSION: '3',
    HOME: dir,
  };
  const fig: ExportFigures = {
    size: o.size,
    dataBytes,
    vdisk: [],
    today: [],
    rss: null,
    rssBefore: null,
    outBytes: { vdisk: 0, qemu: 0 },
  };
  const viaVdisk = async () => {
    const out = join(dir, 'export-vdisk.vmdk');
    fig.rssBefore ??= currentRss(t.pid);
    o.resetPeak(t.pid);
    fig.vdisk.push(await get(t, `/v2/images/${id}/export?disk_format=vmdk&subformat=streamOptimized`, out));
    fig.rss = Math.max(fig.rss ?? 0, o.peakRss(t.pid) ?? 0);
    fig.outBytes.vdisk = statSync(out).size;
  };
  const today = () => {
    const dl = join(dir, 'export-dl.qcow2');
    const out = join(dir, 'export-qemu.vmdk');
    const save = run('openstack', ['image', 'save', '--file', dl, id], env);
    const convert = run('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', dl, out]);
    fig.today.push({ save, convert });
    fig.outBytes.qemu = statSync(out).size;
  };
  for (let i = 0; i < o.repeat; i++) {
    log(`export: round ${i + 1} of ${o.repeat}\n`);
    if (i % 2 === 0) {
      await viaVdisk();
      today();
    } else {
      today();
      await viaVdisk();
    }
  }
  for (const f of ['export-vdisk.vmdk', 'export-qemu.vmdk']) {
    const r = spawnSync('qemu-img', ['compare', '-F', 'vmdk', src, join(dir, f)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`export: ${f} differs from the source: ${r.stdout}${r.stderr}`);
  }
  return fig;
}
