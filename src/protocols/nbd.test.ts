/**
 * vdisk as an NBD client, against qemu-img as the oracle on the same URIs: qemu-nbd (Unix
 * socket and TCP, -f raw and -f qcow2, read-only, a backing chain with -A), nbdkit (memory
 * and file plugins, the blocksize filter) and vdisk's own server.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, type Served, serveQemu, serveVdisk, waitForSocket } from '../test/nbd-helpers.js';
import { qemuImgOk, qemuIo, tempDir, vdisk } from '../test/oracle.js';
import { nbdCanonicalName, parseNbdName } from './nbd.js';

const { dir, cleanup } = tempDir('vdisk-nbdc-');
const servers: Served[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop().catch(() => {});
  cleanup();
});

const p = (n: string) => join(dir, n);

/** Run vdisk and qemu-img on the same arguments; the outputs and exit codes must agree. */
async function same(args: string[]): Promise<{ code: number; stdout: string }> {
  const v = await vdisk(args);
  const q = await exec('qemu-img', args);
  expect(v.stdout).toBe(q.stdout);
  expect(v.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(q.stderr);
  expect(v.code).toBe(q.code);
  return v;
}

/** A program serving on a Unix socket until stopped (nbdkit). */
async function serveCmd(cmd: string, args: string[], socket: string): Promise<Served> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await waitForSocket(
    socket,
    () => child.exitCode !== null,
    () => stderr,
  );
  const s: Served = {
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    async stop() {
      child.kill('SIGTERM');
      await exited;
    },
  };
  servers.push(s);
  return s;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
}

