/**
 * Throwaway real servers for tests, on loopback, in a temporary directory:
 *
 * - PostgreSQL (Debian's postgresql-15 or newer): `initdb` + `pg_ctl start` with fsync off,
 *   trust auth on 127.0.0.1 only; as root through `runuser -u postgres` (initdb refuses root).
 * - Ceph with an S3 endpoint: one monitor, one OSD on memstore (RAM, no disk), auth none,
 *   and radosgw (beast) on a free port; a user with known keys is created by radosgw-admin.
 *   With auth none every messenger mode must be `crc secure`, or radosgw waits 300 s.
 *
 * Nothing is skipped: when a server cannot start, the error says why (missing packages:
 * `bash scripts/test-deps.sh` installs them). `stop()` kills what was started and removes
 * the directory; an exit hook kills the daemons if the test process ends without it.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const isRoot = process.getuid?.() === 0;

function run(
  cmd: string,
  args: string[],
  opts: { timeout?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { timeout: opts.timeout ?? 60_000, maxBuffer: 16 << 20, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        if (err !== null)
          reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stdout}${stderr}`.trim()));
        else resolve({ stdout, stderr });
      },
    );
  });
}

/** A free TCP port on 127.0.0.1 (released before it is returned). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function which(cmd: string): string | null {
  for (const d of (process.env['PATH'] ?? '/usr/bin:/bin').split(':'))
    if (d !== '' && existsSync(join(d, cmd))) return join(d, cmd);
  return null;
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/**
 * A watchdog for daemons a test starts: a detached shell that polls this process and, once it
 * is gone without having called stop() (a runner killed with SIGKILL runs no exit hook),
 * runs `cleanup` (kill the daemons, remove their directory). stop() kills the watchdog first,
 * so it never acts on process ids the system may since have given to someone else.
 */
function watchdog(cleanup: string): () => void {
  const w = spawn('sh', ['-c', `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ${cleanup}`], {
    detached: true,
    stdio: 'ignore',
  });
  w.unref();
  return () => {
    try {
      w.kill('SIGKILL');
    } catch {}
  };
}

/** A path quoted for sh. */
const shq = (p: string) => `'${p.replaceAll("'", "'\\''")}'`;

async function stopChild(c: ChildProcess, graceMs = 5000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) {
    children.delete(c);
    return;
  }
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
  children.delete(c);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

export interface PgServer {
  port: number;
  /** The server's directory (data, log, socket); removed by stop(). */
  dir: string;
  /** `postgres://postgres@127.0.0.1:PORT/<db>`. */
  url(db?: string): string;
  /** Create an empty database; returns its URL. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

function pgBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions[0] !== undefined) return join(root, versions[0], 'bin');
  const initdb = which('initdb');
  if (initdb !== null) return join(initdb, '..');
  throw new Error(
    'PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `bash scripts/test-deps.sh`',
  );
}

export async function startPostgres(): Promise<PgServer> {
  const bin = pgBinDir();
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-pg-'));
  const data = join(dir, 'data');
  const port = await freePort();
  const asPg = async (cmd: string, args: string[]) =>
    isRoot ? run('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args]) : run(join(bin, cmd), args);
  try {
    if (isRoot) {
      const { stdout } = await run('id', ['-u', 'postgres']).catch(() => {
        throw new Error('running as root needs the `postgres` user (Debian package postgresql)');
      });
      const { stdout: gid } = await run('id', ['-g', 'postgres']);
      await chown(dir, Number(stdout.trim()), Number(gid.trim()));
    }
    await asPg('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
    await asPg('pg_ctl', [
      '-D',
      data,
      '-l',
      join(dir, 'postgres.log'),
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off`,
      '-w',
      '-t',
      '60',
      'start',
    ]);
  } catch (err) {
    const log = await readFile(join(dir, 'postgres.log'), 'utf8').catch(() => '');
    await rm(dir, { recursive: true, force: true });
    throw new Error(`PostgreSQL did not start: ${(err as Error).message}\n${log}`);
  }
  const url = (db = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${db}`;
  const pidFile = shq(join(data, 'postmaster.pid'));
  const unwatch = watchdog(
    `[ -f ${pidFile} ] && kill -QUIT "$(head -n 1 ${pidFile})" 2>/dev/null; sleep 2; rm -rf ${shq(dir)}`,
  );
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    unwatch();
    await asPg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  };
  process.once('exit', () => {
    if (!stopped) {
      // Synchronous best effort: the postmaster's pid is the first line of postmaster.pid.
      try {
        const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
        if (pid > 0) process.kill(pid, 'SIGQUIT');
      } catch {}
    }
  });
  return {
    port,
    dir,
    url,
    async createDatabase(name: string) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name ${name}`);
      const pg = (await import('pg')).default;
      const c = new pg.Client({ connectionString: url() });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    stop,
  };
}

// ---------------------------------------------------------------------------------------------
// Ceph RGW (S3)

export interface S3Server {
  endpoint: string;
  host: string;
  port: number;
  accessKey: string;
  secretKey: string;
  /** `s3://ACCESS:SECRET@127.0.0.1:PORT/bucket[/prefix]` for `--store`. */
  storeUrl(bucket: string, prefix?: string): string;
  stop(): Promise<void>;
}

