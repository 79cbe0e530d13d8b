import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qemuImg, qemuImgOk, qemuIo, qemuRawDigest, TSX_LOADER, tempDir, vdisk } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => cleanup());

const p = (name: string) => join(dir, name);

/** base.qed ← mid.qed ← top.qed with data in every layer (qed: the seeds' format). */
function makeChain(sizes: { base?: string; top?: string } = {}): void {
  qemuImgOk(['create', '-q', '-f', 'qed', p('base.qed'), sizes.base ?? '16M']);
  qemuIo(p('base.qed'), ['write -P 0x11 0 8M', 'write -z 4M 64k'], 'qed');
  qemuImgOk(['create', '-q', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', p('mid.qed')]);
  qemuIo(p('mid.qed'), ['write -P 0x22 1M 1M', 'write -z 6M 128k'], 'qed');
  qemuImgOk([
    'create',
    '-q',
    '-f',
    'qed',
    '-b',
    'mid.qed',
    '-F',
    'qed',
    p('top.qed'),
    ...(sizes.top ? [sizes.top] : []),
  ]);
  qemuIo(p('top.qed'), ['write -P 0x33 1536k 3M', 'write -P 0x44 15M 1M', 'write -z 7M 64k'], 'qed');
}

/** Copy the three files to a twin set with a prefix, keeping the relative backing names valid. */
function twin(prefix: string): void {
  const sub = join(dir, prefix);
  mkdirSync(sub, { recursive: true });
  for (const f of ['base.qed', 'mid.qed', 'top.qed']) copyFileSync(p(f), join(sub, f));
}

describe('commit of a qcow2 overlay against qemu-img', () => {
  /** base.qcow2 ← top.qcow2 (data at both ends of the top), and a twin set in q/. */
  function makeQcow2(withSnapshot: boolean): void {
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('base.qcow2'), '256M']);
    qemuIo(p('base.qcow2'), ['write -P 0x11 0 4M'], 'qcow2');
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    qemuIo(p('top.qcow2'), ['write -P 0x5a 1M 32M'], 'qcow2');
    if (withSnapshot) qemuImgOk(['snapshot', '-c', 's1', p('top.qcow2')]);
    qemuIo(p('top.qcow2'), ['write -P 0x33 16M 32M', 'write -P 0x44 200M 8M'], 'qcow2');
    mkdirSync(join(dir, 'q'));
    for (const f of ['base.qcow2', 'top.qcow2']) copyFileSync(p(f), join(dir, 'q', f));
  }
  const blocks = (f: string) => statSync(f).blocks * 512;

  it('empties the overlay back to its metadata, as qemu-img does', async () => {
    makeQcow2(false);
    expect(blocks(p('top.qcow2'))).toBeGreaterThan(48 << 20);
    expect((await vdisk(['commit', p('top.qcow2')])).code).toBe(0);
    qemuImgOk(['commit', join(dir, 'q', 'top.qcow2')]);
    for (const f of ['base.qcow2', 'top.qcow2']) {
      expect(qemuImg(['compare', p(f), join(dir, 'q', f)]).code, f).toBe(0);
      expect(qemuImg(['check', p(f)]).code, f).toBe(0);
    }
    // qemu-img leaves the overlay at 256 KiB: header, refcount table and block, L1 table.
    expect(statSync(p('top.qcow2')).size).toBeLessThanOrEqual(statSync(join(dir, 'q', 'top.qcow2')).size);
    expect(blocks(p('top.qcow2'))).toBeLessThanOrEqual(blocks(join(dir, 'q', 'top.qcow2')));
    const map = JSON.parse(qemuImgOk(['map', '--output=json', p('top.qcow2')])) as Array<{ depth: number }>;
    expect(map.every((e) => e.depth === 1)).toBe(true);
  });

  it('keeps what an internal snapshot still holds', async () => {
    makeQcow2(true);
    expect((await vdisk(['commit', p('top.qcow2')])).code).toBe(0);
    qemuImgOk(['commit', join(dir, 'q', 'top.qcow2')]);
    expect(qemuImg(['check', p('top.qcow2')]).code).toBe(0);
    expect(qemuImg(['compare', p('top.qcow2'), join(dir, 'q', 'top.qcow2')]).code).toBe(0);
    expect(blocks(p('top.qcow2'))).toBeLessThanOrEqual(blocks(join(dir, 'q', 'top.qcow2')) + 65536);
    // The snapshot's content is intact in both.
    for (const d of [dir, join(dir, 'q')]) qemuImgOk(['snapshot', '-a', 's1', join(d, 'top.qcow2')]);
    expect(qemuImg(['compare', p('top.qcow2'), join(dir, 'q', 'top.qcow2')]).code).toBe(0);
    expect(qemuImg(['check', p('top.qcow2')]).code).toBe(0);
  });
});