/** A raw image with data, an explicit zero range and holes; a qcow2 over a backing file. */
function makeImages(): void {
  qemuImgOk(['create', '-f', 'raw', p('a.raw'), '16M']);
  qemuIo(
    p('a.raw'),
    ['write -P 0x11 0 1M', 'write -P 0x22 3M 64k', 'write -z 5M 1M', 'write -P 0x33 15M 1M'],
    'raw',
  );
  qemuImgOk(['create', '-f', 'qcow2', p('base.qcow2'), '16M']);
  qemuIo(p('base.qcow2'), ['write -P 0x44 0 2M', 'write -P 0x45 8M 1M']);
  qemuImgOk(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')]);
  qemuIo(p('top.qcow2'), ['write -P 0x55 1M 2M', 'write -z 8M 512k']);
  qemuImgOk(['create', '-f', 'qcow2', p('lone.qcow2'), '16M']);
  qemuIo(p('lone.qcow2'), ['write -P 0x66 4M 3M']);
}

beforeAll(() => makeImages());

describe('names', () => {
  it('parses the forms qemu 7.2 accepts and names them canonically', () => {
    const cases: [string, string][] = [
      ['nbd://h/e', 'nbd://h:10809/e'],
      ['nbd+tcp://h:1234/e', 'nbd://h:1234/e'],
      ['nbd://h:1234', 'nbd://h:1234'],
      ['nbd+unix:///e?socket=/s', 'nbd+unix:///e?socket=/s'],
      ['nbd+unix://?socket=/s', 'nbd+unix://?socket=/s'],
      ['nbd:h:99:exportname=x', 'nbd://h:99/x'],
      ['nbd:unix:/s:exportname=x', 'nbd+unix:///x?socket=/s'],
      ['nbd:unix:/s', 'nbd+unix://?socket=/s'],
      [
        'json:{"file.driver":"nbd","file.server":{"type":"inet","host":"h","port":"7"},"file.export":"x"}',
        'nbd://h:7/x',
      ],
      ['json:{"file":{"driver":"nbd","server":{"type":"unix","path":"/s"}}}', 'nbd+unix://?socket=/s'],
    ];
    for (const [name, canonical] of cases) expect(nbdCanonicalName(parseNbdName(name))).toBe(canonical);
  });

  it('refuses what qemu refuses, in its words', async () => {
    await same(['info', 'nbd+unix:///e?socket=/s&x=1']);
    await same(['info', 'nbd+unix://h/e?socket=/s']);
    await same(['info', 'nbd://127.0.0.1:10809/e?tls-creds=x']);
    await same(['info', 'nbd://127.0.0.1:99999/e']);
    await same(['info', 'nbd:127.0.0.1']);
    await same([
      'info',
      'json:{"file.driver":"nbd","file.server":{"type":"inet","host":"127.0.0.1","port":"1"},"file.tls-creds":"t"}',
    ]);
  });
});

describe('qemu-nbd -f raw over a Unix socket (read-only)', () => {
  let uri: string;
  beforeAll(async () => {
    const s = await serveQemu(p('a.raw'), p('s-raw'), ['-f', 'raw', '-r'], 'e');
    servers.push(s);
    uri = s.uri;
  });

  it('info, map and check read as qemu-img reads them', async () => {
    await same(['info', uri]);
    await same(['info', '--output=json', uri]);
    const m = await same(['map', '--output=json', uri]);
    expect(m.stdout).toContain('"zero": true');
    await same(['map', uri]);
    await same(['check', uri]);
    await same(['measure', '-O', 'qcow2', uri]);
  });

  it('the legacy and --image-opts forms name the same export', async () => {
    await same(['info', `nbd:unix:${p('s-raw')}:exportname=e`]);
    await same([
      'info',
      '--image-opts',
      `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${p('s-raw')},file.export=e`,
    ]);
  });

  it('compare, convert to a file and dd', async () => {
    await same(['compare', p('a.raw'), uri]);
    await same(['compare', '-f', 'raw', '-F', 'raw', uri, p('a.raw')]);
    expect((await vdisk(['convert', '-O', 'qcow2', uri, p('from-raw.qcow2')])).code).toBe(0);
    expect(qemuImgOk(['compare', p('from-raw.qcow2'), p('a.raw')])).toContain('identical');
    // The zeros and holes of the export stay holes in the copy.
    await same(['map', '--output=json', p('from-raw.qcow2')]);
    expect((await vdisk(['dd', `if=${uri}`, `of=${p('dd.raw')}`, 'bs=1M', 'skip=3', 'count=2'])).code).toBe(
      0,
    );
    qemuImgOk(['dd', `if=${uri}`, `of=${p('dd-q.raw')}`, 'bs=1M', 'skip=3', 'count=2']);
    expect(qemuImgOk(['compare', p('dd.raw'), p('dd-q.raw')])).toContain('identical');
  });

  it('refuses to write to a read-only export as qemu-img does', async () => {
    await same(['convert', '-n', '-O', 'raw', p('a.raw'), uri]);
  });
});

describe('qemu-nbd over TCP, -f raw over a qcow2 file (probed as qcow2)', () => {
  let uri: string;
  beforeAll(async () => {
    const port = await freePort();
    const child = spawn('qemu-nbd', [
      '-t',
      '-r',
      '-f',
      'raw',
      '-b',
      '127.0.0.1',
      '-p',
      String(port),
      '-x',
      'q',
      p('lone.qcow2'),
    ]);
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    servers.push({
      socket: '',
      uri: '',
      async stop() {
        child.kill('SIGTERM');
        await exited;
      },
    });
    uri = `nbd://127.0.0.1:${port}/q`;
    for (let i = 0; i < 200; i++) {
      if ((await exec('qemu-img', ['info', uri])).code === 0) break;
      await new Promise((r) => setTimeout(r, 25));
    }
  });

  it('info, map, check, compare and convert', async () => {
    await same(['info', uri]);
    await same(['info', '--output=json', uri]);
    await same(['map', uri]);
    await same(['map', '--output=json', uri]);
    await same(['check', uri]);
    await same(['compare', uri, p('lone.qcow2'), '-U']);
    await same(['info', `nbd+tcp://${uri.slice('nbd://'.length)}`]);
    await same(['info', `nbd:127.0.0.1:${uri.split(':')[2]!.split('/')[0]}:exportname=q`]);
    expect((await vdisk(['convert', '-O', 'raw', uri, p('lone.raw')])).code).toBe(0);
    expect(qemuImgOk(['compare', '-U', p('lone.raw'), p('lone.qcow2')])).toContain('identical');
  });
});

describe('qemu-nbd -f qcow2 with a backing chain and -A', () => {
  let uri: string;
  beforeAll(async () => {
    const s = await serveQemu(p('top.qcow2'), p('s-chain'), ['-f', 'qcow2', '-r', '-A'], 'c');
    servers.push(s);
    uri = s.uri;
  });

  it('reads the flattened chain as raw: info, map, compare, convert', async () => {
    await same(['info', uri]);
    await same(['map', '--output=json', uri]);
    await same(['compare', '-U', uri, p('top.qcow2')]);
    expect((await vdisk(['convert', '-O', 'raw', uri, p('chain.raw')])).code).toBe(0);
    expect(qemuImgOk(['compare', '-U', p('chain.raw'), p('top.qcow2')])).toContain('identical');
  });
});

describe('backing files and NBD names', () => {
  it('a relative backing name under an export fails as in qemu; absolute names and nbd backings work', async () => {
    // top.qcow2 names base.qcow2 relative: no directory to take it from on an NBD export.
    const rel = await serveQemu(p('top.qcow2'), p('s-rel'), ['-f', 'raw', '-r']);
    servers.push(rel);
    await same(['info', rel.uri]);
    await same(['info', '--output=json', rel.uri]);
    await same(['map', rel.uri]);
    qemuImgOk(['create', '-f', 'qcow2', '-b', p('base.qcow2'), '-F', 'qcow2', p('abs.qcow2')]);
    const abs = await serveQemu(p('abs.qcow2'), p('s-abs'), ['-f', 'raw', '-r']);
    servers.push(abs);
    await same(['map', '--output=json', abs.uri]);
    await same(['compare', '-U', abs.uri, p('base.qcow2')]);
    // A local overlay over a backing file on an NBD server.
    const base = await serveQemu(p('base.qcow2'), p('s-base'), ['-f', 'qcow2', '-r']);
    servers.push(base);
    qemuImgOk(['create', '-f', 'qcow2', '-b', base.uri, '-F', 'raw', p('over.qcow2')]);
    await same(['info', '--backing-chain', p('over.qcow2')]);
    await same(['info', '--backing-chain', '--output=json', p('over.qcow2')]);
    await same(['map', '--output=json', p('over.qcow2')]);
    await same(['compare', p('over.qcow2'), '-U', p('base.qcow2')]);
  });
});

describe('writing to exports', () => {
  it('convert -n into qemu-nbd, then without -n (qemu: the export keeps its size), create', async () => {
    qemuImgOk(['create', '-f', 'raw', p('w.raw'), '16M']);
    const s = await serveQemu(p('w.raw'), p('s-w'), ['-f', 'raw'], 'w');
    servers.push(s);
    qemuIo(s.uri, ['write -P 0x99 0 16M'], 'raw');
    expect((await vdisk(['convert', '-n', p('top.qcow2'), s.uri])).code).toBe(0);
    await same(['compare', '-U', s.uri, p('top.qcow2')]);
    // Zeros went as WRITE_ZEROES: the export's map is qemu-img's after the same convert.
    const mapV = (await exec('qemu-img', ['map', '--output=json', '-f', 'raw', s.uri])).stdout;
    qemuIo(s.uri, ['write -P 0x99 0 16M'], 'raw');
    qemuImgOk(['convert', '-n', p('top.qcow2'), s.uri]);
    expect((await exec('qemu-img', ['map', '--output=json', '-f', 'raw', s.uri])).stdout).toBe(mapV);

    qemuIo(s.uri, ['write -P 0x99 0 16M'], 'raw');
    expect((await vdisk(['convert', '-O', 'raw', p('a.raw'), s.uri])).code).toBe(0);
    await same(['compare', s.uri, p('a.raw')]);
    // Too big for the export: qemu's words, create and convert alike.
    qemuImgOk(['create', '-f', 'raw', p('big.raw'), '32M']);
    await same(['convert', '-O', 'raw', p('big.raw'), s.uri]);
    await same(['convert', '-n', p('big.raw'), s.uri]);
    await same(['create', '-f', 'raw', s.uri, '32M']);
    // A qcow2 image created over the export (qemu writes the format over its start).
    qemuIo(s.uri, ['write -P 0x99 0 16M'], 'raw');
    expect((await vdisk(['convert', '-O', 'qcow2', p('a.raw'), s.uri])).code).toBe(0);
    const mapQcow2 = await same(['map', '--output=json', s.uri]);
    await same(['check', s.uri]);
    await same(['compare', s.uri, p('a.raw')]);
    qemuIo(s.uri, ['write -P 0x99 0 16M'], 'raw');
    qemuImgOk(['convert', '-O', 'qcow2', p('a.raw'), s.uri]);
    expect((await exec('qemu-img', ['map', '--output=json', s.uri])).stdout).toBe(mapQcow2.stdout);
    // Other formats are not created on exports (qemu-img can): one line, never a local file.
    const vmdk = await vdisk(['convert', '-O', 'vmdk', p('a.raw'), s.uri]);
    expect([vmdk.code, vmdk.stderr]).toEqual([
      1,
      `vdisk: ${s.uri}: vdisk cannot create vmdk images on 'nbd'\n`,
    ]);
  });

  it('into nbdkit memory with blocksize limits, and into vdisk nbd', async () => {
    const sock = p('s-mem');
    const s = await serveCmd(
      'nbdkit',
      ['-f', '-U', sock, '--filter=blocksize', 'memory', '16M', 'minblock=4096', 'maxlen=65536'],
      sock,
    );
    expect((await vdisk(['convert', '-n', p('a.raw'), s.uri])).code).toBe(0);
    await same(['compare', s.uri, p('a.raw')]);
    await same(['map', '--output=json', s.uri]);
    // dd writes 3000 bytes over a pattern: unaligned, read-modify-write keeps the rest.
    const dd = [
      'dd',
      '-f',
      'qcow2',
      '-O',
      'raw',
      `if=${p('top.qcow2')}`,
      `of=${s.uri}`,
      'bs=1000',
      'count=3',
    ];
    expect((await vdisk(dd)).code).toBe(0);
    qemuImgOk(['convert', '-f', 'raw', '-O', 'raw', s.uri, p('dd-v.raw')]);
    qemuImgOk(['convert', '-n', p('a.raw'), s.uri]);
    expect((await exec('qemu-img', dd)).code).toBe(0);
    qemuImgOk(['convert', '-f', 'raw', '-O', 'raw', s.uri, p('dd-q.raw')]);
    expect(readFileSync(p('dd-v.raw')).equals(readFileSync(p('dd-q.raw')))).toBe(true);

    qemuImgOk(['create', '-f', 'raw', p('v.raw'), '16M']);
    const v = await serveVdisk(p('v.raw'), p('s-vd'), { name: 'v', format: 'raw' });
    servers.push(v);
    expect((await vdisk(['convert', '-n', p('top.qcow2'), v.uri])).code).toBe(0);
    const cmp = await exec('qemu-img', ['compare', '-U', v.uri, p('top.qcow2')]);
    expect(cmp.stdout).toContain('identical');
    const mv = await vdisk(['map', '--output=json', v.uri]);
    expect(mv.stdout).toBe((await exec('qemu-img', ['map', '--output=json', v.uri])).stdout);
    const iv = await vdisk(['info', '--output=json', v.uri]);
    expect(iv.stdout).toBe((await exec('qemu-img', ['info', '--output=json', v.uri])).stdout);
  });

  it('a convert -n sends the requests qemu-img sends: WRITE, WRITE_ZEROES with trim, FLUSH last', async () => {
    const sock = p('s-log');
    const log = p('nbd.log');
    const s = await serveCmd(
      'nbdkit',
      ['-f', '-U', sock, '--filter=log', 'memory', '16M', `logfile=${log}`],
      sock,
    );
    const requests = () =>
      readFileSync(log, 'latin1')
        .split('\n')
        .map((l) => / (Write|Zero|Trim|Flush) id=\d+ (offset=\S+ count=\S+(?: trim=\d)?)?/.exec(l))
        .filter((m) => m !== null)
        .map((m) => `${m[1]} ${m[2] ?? ''}`.trim());
    qemuImgOk(['create', '-f', 'raw', p('small.raw'), '16M']);
    qemuIo(p('small.raw'), ['write -P 7 0 64k', 'write -P 8 8M 64k'], 'raw');
    expect((await exec('qemu-img', ['convert', '-n', p('small.raw'), s.uri])).code).toBe(0);
    const q = requests();
    writeFileSync(log, '');
    expect((await vdisk(['convert', '-n', p('small.raw'), s.uri])).code).toBe(0);
    const v = requests();
    // Both tools keep several requests in flight: the log has them in the order they arrived,
    // which the scheduler decides. The same requests, and the flush after all of them.
    expect([...v].sort()).toEqual([...q].sort());
    expect(q.at(-1)).toBe('Flush');
    expect(v.at(-1)).toBe('Flush');
  });

  it('nbdkit file plugin, read through the blocksize filter', async () => {
    const sock = p('s-file');
    const s = await serveCmd(
      'nbdkit',
      ['-f', '-r', '-U', sock, '--filter=blocksize', 'file', p('a.raw'), 'maxdata=65536'],
      sock,
    );
    await same(['info', s.uri]);
    await same(['map', '--output=json', s.uri]);
    await same(['compare', s.uri, p('a.raw')]);
    expect((await vdisk(['convert', '-O', 'raw', s.uri, p('kit.raw')])).code).toBe(0);
    expect(qemuImgOk(['compare', p('kit.raw'), p('a.raw')])).toContain('identical');
  });
});

describe('older servers', () => {
  it('NBD_OPT_EXPORT_NAME without fixed newstyle, and no structured replies (no block status)', async () => {
    const old = await serveCmd(
      'nbdkit',
      ['-f', '-r', '-U', p('s-old'), '--mask-handshake=0', 'file', p('a.raw')],
      p('s-old'),
    );
    const nosr = await serveCmd(
      'nbdkit',
      ['-f', '-r', '-U', p('s-nosr'), '--no-sr', 'file', p('a.raw')],
      p('s-nosr'),
    );
    for (const s of [old, nosr]) {
      await same(['info', s.uri]);
      await same(['map', '--output=json', s.uri]);
      await same(['compare', s.uri, p('a.raw')]);
    }
  });
});

describe('failures', () => {
  it('connection refused, no such socket, missing export: one line, exit 1', async () => {
    const port = await freePort();
    await same(['info', `nbd://127.0.0.1:${port}/x`]);
    await same(['info', `nbd+unix:///x?socket=${p('nothing-here')}`]);
    const s = await serveQemu(p('a.raw'), p('s-miss'), ['-f', 'raw', '-r'], 'there');
    servers.push(s);
    await same(['info', `nbd+unix:///nope?socket=${p('s-miss')}`]);
    await same(['convert', '-O', 'raw', `nbd+unix:///?socket=${p('s-miss')}`, p('never.raw')]);
  });

  it('errors the server reports (nbdkit --filter=error): qemu-img words and exit codes', async () => {
    const sock = p('s-err');
    const e = await serveCmd(
      'nbdkit',
      ['-f', '-U', sock, '--filter=error', 'pattern', '16M', 'error-pread=EIO', 'error-pread-rate=100%'],
      sock,
    );
    await same(['info', e.uri]);
    // qemu-img prints one line per coroutine that failed (as many as failed before it saw the
    // first); vdisk prints one.
    const firstLine = async (args: string[]) => {
      const v = await vdisk(args);
      const q = await exec('qemu-img', args);
      // Which request fails first depends on timing, in qemu-img as in vdisk.
      const norm = (t: string) => t.replace(/at byte \d+/, 'at byte N');
      expect([v.code, norm(v.stderr.replace(/^vdisk:/, 'qemu-img:'))]).toEqual([
        q.code,
        `${norm(q.stderr.split('\n')[0]!)}\n`,
      ]);
    };
    await firstLine(['convert', '-f', 'raw', '-O', 'raw', e.uri, p('never2.raw')]);
    await same(['compare', '-f', 'raw', '-F', 'raw', e.uri, p('a.raw')]);
    const wsock = p('s-werr');
    const w = await serveCmd(
      'nbdkit',
      ['-f', '-U', wsock, '--filter=error', 'memory', '16M', 'error-pwrite=ENOSPC', 'error-pwrite-rate=100%'],
      wsock,
    );
    await firstLine(['convert', '-n', p('a.raw'), w.uri]);
  });

  it('a server killed in the middle of a convert: one line, exit 1, no hang', async () => {
    qemuImgOk(['create', '-f', 'raw', p('k.raw'), '256M']);
    writeFileSync(p('k.raw'), Buffer.alloc(256 << 20, 7));
    const sock = p('s-kill');
    const child = spawn('qemu-nbd', ['-t', '-r', '-f', 'raw', '-k', sock, p('k.raw')], { stdio: 'ignore' });
    await waitForSocket(sock);
    const run = vdisk(['convert', '-O', 'raw', `nbd+unix:///?socket=${sock}`, p('k-out.raw')]);
    // Kill the server once the copy is under way (the output has grown past 16 MiB).
    const poll = setInterval(() => {
      if (existsSync(p('k-out.raw')) && statSync(p('k-out.raw')).size > 0) {
        const { blocks } = statSync(p('k-out.raw'));
        if (blocks * 512 > 16 << 20) {
          clearInterval(poll);
          child.kill('SIGKILL');
        }
      }
    }, 5);
    const r = await run;
    clearInterval(poll);
    child.kill('SIGKILL');
    expect(r.stderr).toBe(
      r.stderr.replace(/^(vdisk: error while reading at byte \d+: ).*$/s, '$1Input/output error\n'),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vdisk: error while reading at byte \d+: Input\/output error\n$/);
  }, 30_000);
});