const CEPH_TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph'];

export async function startCeph(): Promise<S3Server> {
  const missing = CEPH_TOOLS.filter((t) => which(t) === null);
  if (missing.length > 0)
    throw new Error(
      `Ceph is not installed (missing ${missing.join(', ')}): run \`bash scripts/test-deps.sh\` (ceph-mon, ceph-osd, radosgw)`,
    );
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-ceph-'));
  const started: ChildProcess[] = [];
  const monPort = await freePort();
  const rgwPort = await freePort();
  const fsid = randomUUID();
  const conf = join(dir, 'ceph.conf');
  const accessKey = `VDISK${randomUUID().replace(/-/g, '').slice(0, 15).toUpperCase()}`;
  const secretKey = randomUUID().replace(/-/g, '');
  const cli = ['-c', conf, '--connect-timeout', '30'];

  const unwatch: Array<() => void> = [];
  const daemon = (cmd: string, args: string[]) => {
    const c = spawn(cmd, ['-f', '-c', conf, ...args], { stdio: 'ignore' });
    children.add(c);
    started.push(c);
    if (c.pid !== undefined) unwatch.push(watchdog(`kill -9 ${c.pid} 2>/dev/null; rm -rf ${shq(dir)}`));
    return c;
  };
  const stop = async () => {
    for (const u of unwatch) u();
    for (const c of [...started].reverse()) await stopChild(c);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    for (const d of ['mon.a', 'osd.0', 'rgw', 'run']) await mkdir(join(dir, d));
    await writeFile(
      conf,
      `[global]
fsid = ${fsid}
mon host = [v2:127.0.0.1:${monPort}]
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms cluster mode = crc secure
ms service mode = crc secure
ms client mode = crc secure
ms mon cluster mode = crc secure
ms mon service mode = crc secure
ms mon client mode = crc secure
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
log file = ${dir}/$name.log
pid file = ${dir}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
[mon.a]
mon data = ${dir}/mon.a
[osd.0]
osd data = ${dir}/osd.0
osd objectstore = memstore
memstore device bytes = 4294967296
osd max object name len = 460
osd max object namespace len = 64
[client.rgw]
rgw data = ${dir}/rgw
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
`,
    );
    await run('monmaptool', [
      '--create',
      '--addv',
      'a',
      `[v2:127.0.0.1:${monPort}]`,
      '--fsid',
      fsid,
      join(dir, 'monmap'),
    ]);
    await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    daemon('ceph-mon', ['-i', 'a']);
    const osdUuid = randomUUID();
    const { stdout: osdId } = await run('ceph', [...cli, 'osd', 'new', osdUuid]);
    if (osdId.trim() !== '0') throw new Error(`ceph osd new gave id '${osdId.trim()}'`);
    await run('ceph-osd', ['-c', conf, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    daemon('ceph-osd', ['-i', '0']);
    const rgw = daemon('radosgw', ['-n', 'client.rgw']);
    // radosgw creates its pools, then listens; wait for an anonymous GET / to answer.
    const deadline = Date.now() + 120_000;
    for (;;) {
      for (const c of started)
        if (c.exitCode !== null || c.signalCode !== null)
          throw new Error(`${c.spawnargs[0]} exited (${c.exitCode ?? c.signalCode})`);
      const ok = await fetch(`http://127.0.0.1:${rgwPort}/`).then(
        (r) => r.status === 200,
        () => false,
      );
      if (ok) break;
      if (Date.now() > deadline) throw new Error('radosgw did not answer within 120 s');
      await new Promise((r) => setTimeout(r, 250));
    }
    void rgw;
    await run('radosgw-admin', [
      '-c',
      conf,
      'user',
      'create',
      '--uid',
      'vdisk',
      '--display-name',
      'vdisk tests',
      '--access-key',
      accessKey,
      '--secret-key',
      secretKey,
    ]);
  } catch (err) {
    const logs: string[] = [];
    for (const name of ['mon.a', 'osd.0', 'client.rgw']) {
      const text = await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '');
      if (text !== '') logs.push(`--- ${name}.log (end)\n${text.split('\n').slice(-15).join('\n')}`);
    }
    await stop();
    throw new Error(`Ceph (S3) did not start: ${(err as Error).message}\n${logs.join('\n')}`);
  }
  return {
    endpoint: `http://127.0.0.1:${rgwPort}`,
    host: '127.0.0.1',
    port: rgwPort,
    accessKey,
    secretKey,
    storeUrl: (bucket, prefix) =>
      `s3://${accessKey}:${secretKey}@127.0.0.1:${rgwPort}/${bucket}${prefix !== undefined ? `/${prefix}` : ''}`,
    stop,
  };
}