describe('commit against qemu-img', () => {
  it('commits into the immediate backing: same bytes in every image, clean checks', async () => {
    makeChain();
    twin('q');
    const before = qemuRawDigest(p('top.qed'));
    const v = await vdisk(['commit', p('top.qed')]);
    expect(v).toMatchObject({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    expect(qemuImgOk(['commit', join(dir, 'q', 'top.qed')])).toBe('Image committed.\n');
    for (const f of ['base.qed', 'mid.qed', 'top.qed']) {
      expect(qemuImg(['compare', p(f), join(dir, 'q', f)]).code, f).toBe(0);
      expect(qemuImg(['check', p(f)]).code, f).toBe(0);
    }
    expect(qemuRawDigest(p('top.qed'))).toBe(before);
  });

  it('commits through the chain into a deeper base with -b (implies -d)', async () => {
    makeChain();
    twin('q');
    const before = qemuRawDigest(p('top.qed'));
    expect((await vdisk(['commit', '-b', p('base.qed'), p('top.qed')])).code).toBe(0);
    qemuImgOk(['commit', '-b', join(dir, 'q', 'base.qed'), join(dir, 'q', 'top.qed')]);
    expect(qemuImg(['compare', p('base.qed'), join(dir, 'q', 'base.qed')]).code).toBe(0);
    expect(qemuRawDigest(p('base.qed'))).toBe(before);
    expect(qemuImg(['check', p('base.qed')]).code).toBe(0);
  });

  it('grows a smaller base to the overlay size', async () => {
    makeChain({ base: '8M', top: '16M' });
    twin('q');
    expect((await vdisk(['commit', p('top.qed')])).code).toBe(0);
    qemuImgOk(['commit', join(dir, 'q', 'top.qed')]);
    const vi = JSON.parse(qemuImgOk(['info', '--output=json', p('mid.qed')])) as Record<string, unknown>;
    const qi = JSON.parse(qemuImgOk(['info', '--output=json', join(dir, 'q', 'mid.qed')])) as Record<
      string,
      unknown
    >;
    expect(vi['virtual-size']).toBe(qi['virtual-size']);
    expect(qemuImg(['compare', p('mid.qed'), join(dir, 'q', 'mid.qed')]).code).toBe(0);
  });

  it('words errors as qemu-img', async () => {
    makeChain();
    for (const args of [
      ['commit', 'base.qed'],
      ['commit', '-b', 'nope', 'top.qed'],
      ['commit', 'missing.qed'],
    ]) {
      const q = qemuImg(args, dir);
      const v = await vdisk(args, dir);
      expect(v.code).toBe(q.code);
      expect(v.stderr.replace(/^vdisk:/gm, 'qemu-img:')).toBe(q.stderr);
    }
  });

  it('leaves the chain readable with unchanged content when killed mid-commit', async () => {
    qemuImgOk(['create', '-q', '-f', 'qed', '-o', 'cluster_size=4k', p('base.qed'), '64M']);
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qed',
      '-o',
      'cluster_size=4k',
      '-b',
      'base.qed',
      '-F',
      'qed',
      p('top.qed'),
    ]);
    const cmds = [];
    for (let i = 0; i < 64; i++) cmds.push(`write -P ${i + 1} ${i}M 900k`);
    qemuIo(p('top.qed'), cmds, 'qed');
    const before = qemuRawDigest(p('top.qed'));
    const script = join(dir, 'commit.mts');
    writeFileSync(
      script,
      `import { main } from '${join(process.cwd(), 'src/cli/main.ts')}';\nprocess.exitCode = await main(['commit', '-d', process.argv[2]]);\n`,
    );
    for (let round = 0; round < 3; round++) {
      const child = spawn(process.execPath, ['--import', TSX_LOADER, script, p('top.qed')], {
        stdio: 'ignore',
      });
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, 300 + round * 150));
      child.kill('SIGKILL');
      await exited;
      expect([0, 3]).toContain(qemuImg(['check', p('base.qed')]).code);
      expect(qemuRawDigest(p('top.qed'))).toBe(before);
    }
  });
});

