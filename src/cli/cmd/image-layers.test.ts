/**
 * `vdisk image` with layered images, against a real `vdisk serve` and images made by the real
 * qemu-img: an overlay file finds its master by sha512 (or is refused in one line, or uploads
 * its masters with --upload-backing, or names one with --backing-image); `save --format`
 * compared with qemu-img against the local chain, and cut short (no partial file); `pull` of a
 * chain that qemu-img then opens, and again (nothing downloaded, or only what changed);
 * `tree` as text (golden) and JSON.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  addProjectUser,
  startTestServer,
  type TestServer,
} from '../../server/test/harness.js';
import { qemuImg, qemuImgOk, qemuIo, tempDir } from '../../test/oracle.js';
import { sizeToStr } from '../format.js';
import { imageEnv, runVdiskImage, type User } from './image-testkit.js';

const MiB = 1 << 20;
let ts: TestServer;
let admin: Api;
let dir: string;
let cleanup: () => void;
const p = (n: string) => join(dir, n);
const sha512 = (f: string) => createHash('sha512').update(readFileSync(f)).digest('hex');

const env = (as?: User, url = ts.url) => imageEnv(url, as);
const vdisk = (args: string[], e: Record<string, string> = env()) => runVdiskImage(args, e);

/** `vdisk image create … -f json`, which must succeed: the image as shown. */
async function createOk(args: string[], e?: Record<string, string>) {
  const r = await vdisk(['create', ...args, '-f', 'json'], e);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as { id: string; disk_format: string; properties?: Record<string, string> };
}

const imageCount = async () =>
  (await admin.req('GET', '/v2/images?visibility=all&limit=1000')).json.images.length;

/** A local chain made by qemu-img: NAME-base ← NAME-mid ← NAME-top, each writing its own pattern. */
function chain(name: string, seed: number): { base: string; mid: string; top: string } {
  const [base, mid, top] = ['base', 'mid', 'top'].map((l) => p(`${name}-${l}.qcow2`)) as [
    string,
    string,
    string,
  ];
  qemuImgOk(['create', '-f', 'qcow2', base, `${16 * MiB}`]);
  qemuIo(base, [`write -P ${seed} 0 3m`, `write -P ${seed + 1} 10m 1m`], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', `${name}-base.qcow2`, '-F', 'qcow2', mid]);
  qemuIo(mid, [`write -P ${seed + 2} 1m 1m`, 'write -z 2m 512k'], 'qcow2');
  qemuImgOk(['create', '-f', 'qcow2', '-b', `${name}-mid.qcow2`, '-F', 'qcow2', top, `${20 * MiB}`]);
  qemuIo(top, [`write -P ${seed + 3} 1536k 64k`, `write -P ${seed + 4} 18m 1m`], 'qcow2');
  return { base, mid, top };
}

let main: { base: string; mid: string; top: string };
const ids = { base: '', mid: '', top: '' };

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('vdisk-image-layers-'));
  main = chain('main', 0x41);
  ts = await startTestServer();
  admin = await Api.login(ts.url, 'admin', ADMIN_PASSWORD, 'admin');
});
afterAll(async () => {
  await ts?.stop();
  cleanup?.();
});

