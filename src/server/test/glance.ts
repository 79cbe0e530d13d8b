/**
 * The real Glance 25 (Debian's glance-api) for side-by-side tests: loopback, sqlite and a
 * file store in a temporary directory, one worker, and no Keystone: a paste pipeline with
 * Glance's header-trusting context middleware (`context` without `authtoken`), so that each
 * request names its caller with X-Identity-Status: Confirmed, X-Roles, X-Tenant-Id — unlike
 * the `unauthenticated-context` pipeline of src/bench/server.ts, it gives the policy engine
 * real roles, which the metadef policies (`role:admin`) need.
 *
 * Never skipped: when glance-api is missing or does not start, start() throws with the reason.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './servers.js';

export interface Caller {
  project: string;
  roles: string[];
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

export interface GlanceServer {
  url: string;
  dir: string;
  /** Headers that make a request come from this caller. */
  headers(who: Caller): Record<string, string>;
  /** `glance-manage db_load_metadefs DIR`. */
  loadMetadefs(dir: string): Promise<void>;
  stop(): Promise<void>;
}

function run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 180_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err !== null)
        reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`.trim()));
      else resolve({ stdout, stderr });
    });
  });
}

/** A request without the Accept header fetch() adds (Glance then answers errors in text/plain). */
export function rawRequest(
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string | Buffer,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string> = { ...headers };
    if (body !== undefined) h['Content-Length'] = String(Buffer.byteLength(body));
    const req = request(url, { method, headers: h }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          text: Buffer.concat(parts).toString('utf8'),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const PIPELINE = 'cors healthcheck http_proxy_to_wsgi versionnegotiation osprofiler context rootapp';

export async function startGlance(): Promise<GlanceServer> {
  if (!existsSync('/usr/bin/glance-api'))
    throw new Error('/usr/bin/glance-api is not installed (apt-get install glance-api)');
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-glance-'));
  for (const d of ['images', 'staging', 'tasks']) await mkdir(join(dir, d));
  const port = await freePort();
  // Debian's paste file with one more pipeline: Glance's context middleware alone.
  const paste = (await readFile('/etc/glance/glance-api-paste.ini', 'utf8')).concat(
    `\n[pipeline:glance-api-trusted]\npipeline = ${PIPELINE}\n`,
  );
  await writeFile(join(dir, 'paste.ini'), paste);
  const conf = join(dir, 'glance-api.conf');
  await writeFile(
    conf,
    [
      '[DEFAULT]',
      'bind_host = 127.0.0.1',
      `bind_port = ${port}`,
      'workers = 1',
      `log_file = ${join(dir, 'api.log')}`,
      'enabled_backends = file:file',
      '[database]',
      `connection = sqlite:///${join(dir, 'glance.sqlite')}`,
      '[paste_deploy]',
      'flavor = trusted',
      `config_file = ${join(dir, 'paste.ini')}`,
      '[glance_store]',
      'default_backend = file',
      '[file]',
      `filesystem_store_datadir = ${join(dir, 'images')}`,
      '[os_glance_staging_store]',
      `filesystem_store_datadir = ${join(dir, 'staging')}`,
      '[os_glance_tasks_store]',
      `filesystem_store_datadir = ${join(dir, 'tasks')}`,
      '[oslo_policy]',
      'enforce_new_defaults = false',
      'enforce_scope = false',
      '',
    ].join('\n'),
  );
  try {
    await run('glance-manage', ['--config-file', conf, 'db_sync']);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  // Its own process group: the parent forks the worker; both go at stop.
  const child: ChildProcess = spawn('glance-api', ['--config-file', conf], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // gone
      }
      const t = setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // gone
        }
      }, 10_000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const url = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) {
      const log = await readFile(join(dir, 'api.log'), 'utf8').catch(() => '');
      await stop();
      throw new Error(`glance-api exited (${child.exitCode}): ${stderr}\n${log.slice(-3000)}`);
    }
    try {
      const r = await rawRequest(`${url}/versions`, 'GET', {});
      if (r.status === 200) break;
    } catch {
      // not yet listening
    }
    if (Date.now() - t0 > 90_000) {
      await stop();
      throw new Error('glance-api did not answer in 90 s');
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    dir,
    headers: (who) => ({
      'X-Auth-Token': 'side-by-side',
      'X-Identity-Status': 'Confirmed',
      'X-Roles': who.roles.join(','),
      'X-Tenant-Id': who.project,
      'X-Project-Id': who.project,
      'X-User-Id': `user-of-${who.project}`,
    }),
    loadMetadefs: async (d) => {
      await run('glance-manage', ['--config-file', conf, 'db_load_metadefs', d]);
    },
    stop,
  };
}