describe('rebase against qemu-img', () => {
  function twoBases(): void {
    qemuImgOk(['create', '-q', '-f', 'qed', p('b1.qed'), '16M']);
    qemuIo(p('b1.qed'), ['write -P 0x11 0 4M', 'write -P 0x12 10M 1M'], 'qed');
    qemuImgOk(['create', '-q', '-f', 'qed', p('b2.qed'), '12M']);
    qemuIo(p('b2.qed'), ['write -P 0x11 0 2M', 'write -P 0x21 3M 2M'], 'qed');
    qemuImgOk(['create', '-q', '-f', 'qed', '-b', 'b1.qed', '-F', 'qed', p('o.qed')]);
    qemuIo(p('o.qed'), ['write -P 0x31 3584k 1M'], 'qed');
    copyFileSync(p('o.qed'), p('q.qed'));
  }

  it('safe rebase keeps the visible content and matches qemu-img', async () => {
    twoBases();
    const before = qemuRawDigest(p('o.qed'));
    const v = await vdisk(['rebase', '-b', 'b2.qed', '-F', 'qed', p('o.qed')]);
    expect(v).toMatchObject({ code: 0, stdout: '', stderr: '' });
    qemuImgOk(['rebase', '-b', 'b2.qed', '-F', 'qed', p('q.qed')]);
    expect(qemuRawDigest(p('o.qed'))).toBe(before);
    expect(qemuImg(['compare', p('o.qed'), p('q.qed')]).code).toBe(0);
    expect(qemuImg(['check', p('o.qed')]).code).toBe(0);
    // Same clusters at the same offsets; only the host's block count (disk size) may differ.
    const noDisk = (t: string) => t.replace(/"actual-size": \d+/, '');
    const vi = await vdisk(['info', '--output=json', p('o.qed')]);
    expect(noDisk(vi.stdout)).toBe(
      noDisk(qemuImgOk(['info', '--output=json', p('q.qed')]).replaceAll('q.qed', 'o.qed')),
    );
  });

  it('detaches with -b "" and rewrites only the reference with -u', async () => {
    twoBases();
    const before = qemuRawDigest(p('o.qed'));
    expect((await vdisk(['rebase', '-b', '', p('o.qed')])).code).toBe(0);
    qemuImgOk(['rebase', '-b', '', p('q.qed')]);
    expect(qemuRawDigest(p('o.qed'))).toBe(before);
    expect(qemuImgOk(['info', p('o.qed')])).not.toContain('backing file');
    expect(qemuImg(['compare', p('o.qed'), p('q.qed')]).code).toBe(0);
    expect((await vdisk(['rebase', '-u', '-b', 'b2.qed', '-F', 'qed', p('o.qed')])).code).toBe(0);
    qemuImgOk(['rebase', '-u', '-b', 'b2.qed', '-F', 'qed', p('q.qed')]);
    expect(qemuImgOk(['info', '--output=json', p('o.qed')]).replace(/"actual-size": \d+/, '')).toBe(
      qemuImgOk(['info', '--output=json', p('q.qed')])
        .replaceAll('q.qed', 'o.qed')
        .replace(/"actual-size": \d+/, ''),
    );
  });

  it('refuses without -F and with a missing new backing, changing nothing', async () => {
    twoBases();
    const before = qemuRawDigest(p('o.qed'));
    for (const args of [
      ['rebase', '-b', 'b2.qed', 'o.qed'],
      ['rebase', '-b', 'nonexist.qed', '-F', 'qed', 'o.qed'],
    ]) {
      const v = await vdisk(args, dir);
      const q = qemuImg(
        args.map((a) => (a === 'o.qed' ? 'q.qed' : a)),
        dir,
      );
      expect(v.code).toBe(q.code);
      expect(v.stderr.replace(/^vdisk:/gm, 'qemu-img:').replaceAll('o.qed', 'q.qed')).toBe(q.stderr);
    }
    expect(qemuRawDigest(p('o.qed'))).toBe(before);
  });
});