describe('image create of an overlay', () => {
  it('finds the master by the sha512 of the local backing file; the disk format is the file’s', async () => {
    // No --disk-format: qcow2 from the file itself (openstack would say raw, which the registry refuses).
    const base = await createOk(['--file', main.base, 'main-base']);
    expect(base.disk_format).toBe('qcow2');
    expect(base.properties?.['backing_image_id']).toBeUndefined();
    ids.base = base.id;
    const mid = await createOk(['--file', main.mid, 'main-mid']);
    expect(mid.disk_format).toBe('qcow2');
    expect(mid.properties?.['backing_image_id']).toBe(base.id);
    ids.mid = mid.id;
    // A name with characters a file name should not have (pull sanitises it).
    const top = await createOk(['--file', main.top, '--progress', 'main: top/layer']);
    expect(top.properties?.['backing_image_id']).toBe(mid.id);
    ids.top = top.id;
    // The table output is openstack's: the property shows among the others.
    const shown = await vdisk(['show', ids.top]);
    expect(shown.stdout).toContain(`backing_image_id='${mid.id}'`);
  });

  it('without a master in the registry: one line that says so, and nothing created', async () => {
    const other = chain('lonely', 0x51);
    const before = await imageCount();
    const r = await vdisk(['create', '--file', other.mid, 'lonely']);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n')).toHaveLength(2);
    expect(r.stderr).toMatch(
      /^vdisk: No active image you can see in the registry holds '.*lonely-base\.qcow2'/,
    );
    expect(r.stderr).toContain('--upload-backing');
    expect(await imageCount()).toBe(before);
  });

  it('--upload-backing uploads a two-level chain bottom first, each level named after its file', async () => {
    const c = chain('up', 0x61);
    const before = await imageCount();
    const top = await createOk(['--upload-backing', '--file', c.top, 'up-top']);
    expect(await imageCount()).toBe(before + 3);
    const mid = (await admin.req('GET', `/v2/images/${top.properties?.['backing_image_id']}`)).json;
    expect(mid.name).toBe('up-mid.qcow2');
    const base = (await admin.req('GET', `/v2/images/${mid.backing_image_id}`)).json;
    expect(base.name).toBe('up-base.qcow2');
    expect(base.backing_image_id).toBeUndefined();
    expect(base.os_hash_value).toBe(sha512(c.base));
    // The registry's chain reads as the local one.
    const out = p('up-export.raw');
    expect((await vdisk(['save', '--format', 'raw', top.id, out])).code).toBe(0);
    expect(qemuImg(['compare', '-F', 'raw', c.top, out]).stdout).toContain('Images are identical');
    // Again: the masters are found by their hash, only the new top is uploaded.
    await createOk(['--upload-backing', '--file', c.top, 'up-top-again']);
    expect(await imageCount()).toBe(before + 4);
  });

  it('--backing-image names the master when the local backing file is elsewhere', async () => {
    const ov = p('moved.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'main-base.qcow2', '-F', 'qcow2', ov]);
    qemuIo(ov, ['write -P 0x77 0 64k'], 'qcow2');
    qemuImgOk(['rebase', '-u', '-b', 'gone/main-base.qcow2', '-F', 'qcow2', ov]);
    const missing = await vdisk(['create', '--file', ov, 'moved']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(
      /^vdisk: The backing file 'gone\/main-base.qcow2' of '.*moved.qcow2' is not here .*--backing-image ID\n$/,
    );
    const img = await createOk(['--file', ov, '--backing-image', 'main-base', 'moved']);
    expect(img.properties?.['backing_image_id']).toBe(ids.base);
    // A standalone file has no master to name.
    const standalone = await vdisk(['create', '--file', main.base, '--backing-image', ids.base, 'x']);
    expect(standalone.code).toBe(1);
    expect(standalone.stderr).toMatch(/names no backing file: --backing-image is for overlays/);
  });
});

/** [save options, qemu-img format, Content-Length known]. */
const SAVES: [string[], string, boolean][] = [
  [['--format', 'raw'], 'raw', true],
  [['-f', 'qcow2'], 'qcow2', true],
  [['--format', 'qcow2', '--compress'], 'qcow2', true],
  [['--format', 'vmdk', '--subformat', 'streamOptimized'], 'vmdk', false],
  [['--format=vhd', '--subformat=dynamic'], 'vpc', true],
  [['--format', 'vdi'], 'vdi', true],
  [['--format', 'vhdx'], 'vhdx', true],
];

describe('image save --format', () => {
  for (const [opts, fmt, sized] of SAVES) {
    it(`${opts.join(' ')}: the flattened chain, identical to the local one for qemu-img`, async () => {
      const out = p(`save-${opts.join('_').replace(/[-=]/g, '')}`);
      const r = await vdisk(['save', ...opts, '--progress', 'main: top/layer', out]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('');
      // A percentage when the length is known ahead, else the amount so far.
      expect(existsSync(`${out}.part`)).toBe(false);
      const last = sized ? '(100.00/100%)' : `(${sizeToStr(statSync(out).size).padStart(8)})`;
      expect(r.stderr.split('\r').at(-2)?.trim()).toBe(last);
      const info = JSON.parse(qemuImgOk(['info', '--output=json', '-f', fmt, out]));
      expect(info['backing-filename']).toBeUndefined();
      const cmp = qemuImg(['compare', '-f', 'qcow2', '-F', fmt, main.top, out]);
      expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
    });
  }

  it('--no-flatten: the overlay alone, naming its master by image id; --file works too', async () => {
    const out = p('save-layer.qcow2');
    const r = await vdisk(['save', '--format', 'qcow2', '--no-flatten', '--file', out, ids.top]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(qemuImgOk(['info', '--output=json', out]));
    expect(info['backing-filename']).toBe(ids.mid);
    expect(statSync(out).size).toBeLessThan(4 * MiB);
  });

  it('refuses export options without --format, and what the registry cannot do', async () => {
    const r = await vdisk(['save', '--compress', ids.top, p('x')]);
    expect([r.code, r.stderr]).toEqual([
      1,
      'vdisk: image: error: argument --compress: needs --format (a conversion by the registry)\n',
    ]);
    const bad = await vdisk(['save', '-f', 'iso', ids.top, p('x')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^vdisk: HttpException: 400: .*Cannot export to disk_format 'iso'/);
    expect(existsSync(p('x'))).toBe(false);
    expect(existsSync(p('x.part'))).toBe(false);
  });

  it('without --format: the original bytes, as before', async () => {
    const out = p('save-own.qcow2');
    expect((await vdisk(['save', ids.mid, out])).code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(main.mid))).toBe(true);
  });
});

/** A proxy to the registry that cuts every export off after `cutAfter` bytes of body. */
function cuttingProxy(target: string, cutAfter: number): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const up = request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      if (!req.url?.includes('/export')) {
        upRes.pipe(res);
        return;
      }
      let sent = 0;
      upRes.on('end', () => res.end());
      upRes.on('data', (c: Buffer) => {
        if (sent >= cutAfter) return;
        const part = c.subarray(0, cutAfter - sent);
        sent += part.length;
        if (sent < cutAfter) res.write(part);
        else {
          // Once the client has the headers and the first bytes: then the connection drops.
          upRes.destroy();
          res.write(part, () => res.destroy());
        }
      });
    });
    req.pipe(up);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server }),
    ),
  );
}

