/* biome-ignore-all lint/suspicious/noExplicitAny: test helpers return parsed JSON of many shapes. */
/**
 * Test helpers: a real `vdisk serve` in-process on a free loopback port with a temporary
 * data directory, a small API client over fetch, and runners for the Debian `openstack`
 * and `glance` clients with an isolated HOME (glanceclient caches schemas there).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type RunningServer, type ServeOptions, startServer } from '../server.js';

export const ADMIN_PASSWORD = 'admin-secret';

export interface ServeProcess {
  p: ChildProcess;
  url: string;
  /** Everything it wrote to stderr so far. */
  err: () => string;
  /** SIGTERM (or `signal`) and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** `bin/vdisk serve --port 0 ARGS…` as a process (built dist/), once it listens. */
export function spawnServe(args: string[]): Promise<ServeProcess> {
  const p = spawn(process.execPath, [join(process.cwd(), 'bin', 'vdisk'), 'serve', '--port', '0', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await exited;
  };
  return new Promise((resolve, reject) => {
    p.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) resolve({ p, url: m[1]!, err: () => err, stop });
    });
    p.on('exit', (code) => reject(new Error(`vdisk serve exited ${code}: ${err}`)));
  });
}

export interface TestServer {
  server: RunningServer;
  url: string;
  dir: string;
  home: string;
  stop(): Promise<void>;
}

export async function startTestServer(opts: Partial<ServeOptions> = {}): Promise<TestServer> {
  const dir = await mkdtemp(join(tmpdir(), 'vdisk-serve-'));
  const server = await startServer({
    port: 0,
    dataDir: join(dir, 'data'),
    adminPassword: ADMIN_PASSWORD,
    ...opts,
  });
  return {
    server,
    url: server.url,
    dir,
    home: join(dir, 'home'),
    async stop() {
      await server.close(5000);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export class Api {
  constructor(
    readonly url: string,
    readonly token: string,
    readonly projectId: string,
  ) {}

  static async login(url: string, user: string, password: string, project: string): Promise<Api> {
    const r = await fetch(`${url}/v3/auth/tokens`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        auth: {
          identity: {
            methods: ['password'],
            password: { user: { name: user, domain: { name: 'Default' }, password } },
          },
          scope: { project: { name: project, domain: { name: 'Default' } } },
        },
      }),
    });
    if (r.status !== 201) throw new Error(`login ${user}/${project}: ${r.status} ${await r.text()}`);
    const body = (await r.json()) as { token: { project: { id: string } } };
    return new Api(url, r.headers.get('x-subject-token')!, body.token.project.id);
  }

  async req(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; json: any; text: string; headers: Headers }> {
    const h: Record<string, string> = { 'X-Auth-Token': this.token, ...headers };
    let payload: Uint8Array | string | undefined;
    if (body instanceof Uint8Array) {
      payload = body;
      h['Content-Type'] ??= 'application/octet-stream';
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      h['Content-Type'] ??= 'application/json';
    }
    const r = await fetch(`${this.url}${path}`, { method, headers: h, body: payload ?? null });
    const text = await r.text();
    let json: any;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: r.status, json, text, headers: r.headers };
  }

  patch(id: string, ops: unknown[], draft: 4 | 10 = 10) {
    const type =
      draft === 10
        ? 'application/openstack-images-v2.1-json-patch'
        : 'application/openstack-images-v2.0-json-patch';
    return this.req('PATCH', `/v2/images/${id}`, ops, { 'Content-Type': type });
  }

  async createImage(body: Record<string, unknown>): Promise<any> {
    const r = await this.req('POST', '/v2/images', body);
    if (r.status !== 201) throw new Error(`create image: ${r.status} ${r.text}`);
    return r.json;
  }

  async upload(id: string, data: Uint8Array): Promise<number> {
    return (await this.req('PUT', `/v2/images/${id}/file`, data)).status;
  }
}

/** Create a project and a user with `member` role on it (as admin); returns the project id. */
export async function addProjectUser(
  admin: Api,
  project: string,
  user: string,
  password: string,
  role = 'member',
) {
  const p = await admin.req('POST', '/v3/projects', { project: { name: project } });
  if (p.status !== 201) throw new Error(`project: ${p.status} ${p.text}`);
  const u = await admin.req('POST', '/v3/users', {
    user: { name: user, password, default_project_id: p.json.project.id },
  });
  if (u.status !== 201) throw new Error(`user: ${u.status} ${u.text}`);
  const roles = await admin.req('GET', `/v3/roles?name=${role}`);
  const r = await admin.req(
    'PUT',
    `/v3/projects/${p.json.project.id}/users/${u.json.user.id}/roles/${roles.json.roles[0].id}`,
  );
  if (r.status !== 204) throw new Error(`role: ${r.status} ${r.text}`);
  return p.json.project.id as string;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `openstack` or `glance` against the server as user/project. */
export function runClient(
  ts: Pick<TestServer, 'url' | 'home'>,
  prog: 'openstack' | 'glance',
  args: string[],
  as: { user: string; password: string; project: string } = {
    user: 'admin',
    password: ADMIN_PASSWORD,
    project: 'admin',
  },
  opts: { closeStdin?: boolean } = {},
): Promise<CliResult> {
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    HOME: ts.home,
    LANG: 'C.UTF-8',
    OS_AUTH_URL: `${ts.url}/v3`,
    OS_USERNAME: as.user,
    OS_PASSWORD: as.password,
    OS_PROJECT_NAME: as.project,
    OS_USER_DOMAIN_NAME: 'Default',
    OS_PROJECT_DOMAIN_NAME: 'Default',
    OS_IDENTITY_API_VERSION: '3',
    OS_IMAGE_API_VERSION: '2',
  };
  return new Promise((resolve) => {
    // closeStdin: glanceclient treats any non-tty stdin (a pipe, /dev/null) as image data.
    const [file, argv] = opts.closeStdin ? ['sh', ['-c', 'exec "$0" "$@" <&-', prog, ...args]] : [prog, args];
    execFile(file, argv, { env, maxBuffer: 16 << 20, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * PUT a body with Transfer-Encoding: chunked (no Content-Length). With `abortAfter`, the
 * client goes away after that many chunks (resolves -1).
 */
export function putChunked(
  url: string,
  token: string,
  chunks: Buffer[],
  abortAfter?: number,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'PUT',
      headers: {
        'X-Auth-Token': token,
        'Content-Type': 'application/octet-stream',
        'Transfer-Encoding': 'chunked',
      },
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', (e) => (abortAfter !== undefined ? resolve(-1) : reject(e)));
    chunks.forEach((c, i) => {
      if (abortAfter !== undefined && i === abortAfter) {
        setTimeout(() => {
          req.destroy();
          resolve(-1);
        }, 300);
        return;
      }
      if (abortAfter === undefined || i < abortAfter) req.write(c);
    });
    if (abortAfter === undefined) req.end();
  });
}
