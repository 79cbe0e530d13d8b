/**
 * http(s) sources side by side with Debian's qemu-img and its curl driver (qemu-block-extra)
 * on the same URLs, served by a real nginx on loopback: info (human and json), map, compare,
 * convert (then compared), the errors (no byte ranges, 404, refused, writes), json:/--image-opts
 * names and their errors, https with a self-signed certificate, and a server that drops
 * connections mid-transfer (vdisk retries; qemu's curl does not).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo, LookupFunction } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FlakyServer, type Nginx, startFlakyServer, startNginx } from '../test/http-servers.js';
import { qemuImg, qemuImgOk, qemuIo, type RunResult, tempDir, vdisk } from '../test/oracle.js';
import { openHttpSource, openHttpStream, type RedirectPolicy } from './http.js';
import { RangeWire } from './http-wire.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let www: string;
let out: string;
let ngx: Nginx;
let flaky: FlakyServer;

/**
 * qemu-img on a URL. Debian's qemu-img 7.2 with libcurl 7.88 now and then stalls for good
 * (several requests in flight, see docs/protocols.md): a run that takes more than 30 s is
 * stopped and run again, up to 3 times.
 */
function qemuUrl(args: string[]): RunResult {
  for (let i = 0; ; i++) {
    const r = spawnSync('qemu-img', args, { encoding: 'utf8', timeout: 30_000, maxBuffer: 64 << 20 });
    if (r.signal === null || i >= 2) return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  }
}

function qemuUrlOk(args: string[]): string {
  const r = qemuUrl(args);
  if (r.code !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** qemu-img's result in vdisk's words: "vdisk:" for "qemu-img:", GLib's assertion noise dropped. */
function oracle(args: string[]): RunResult {
  const r = qemuUrl(args);
  const stderr = r.stderr
    .split('\n')
    .filter((l) => !l.includes('GLib:'))
    .join('\n')
    .replace(/^qemu-img:/gm, 'vdisk:');
  return { code: r.code, stdout: r.stdout, stderr };
}

async function same(args: string[]): Promise<RunResult> {
  const v = await vdisk(args);
  expect(v, args.join(' ')).toEqual(oracle(args));
  return v;
}

beforeAll(async () => {
  tmp = tempDir('vdisk-http-');
  www = join(tmp.dir, 'www');
  out = tmp.dir;
  const { mkdirSync } = await import('node:fs');
  mkdirSync(www);
  // 24 MiB: random data in part, a pattern, zeros elsewhere; read-ahead windows are crossed.
  const raw = Buffer.alloc(24 * MiB);
  randomBytes(5 * MiB).copy(raw, 1 * MiB);
  raw.fill(0x5a, 10 * MiB, 11 * MiB + 4096);
  randomBytes(MiB).copy(raw, 23 * MiB);
  writeFileSync(join(www, 'disk.raw'), raw);
  const conv = (fmt: string, name: string, extra: string[] = []) =>
    qemuImgOk(['convert', '-f', 'raw', '-O', fmt, ...extra, join(www, 'disk.raw'), join(www, name)]);
  conv('qcow2', 'disk.qcow2');
  conv('vmdk', 'disk.vmdk', ['-o', 'subformat=streamOptimized']);
  conv('vpc', 'disk.vhd');
  conv('vdi', 'disk.vdi');
  // A qcow2 over a relative backing file: the curl driver opens it by the URL's directory.
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'disk.qcow2', '-F', 'qcow2', join(www, 'top.qcow2')]);
  qemuIo(join(www, 'top.qcow2'), ['write -P 0x33 2M 128k', 'write -z 12M 1M'], 'qcow2');
  ngx = await startNginx(www, { tls: true });
  flaky = await startFlakyServer(www, 3);
});

afterAll(async () => {
  await ngx?.stop();
  await flaky?.stop();
  tmp?.cleanup();
});

const IMAGES = ['disk.raw', 'disk.qcow2', 'disk.vmdk', 'disk.vhd', 'disk.vdi', 'top.qcow2'];