describe('image flatten', () => {
  it("--wait: a new standalone master in the caller's project, identical to the chain; --backing-image: a delta", async () => {
    const r = await vdisk([
      'flatten',
      '--name',
      'main v2',
      '--property',
      'course=os-101',
      '--wait',
      '-f',
      'json',
      ids.top,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const img = JSON.parse(r.stdout) as { id: string; status: string; properties?: Record<string, string> };
    expect(img.status).toBe('active');
    const out = p('flat-saved.qcow2');
    expect((await vdisk(['save', img.id, out])).code).toBe(0);
    expect(JSON.parse(qemuImgOk(['info', '--output=json', out]))['backing-filename']).toBeUndefined();
    expect(qemuImg(['compare', main.top, out]).stdout).toContain('Images are identical');
    // Onto the base: only what mid and top changed.
    const d = await vdisk([
      'flatten',
      '--name',
      'top on base',
      '--backing-image',
      ids.base,
      '--wait',
      '-f',
      'json',
      ids.top,
    ]);
    expect(d.code, d.stderr).toBe(0);
    const delta = JSON.parse(d.stdout) as { id: string; size: number; properties?: Record<string, string> };
    expect(delta.size).toBeLessThan(4 * MiB);
    const chained = p('delta-export.raw');
    expect((await vdisk(['save', '--format', 'raw', delta.id, chained])).code).toBe(0);
    expect(qemuImg(['compare', '-F', 'raw', main.top, chained]).stdout).toContain('Images are identical');
  });

  it("a flatten that fails: exit 1 with the task's message", async () => {
    const small = await startTestServer({ settings: { userStorageQuota: 5 * MiB } });
    try {
      const e = env(undefined, small.url);
      const m = await createOk(['--file', main.base, 'quota-base'], e);
      const r = await vdisk(['flatten', '--wait', m.id], e);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^vdisk: The flatten of image .* failed: .*exceeds the quota/);
    } finally {
      await small.stop();
    }
  });
});

describe('image save of an export cut short', () => {
  it('exits 1 with one line and leaves no file (sized and chunked exports)', async () => {
    const proxy = await cuttingProxy(ts.url, 4096);
    try {
      const tokenEnv = { OS_TOKEN: admin.token, OS_IMAGE_URL: proxy.url };
      // Sized (raw: Content-Length) and chunked (streamOptimized: the length is not known ahead).
      for (const [opts, total] of [
        [['--format', 'raw'], ' of 20971520'],
        [['--format', 'vmdk', '--subformat', 'streamOptimized'], ''],
      ] as const) {
        const out = p('cut.img');
        const r = await vdisk(['save', ...opts, ids.top, out], tokenEnv);
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(
          new RegExp(
            `^vdisk: The download of the ${opts[1]} export of image ${ids.top} was cut short after \\d+${total} bytes; nothing was written to ${out}: try again.\n$`,
          ),
        );
        expect(existsSync(out)).toBe(false);
        expect(existsSync(`${out}.part`)).toBe(false);
      }
      // A file that was there stays as it was.
      const kept = p('kept.raw');
      writeFileSync(kept, 'previous');
      expect((await vdisk(['save', '-f', 'raw', ids.top, kept], tokenEnv)).code).toBe(1);
      expect(readFileSync(kept, 'utf8')).toBe('previous');
    } finally {
      proxy.server.closeAllConnections();
      await new Promise((r) => proxy.server.close(r));
    }
  });

  it('a registry that is not there: one line, no file', async () => {
    const gone = await cuttingProxy(ts.url, 0);
    await new Promise((r) => gone.server.close(r));
    const out = p('nowhere.raw');
    const r = await vdisk(['save', '--format', 'raw', ids.top, out], {
      OS_TOKEN: admin.token,
      OS_IMAGE_URL: gone.url,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vdisk: Unable to establish connection to .*ECONNREFUSED[^\n]*\n$/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('image pull', () => {
  const into = () => p('pulled');
  const names = () => ({
    base: `main-base-${ids.base.slice(0, 8)}.qcow2`,
    mid: `main-mid-${ids.mid.slice(0, 8)}.qcow2`,
    top: `main_top_layer-${ids.top.slice(0, 8)}.qcow2`,
  });

  it('downloads a chain that qemu-img opens as the original one', async () => {
    const r = await vdisk(['pull', '--progress', ids.top, into()]);
    expect(r.code, r.stderr).toBe(0);
    const n = names();
    expect(r.stdout).toBe(
      [
        `downloaded       ${join(into(), n.base)}  (image ${ids.base})`,
        `downloaded       ${join(into(), n.mid)}  (image ${ids.mid})`,
        `downloaded       ${join(into(), n.top)}  (image ${ids.top})`,
        join(into(), n.top),
        '',
      ].join('\n'),
    );
    expect(r.stderr).toContain('(100.00/100%)');
    expect(readdirSync(into()).sort()).toEqual([n.base, n.mid, n.top, '.vdisk-pull.json'].sort());
    const top = join(into(), n.top);
    const infos = JSON.parse(qemuImgOk(['info', '--backing-chain', '--output=json', top]));
    expect(infos.map((i: { filename: string }) => i.filename)).toEqual([
      top,
      join(into(), n.mid),
      join(into(), n.base),
    ]);
    expect(infos[0]['backing-filename']).toBe(n.mid);
    expect(infos[0]['backing-filename-format']).toBe('qcow2');
    expect(infos[1]['backing-filename']).toBe(n.base);
    for (const f of [n.base, n.mid, n.top]) expect(qemuImg(['check', join(into(), f)]).code).toBe(0);
    expect(qemuImg(['compare', main.top, top]).stdout).toContain('Images are identical');
    // The master is byte for byte the uploaded file; overlays are recorded in the manifest.
    expect(sha512(join(into(), n.base))).toBe(sha512(main.base));
    const manifest = JSON.parse(readFileSync(join(into(), '.vdisk-pull.json'), 'utf8')).files;
    expect(Object.keys(manifest).sort()).toEqual([n.mid, n.top].sort());
    expect(manifest[n.top]).toEqual({
      image_id: ids.top,
      os_hash_value: sha512(main.top),
      sha512: sha512(top),
      backing_file: n.mid,
    });
  });

  it('again: nothing downloaded; a file changed locally is downloaded again', async () => {
    const n = names();
    const again = await vdisk(['pull', ids.top, into(), '-f', 'json']);
    expect(again.code, again.stderr).toBe(0);
    const rows = JSON.parse(again.stdout);
    expect(rows.map((x: { status: string }) => x.status)).toEqual(['present', 'present', 'present']);
    expect(rows[2]).toEqual({
      image_id: ids.top,
      name: 'main: top/layer',
      disk_format: 'qcow2',
      file: join(into(), n.top),
      backing_file: join(into(), n.mid),
      status: 'present',
    });
    qemuIo(join(into(), n.mid), ['write -P 0x99 0 64k'], 'qcow2');
    writeFileSync(join(into(), n.base), 'not the master any more');
    const third = await vdisk(['pull', ids.top, into()]);
    expect(third.code, third.stderr).toBe(0);
    expect(third.stdout.split('\n').slice(0, 3)).toEqual([
      `downloaded       ${join(into(), n.base)}  (image ${ids.base})`,
      `downloaded       ${join(into(), n.mid)}  (image ${ids.mid})`,
      `already present  ${join(into(), n.top)}  (image ${ids.top})`,
    ]);
    expect(qemuImg(['compare', main.top, join(into(), n.top)]).stdout).toContain('Images are identical');
  });
});

describe('image tree', () => {
  const id = (n: number) => `${String(n).repeat(8)}-0000-4000-8000-000000000000`;
  let reg: TestServer;
  let teacher: User;
  let student: User;

  beforeAll(async () => {
    reg = await startTestServer();
    const a = await Api.login(reg.url, 'admin', ADMIN_PASSWORD, 'admin');
    const studentProject = await addProjectUser(a, 'students', 'student', 'pw-s');
    await addProjectUser(a, 'teachers', 'teacher', 'pw-t');
    teacher = { user: 'teacher', password: 'pw-t', project: 'teachers' };
    student = { user: 'student', password: 'pw-s', project: 'students' };
    const t = env(teacher, reg.url);
    const s = env(student, reg.url);
    const mk = (file: string, name: string, n: number, extra: string[] = [], e = t) =>
      createOk(['--file', file, '--id', id(n), ...extra, name], e);
    await mk(main.base, 'base', 1, ['--shared']);
    await mk(main.mid, 'mid', 2);
    await mk(main.top, 'top', 3);
    const side = p('side.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'main-base.qcow2', '-F', 'qcow2', side]);
    qemuIo(side, ['write -P 0x33 4m 128k'], 'qcow2');
    await mk(side, 'side', 4);
    writeFileSync(p('standalone.img'), Buffer.alloc(MiB, 0x5a));
    await mk(p('standalone.img'), 'standalone', 5);
    expect((await vdisk(['create', '--id', id(6), 'empty'], t)).code).toBe(0);
    // The student sees the base while it is shared, makes an overlay of it, then loses it.
    expect((await vdisk(['add', 'project', id(1), studentProject], t)).code).toBe(0);
    expect((await vdisk(['set', '--accept', id(1)], s)).code).toBe(0);
    const mine = p('student.qcow2');
    qemuImgOk(['create', '-f', 'qcow2', '-b', 'main-base.qcow2', '-F', 'qcow2', mine]);
    qemuIo(mine, ['write -P 0x44 0 64k'], 'qcow2');
    await mk(mine, 'mine', 7, [], s);
    expect((await vdisk(['remove', 'project', id(1), studentProject], t)).code).toBe(0);
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('draws every image under its master, as vdisk tree draws files', async () => {
    const t = env(teacher, reg.url);
    const r = await vdisk(['tree'], t);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(
      [
        `base  ${id(1)}  [qcow2, active] virtual 16 MiB, stored 4.31 MiB`,
        `├── mid  ${id(2)}  [qcow2, active] virtual 16 MiB, stored 1.31 MiB`,
        `│   └── top  ${id(3)}  [qcow2, active] virtual 20 MiB, stored 1.38 MiB`,
        `└── side  ${id(4)}  [qcow2, active] virtual 16 MiB, stored 448 KiB`,
        `empty  ${id(6)}  [raw, queued] virtual -, stored -`,
        `standalone  ${id(5)}  [raw, active] virtual 1 MiB, stored 1 MiB`,
        '',
      ].join('\n'),
    );
    // A hidden master is left out of lists, not out of the tree: it is fetched by id.
    expect((await vdisk(['set', '--hidden', 'mid'], t)).code).toBe(0);
    expect((await vdisk(['list', '-f', 'value', '-c', 'Name'], t)).stdout).not.toContain('mid');
    expect((await vdisk(['tree'], t)).stdout).toBe(r.stdout);
    expect((await vdisk(['set', '--unhidden', id(2)], t)).code).toBe(0);
  });

  it('shows a master the user cannot see as a placeholder', async () => {
    const r = await vdisk(['tree'], env(student, reg.url));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(
      [
        `? ${id(1)} (not visible)`,
        `└── mine  ${id(7)}  [qcow2, active] virtual 16 MiB, stored 384 KiB`,
        '',
      ].join('\n'),
    );
  });

  it('with IMAGE: its masters to the root and its dependents; -f json', async () => {
    const r = await vdisk(['tree', 'mid'], env(teacher, reg.url));
    expect(r.stdout).toBe(
      [
        `base  ${id(1)}  [qcow2, active] virtual 16 MiB, stored 4.31 MiB`,
        `└── mid  ${id(2)}  [qcow2, active] virtual 16 MiB, stored 1.31 MiB`,
        `    └── top  ${id(3)}  [qcow2, active] virtual 20 MiB, stored 1.38 MiB`,
        '',
      ].join('\n'),
    );
    const j = await vdisk(['tree', id(7), '-f', 'json'], env(student, reg.url));
    expect(JSON.parse(j.stdout)).toEqual([
      {
        id: id(1),
        visible: false,
        children: [
          {
            id: id(7),
            name: 'mine',
            disk_format: 'qcow2',
            status: 'active',
            visibility: 'shared',
            virtual_size: 16 * MiB,
            size: statSync(p('student.qcow2')).size,
            visible: true,
            children: [],
          },
        ],
      },
    ]);
  });
});