describe('qcow2 chains against qemu-img', () => {
  /** base.qcow2 ← mid.qcow2 ← top.qcow2 (4k clusters for mid, to mix geometries). */
  function makeQcow2Chain(sizes: { base?: string; top?: string } = {}): void {
    qemuImgOk(['create', '-q', '-f', 'qcow2', p('base.qcow2'), sizes.base ?? '16M']);
    qemuIo(p('base.qcow2'), ['write -P 0x11 0 8M', 'write -z 4M 64k'], 'qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4k',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      p('mid.qcow2'),
    ]);
    qemuIo(p('mid.qcow2'), ['write -P 0x22 1M 1M', 'write -z 6M 128k'], 'qcow2');
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'mid.qcow2',
      '-F',
      'qcow2',
      p('top.qcow2'),
      ...(sizes.top ? [sizes.top] : []),
    ]);
    qemuIo(
      p('top.qcow2'),
      ['write -P 0x33 1536k 3M', 'write -P 0x44 15M 1M', 'write -z 7M 64k', 'write -c -P 0x55 12M 64k'],
      'qcow2',
    );
    const sub = join(dir, 'q');
    mkdirSync(sub, { recursive: true });
    for (const f of ['base.qcow2', 'mid.qcow2', 'top.qcow2']) copyFileSync(p(f), join(sub, f));
  }

  /** Same visible content, clean check, same info JSON (apart from actual-size) for each file. */
  function expectSame(files: string[]): void {
    for (const f of files) {
      const q = join(dir, 'q', f);
      expect(qemuImg(['compare', p(f), q]).code, f).toBe(0);
      expect(qemuImg(['check', p(f)]).code, f).toBe(0);
      const info = (x: string) =>
        qemuImgOk(['info', '--output=json', x])
          .replace(/"actual-size": \d+,?/, '')
          .replaceAll(join(dir, 'q'), dir);
      expect(info(p(f)), f).toBe(info(q));
    }
  }

  it('commit empties the overlay into its backing', async () => {
    makeQcow2Chain();
    const before = qemuRawDigest(p('top.qcow2'));
    const v = await vdisk(['commit', p('top.qcow2')]);
    expect(v).toMatchObject({ code: 0, stdout: 'Image committed.\n', stderr: '' });
    expect(qemuImgOk(['commit', join(dir, 'q', 'top.qcow2')])).toBe('Image committed.\n');
    expectSame(['base.qcow2', 'mid.qcow2', 'top.qcow2']);
    expect(qemuRawDigest(p('top.qcow2'))).toBe(before);
    // The overlay holds nothing any more: every range comes from below.
    const map = JSON.parse(qemuImgOk(['map', '--output=json', p('top.qcow2')])) as Array<{ depth: number }>;
    expect(map.every((e) => e.depth > 0)).toBe(true);
  });

  it('commit -b into the deepest base, growing it', async () => {
    makeQcow2Chain({ base: '8M', top: '24M' });
    const before = qemuRawDigest(p('top.qcow2'));
    expect((await vdisk(['commit', '-b', p('base.qcow2'), p('top.qcow2')])).code).toBe(0);
    qemuImgOk(['commit', '-b', join(dir, 'q', 'base.qcow2'), join(dir, 'q', 'top.qcow2')]);
    expectSame(['base.qcow2', 'mid.qcow2', 'top.qcow2']);
    expect(qemuRawDigest(p('base.qcow2'))).toBe(before);
  });

  it('safe rebase, rebase -u and detach', async () => {
    makeQcow2Chain();
    const before = qemuRawDigest(p('top.qcow2'));
    const q = (f: string) => join(dir, 'q', f);
    // Safe rebase of top straight onto base.
    expect((await vdisk(['rebase', '-b', 'base.qcow2', '-F', 'qcow2', p('top.qcow2')])).code).toBe(0);
    qemuImgOk(['rebase', '-b', 'base.qcow2', '-F', 'qcow2', q('top.qcow2')]);
    expect(qemuRawDigest(p('top.qcow2'))).toBe(before);
    expectSame(['top.qcow2']);
    // Unsafe: only the reference changes; without -F both refuse.
    const noFmt = ['rebase', '-u', '-b', 'mid.qcow2'];
    const vr = await vdisk([...noFmt, p('top.qcow2')]);
    const qr = qemuImg([...noFmt, q('top.qcow2')]);
    expect(vr.code).toBe(qr.code);
    expect(vr.stderr.replace(/^vdisk:/gm, 'qemu-img:').replace(dir, join(dir, 'q'))).toBe(qr.stderr);
    expect((await vdisk(['rebase', '-u', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2')])).code).toBe(0);
    qemuImgOk(['rebase', '-u', '-b', 'mid.qcow2', '-F', 'qcow2', q('top.qcow2')]);
    expectSame(['top.qcow2']);
    // Detach mid: it becomes standalone with base's content copied in.
    const midBefore = qemuRawDigest(p('mid.qcow2'));
    expect((await vdisk(['rebase', '-b', '', p('mid.qcow2')])).code).toBe(0);
    qemuImgOk(['rebase', '-b', '', q('mid.qcow2')]);
    expect(qemuRawDigest(p('mid.qcow2'))).toBe(midBefore);
    expectSame(['mid.qcow2', 'top.qcow2']);
  });

  it('leaves every image consistent with unchanged content when killed mid-commit (overlay emptied)', async () => {
    qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', p('base.qcow2'), '64M']);
    qemuImgOk([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4k',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      p('top.qcow2'),
    ]);
    const cmds = [];
    for (let i = 0; i < 64; i++) cmds.push(`write -P ${i + 1} ${i}M 900k`);
    qemuIo(p('top.qcow2'), cmds, 'qcow2');
    const before = qemuRawDigest(p('top.qcow2'));
    const script = join(dir, 'commit.mts');
    writeFileSync(
      script,
      `import { main } from '${join(process.cwd(), 'src/cli/main.ts')}';\nprocess.exitCode = await main(['commit', process.argv[2]]);\n`,
    );
    for (let round = 0; round < 4; round++) {
      const child = spawn(process.execPath, ['--import', TSX_LOADER, script, p('top.qcow2')], {
        stdio: 'ignore',
      });
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, 250 + round * 200));
      child.kill('SIGKILL');
      await exited;
      // At worst leaked clusters (exit 3), never corruption.
      expect([0, 3]).toContain(qemuImg(['check', p('base.qcow2')]).code);
      expect([0, 3]).toContain(qemuImg(['check', p('top.qcow2')]).code);
      expect(qemuRawDigest(p('top.qcow2'))).toBe(before);
    }
  });
});