describe('http sources against qemu-img (curl driver)', () => {
  it.each(IMAGES)('info of %s, human and json, and --backing-chain', async (name) => {
    const url = `${ngx.url}/${name}`;
    await same(['info', url]);
    await same(['info', '--output=json', url]);
    await same(['info', '--backing-chain', url]);
  });

  it.each(['disk.raw', 'disk.qcow2', 'top.qcow2', 'disk.vdi'])('map of %s', async (name) => {
    const url = `${ngx.url}/${name}`;
    await same(['map', url]);
    await same(['map', '--output=json', url]);
  });

  it.each(IMAGES)(
    'convert %s to raw and qcow2: the same image as qemu-img makes, and as the local file',
    async (name) => {
      const url = `${ngx.url}/${name}`;
      for (const fmt of ['raw', 'qcow2']) {
        const mine = join(out, `${name}.v.${fmt}`);
        const theirs = join(out, `${name}.q.${fmt}`);
        const v = await vdisk(['convert', '-O', fmt, url, mine]);
        expect(v, v.stderr).toMatchObject({ code: 0, stderr: '' });
        // -m 1: Debian's qemu-img 7.2 with libcurl 7.88 hangs now and then when several requests
        // are in flight (its default -m 8): one at a time it does not.
        qemuUrlOk(['convert', '-m', '1', '-O', fmt, url, theirs]);
        expect(qemuImg(['compare', '-f', fmt, '-F', fmt, mine, theirs]).code).toBe(0);
        expect(qemuImg(['compare', '-F', fmt, join(www, name), mine]).code).toBe(0);
      }
      await same(['compare', url, join(www, name)]);
      await same(['check', url]);
    },
  );

  it('measure and dd read over http as over a file', async () => {
    await same(['measure', '-O', 'qcow2', `${ngx.url}/disk.vhd`]);
    const a = join(out, 'dd.v');
    const b = join(out, 'dd.q');
    await same(['dd', `if=${ngx.url}/disk.qcow2`, `of=${a}`, 'bs=1M', 'skip=1', 'count=6', '-O', 'raw']);
    qemuUrlOk(['dd', `if=${ngx.url}/disk.qcow2`, `of=${b}`, 'bs=1M', 'skip=1', 'count=6', '-O', 'raw']);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', a, b]).code).toBe(0);
  });

  it('errors: no byte ranges, 404, refused connection', async () => {
    const r = await same(['info', `${ngx.url}/norange/disk.qcow2`]);
    expect(r.stderr).toContain("Server does not support 'range' (byte ranges).");
    const nf = await same(['info', `${ngx.url}/missing.qcow2`]);
    expect(nf.stderr).toContain('The requested URL returned error: 404');
    expect(nf.code).toBe(1);
    const port = Number(new URL(ngx.url).port) + 1;
    // Another closed port on loopback: nginx's neighbours are not ours, so check it is closed.
    const refused = oracle(['info', `http://127.0.0.1:${port}/x`]);
    if (refused.stderr.includes("Couldn't connect")) await same(['info', `http://127.0.0.1:${port}/x`]);
  });

  it('writes give qemu-img errors: read-only opens, no image creation', async () => {
    const url = `${ngx.url}/disk.qcow2`;
    await same(['resize', url, '+1M']);
    await same(['snapshot', '-c', 's', url]);
    await same(['amend', '-o', 'lazy_refcounts=on', url]);
    await same(['commit', `${ngx.url}/top.qcow2`]);
    await same(['create', '-f', 'qcow2', `${ngx.url}/new.qcow2`, '1M']);
    await same(['convert', '-O', 'raw', join(www, 'disk.raw'), `${ngx.url}/new.raw`]);
  });

  it('json: and --image-opts names, their options and errors', async () => {
    const url = `${ngx.url}/disk.qcow2`;
    await same(['info', `json:{"file.driver":"http","file.url":"${url}"}`]);
    await same(['info', `json:{"file":{"driver":"http","url":"${url}","readahead":65536,"timeout":3}}`]);
    await same(['info', `json:{"driver":"qcow2","file":{"driver":"http","url":"${url}","sslverify":false}}`]);
    const opts = (o: string) => ['info', '--image-opts', o];
    await same(opts(`driver=qcow2,file.driver=http,file.url=${url},file.readahead=1M,file.timeout=10`));
    await same(opts(`file.driver=http,file.url=${url},file.sslverify=off`));
    await same(opts(`file.driver=http,file.url=${url},file.cookie=a=b`));
    await same(opts(`file.driver=http,file.url=${url},file.bogus=1`));
    await same(opts(`file.driver=http,file.filename=${url}`));
    await same(opts(`file.driver=https,file.url=${url}`));
    await same(opts(`file.driver=http,file.url=${url},file.readahead=1000`));
    await same(opts(`file.driver=http,file.url=${url},file.sslverify=maybe`));
    await same(opts(`file.driver=http,file.url=${url},file.password-secret=nope`));
    await same(opts(`file.driver=http,file.url=${url},file.cookie=a,file.cookie-secret=b`));
    await same([
      'convert',
      // -m 1: qemu-img's curl driver stalls now and then with several requests in flight.
      '-m',
      '1',
      '--image-opts',
      `driver=qcow2,file.driver=http,file.url=${url}`,
      '-O',
      'raw',
      join(out, 'io.raw'),
    ]);
    expect(qemuImg(['compare', '-F', 'raw', join(www, 'disk.raw'), join(out, 'io.raw')]).code).toBe(0);
  });

  it('https: a self-signed certificate is refused, and read with sslverify=off', async () => {
    const url = `${ngx.httpsUrl!}/disk.qcow2`;
    const r = await same(['info', url]);
    expect(r.stderr).toContain('server certificate verification failed');
    await same(['info', `json:{"file.driver":"https","file.url":"${url}","file.sslverify":false}`]);
    await same(['info', '--image-opts', `file.driver=https,file.url=${url},file.sslverify=off`]);
    const v = join(out, 'tls.raw');
    await same([
      'convert',
      // -m 1: qemu-img's curl driver stalls now and then with several requests in flight.
      '-m',
      '1',
      '-O',
      'raw',
      '--image-opts',
      `file.driver=https,file.url=${url},file.sslverify=off`,
      v,
    ]);
    expect(qemuImg(['compare', '-F', 'raw', join(www, 'disk.raw'), v]).code).toBe(0);
  });

  it('https: the wire client reads ranges over TLS, with node:tls checking the certificate', async () => {
    const url = new URL(`${ngx.httpsUrl!}/disk.raw`);
    const raw = readFileSync(join(www, 'disk.raw'));
    const get = async (wire: RangeWire, start: number, length: number) => {
      const into = Buffer.alloc(length);
      const r = await wire.get(url, {}, start, into, 5000);
      return { r, into };
    };
    // Not checked (sslverify=off): the body lands in the buffer, the connection is kept.
    const off = new RangeWire(4, undefined, () => ({ rejectUnauthorized: false }));
    for (const [start, length] of [
      [0, 1 << 20],
      [12345, 3 << 20],
      [raw.length - 777, 777],
    ] as const) {
      const { r, into } = await get(off, start, length);
      expect(r).toEqual({ kind: 'done' });
      expect(into.equals(raw.subarray(start, start + length))).toBe(true);
    }
    off.close();
    // Checked against Node's roots: refused, as node:https refuses it.
    const strict = new RangeWire(4, undefined, () => ({ rejectUnauthorized: true }));
    await expect(get(strict, 0, 4096)).rejects.toMatchObject({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
    strict.close();
    // Trusting the server's own certificate: its name (an address here) checks out.
    const pinned = new RangeWire(4, undefined, () => ({
      rejectUnauthorized: true,
      ca: [readFileSync(ngx.certFile!, 'utf8')],
    }));
    const { r, into } = await get(pinned, 4096, 65536);
    expect(r).toEqual({ kind: 'done' });
    expect(into.equals(raw.subarray(4096, 4096 + 65536))).toBe(true);
    pinned.close();
  });

  it('https: the CAs of NODE_EXTRA_CA_CERTS are trusted as Node trusts them, read at the first connection (bin/vdisk)', () => {
    const url = `${ngx.httpsUrl!}/disk.qcow2`;
    const env = (ca?: string) => {
      const e: NodeJS.ProcessEnv = { ...process.env };
      delete e['NODE_EXTRA_CA_CERTS'];
      if (ca !== undefined) e['NODE_EXTRA_CA_CERTS'] = ca;
      return e;
    };
    const bin = (ca?: string) =>
      spawnSync(join(process.cwd(), 'bin', 'vdisk'), ['info', url], { env: env(ca), encoding: 'utf8' });
    const refused = bin();
    expect(refused.status).toBe(1);
    expect(refused.stderr).toContain('server certificate verification failed');
    const trusted = bin(ngx.certFile!);
    expect(trusted.status, trusted.stderr).toBe(0);
    expect(trusted.stderr).toBe('');
    // Node reading the variable itself at start-up (tsc's entry run by node, not bin/vdisk).
    const native = spawnSync(process.execPath, [join(process.cwd(), 'dist', 'cli', 'bin.js'), 'info', url], {
      env: env(ngx.certFile!),
      encoding: 'utf8',
    });
    expect(native.status, native.stderr).toBe(0);
    expect(trusted.stdout).toBe(native.stdout);
    // A file that cannot be read: Node's warning, and the connection refused as without it.
    const missing = bin(join(out, 'no-such-ca.pem'));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('Ignoring extra certs from');
    expect(missing.stderr).toContain('server certificate verification failed');
  });

  it('a server that resets every third request mid-transfer: vdisk retries and reads every byte', async () => {
    const before = flaky.stats.dropped;
    for (const name of ['disk.qcow2', 'disk.vmdk']) {
      const v = join(out, `flaky-${name}.raw`);
      const r = await vdisk(['convert', '-O', 'raw', `${flaky.url}/${name}`, v]);
      expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', join(www, 'disk.raw'), v]).code).toBe(0);
    }
    expect(flaky.stats.dropped - before).toBeGreaterThan(0);
  });
});

/** The hooks the registry's web-download uses (no qemu-img counterpart: engine options). */
describe('lookup and redirect hooks, the streamed GET', () => {
  const pinTo127 =
    (calls: string[]): LookupFunction =>
    (host, opts, cb) => {
      calls.push(host);
      if ((opts as { all?: boolean }).all)
        (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, [
          { address: '127.0.0.1', family: 4 },
        ]);
      else cb(null, '127.0.0.1', 4);
    };
  const readAll = async (url: string, o: Parameters<typeof openHttpSource>[1]) => {
    const src = await openHttpSource(url, o);
    try {
      const buf = Buffer.alloc(src.size);
      expect(await src.read(buf, 0)).toBe(src.size);
      return buf;
    } finally {
      await src.close();
    }
  };

  it('lookup: a name no DNS knows is connected to the address the hook gives (ranges and stream)', async () => {
    const file = readFileSync(join(www, 'disk.raw'));
    const calls: string[] = [];
    const url = `http://pinned.invalid:${new URL(ngx.url).port}`;
    expect((await readAll(`${url}/disk.raw`, { lookup: pinTo127(calls) })).equals(file)).toBe(true);
    expect(calls.length).toBeGreaterThan(0);
    expect(new Set(calls)).toEqual(new Set(['pinned.invalid']));
    const { res } = await openHttpStream(`${url}/norange/disk.raw`, { lookup: pinTo127(calls) });
    expect(res.statusCode).toBe(200);
    const parts: Buffer[] = [];
    for await (const c of res) parts.push(c as Buffer);
    expect(Buffer.concat(parts).equals(file)).toBe(true);
    // The hook's error is thrown as it is (not reworded as curl's, not retried).
    const refuse = new Error('refused by the hook');
    let refused = 0;
    const no: LookupFunction = (_h, _o, cb) => {
      refused++;
      cb(refuse as NodeJS.ErrnoException, '', 0);
    };
    await expect(openHttpSource(`${url}/disk.raw`, { lookup: no })).rejects.toBe(refuse);
    expect(refused).toBe(1);
    await expect(openHttpStream(`${url}/disk.raw`, { lookup: no })).rejects.toBe(refuse);
  });

  it('redirect: the policy sees every hop and decides; its error is thrown as it is', async () => {
    const data = randomBytes(3 * MiB);
    const srv = createServer((req, res) => {
      if (req.url === '/a') return void res.writeHead(302, 'Found', { Location: '/b' }).end();
      if (req.url === '/b') return void res.writeHead(307, { Location: '/data' }).end();
      if (req.url === '/nowhere') return void res.writeHead(301, 'Moved').end();
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      const start = m === null ? 0 : Number(m[1]);
      const end = m === null ? data.length : Math.min(data.length, Number(m[2]) + 1);
      res.writeHead(m === null ? 200 : 206, {
        'Accept-Ranges': 'bytes',
        'Content-Length': end - start,
        ...(m === null ? {} : { 'Content-Range': `bytes ${start}-${end - 1}/${data.length}` }),
      });
      res.end(req.method === 'HEAD' ? undefined : data.subarray(start, end));
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
      const hops: string[] = [];
      const follow: RedirectPolicy = (r) => {
        hops.push(`${r.hop} ${r.status} ${r.statusMessage} ${r.location}`);
        if (r.location === undefined) throw new Error(`no Location in ${r.status}`);
        return new URL(r.location, r.from);
      };
      expect((await readAll(`${base}/a`, { redirect: follow })).equals(data)).toBe(true);
      expect(hops).toEqual(['1 302 Found /b', '2 307 Temporary Redirect /data']);
      const { res, url } = await openHttpStream(`${base}/a`, { redirect: follow });
      res.resume();
      expect(url.href).toBe(`${base}/data`);
      const stop = new Error('not there');
      const refuse: RedirectPolicy = () => {
        throw stop;
      };
      await expect(openHttpSource(`${base}/a`, { redirect: refuse })).rejects.toBe(stop);
      await expect(openHttpStream(`${base}/a`, { redirect: refuse })).rejects.toBe(stop);
      await expect(openHttpStream(`${base}/nowhere`, { redirect: follow })).rejects.toThrow(
        'no Location in 301',
      );
      // Without a policy: curl's rules, as before (a 3xx without Location is the answer).
      expect((await readAll(`${base}/a`, {})).equals(data)).toBe(true);
    } finally {
      srv.close();
    }
  });
});
