/**
 * Real HTTP servers for the http(s) source tests and the bench: Debian's nginx (nginx-light) on
 * a free loopback port, started as a child process with its pid, logs and temp files in a temp
 * directory, and a small Node server that drops every Nth connection mid-transfer.
 *
 * nginx serves `root` at /, the same files without byte ranges at /norange/ (`max_ranges 0`),
 * and, with `tls`, over https on a second port with a self-signed certificate.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  createReadStream,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited (${child.exitCode}): ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nginx did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A self-signed certificate for 127.0.0.1 (openssl req), in `dir`. */
export function selfSignedCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
  return { cert, key };
}

export interface Nginx {
  /** http://127.0.0.1:PORT (no trailing slash). */
  url: string;
  /** https://127.0.0.1:PORT when started with tls. */
  httpsUrl: string | undefined;
  /** The https server's self-signed certificate (PEM) when started with tls. */
  certFile: string | undefined;
  stop(): Promise<void>;
}

export async function startNginx(root: string, o: { tls?: boolean } = {}): Promise<Nginx> {
  if (spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).status !== 0) {
    throw new Error('nginx is not installed: run `bash scripts/test-deps.sh` (nginx-light)');
  }
  const dir = mkdtempSync(join(tmpdir(), 'vdisk-nginx-'));
  mkdirSync(join(dir, 'tmp'));
  const port = await freePort();
  const tlsPort = o.tls === true ? await freePort() : 0;
  const tls = o.tls === true ? selfSignedCert(dir) : null;
  const locations = `root ${root};
    location /norange/ { alias ${root}/; max_ranges 0; }`;
  const conf = `daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path ${dir}/tmp; proxy_temp_path ${dir}/tmp; fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp; scgi_temp_path ${dir}/tmp;
  types { application/octet-stream img; }
  server { listen 127.0.0.1:${port}; ${locations} }
  ${tls !== null ? `server { listen 127.0.0.1:${tlsPort} ssl; ssl_certificate ${tls.cert}; ssl_certificate_key ${tls.key}; ${locations} }` : ''}
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const child = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')], {
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  // nginx's messages go to its error log (a pipe left unread while a test blocks in spawnSync
  // could stall it): read back when it fails to start.
  const log = () => {
    try {
      return readFileSync(join(dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  };
  try {
    await waitForPort(port, child, log);
    if (tls !== null) await waitForPort(tlsPort, child, log);
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    url: `http://127.0.0.1:${port}`,
    httpsUrl: tls !== null ? `https://127.0.0.1:${tlsPort}` : undefined,
    certFile: tls?.cert,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface FlakyServer {
  url: string;
  /** Requests answered so far, and connections dropped. */
  stats: { requests: number; dropped: number };
  stop(): Promise<void>;
}

/**
 * Serves the files of `root` with HEAD and single byte ranges; every `every`th GET sends half
 * of its body and then resets the connection.
 */
export async function startFlakyServer(root: string, every: number): Promise<FlakyServer> {
  const stats = { requests: 0, dropped: 0 };
  const server: Server = createServer((req, res) => {
    const path = join(root, decodeURIComponent((req.url ?? '/').split('?')[0]!));
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    stats.requests++;
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' }).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m ? Math.min(size - 1, Number(m[2])) : size - 1;
    res.writeHead(m ? 206 : 200, {
      'content-length': end - start + 1,
      ...(m ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
    });
    if (stats.requests % every === 0) {
      stats.dropped++;
      const half = Math.floor((end - start + 1) / 2);
      createReadStream(path, { start, end: start + Math.max(0, half - 1) })
        .on('end', () => req.socket.resetAndDestroy())
        .pipe(res, { end: false });
      return;
    }
    createReadStream(path, { start, end }).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
