import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectFormat, PROBE_RANGES, type Probe, probeBlob } from './detect.js';

/** The probe the page reads, from a file on disk made by the real qemu-img. */
function probeFile(path: string): Probe {
  const size = statSync(path).size;
  const fd = openSync(path, 'r');
  const read = ([a, b]: readonly [number, number]) => {
    const buf = new Uint8Array(b - a);
    if (b > a) readSync(fd, buf, 0, b - a, a);
    return buf;
  };
  try {
    const r = PROBE_RANGES(size);
    return { head: read(r.head), iso: read(r.iso), tail: read(r.tail), size };
  } finally {
    closeSync(fd);
  }
}

let dir = '';
const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { stdio: 'pipe' });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vdisk-detect-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('disk format detection from the first bytes (images made by qemu-img)', () => {
  const cases: [string, string[], string, number][] = [
    ['qcow2', ['-f', 'qcow2'], 'qcow2', 64 << 20],
    ['qed', ['-f', 'qed'], 'qed', 64 << 20],
    ['vmdk', ['-f', 'vmdk'], 'vmdk', 64 << 20],
    ['vmdk-stream', ['-f', 'vmdk', '-o', 'subformat=streamOptimized'], 'vmdk', 64 << 20],
    ['vdi', ['-f', 'vdi'], 'vdi', 64 << 20],
    ['vhdx', ['-f', 'vhdx'], 'vhdx', 64 << 20],
    ['vhd-dynamic', ['-f', 'vpc'], 'vhd', -1],
    ['vhd-fixed', ['-f', 'vpc', '-o', 'subformat=fixed'], 'vhd', -1],
    ['raw', ['-f', 'raw'], 'raw', 64 << 20],
  ];
  for (const [name, opts, format, vsize] of cases) {
    it(`${name} → ${format}`, () => {
      const path = join(dir, name);
      qemuImg('create', '-q', ...opts, path, '64M');
      const d = detectFormat(probeFile(path));
      expect(d.format).toBe(format);
      expect(d.overlay).toBeUndefined();
      if (vsize > 0 && format !== 'vhdx') expect(d.virtualSize).toBe(vsize);
      if (format === 'vhd') {
        // vpc rounds to its CHS geometry: qemu-img info says the same size.
        const info = JSON.parse(qemuImg('info', '--output=json', '-f', 'vpc', path).toString());
        expect(d.virtualSize).toBe(info['virtual-size']);
      }
      expect(d.reason).not.toBe('');
    });
  }

  it('a fixed VHD is found by its footer in the last 512 bytes', () => {
    const d = detectFormat(probeFile(join(dir, 'vhd-fixed')));
    expect(d.reason).toMatch(/last 512/);
  });

  it('a vmdk descriptor file is vmdk', () => {
    const path = join(dir, 'desc.vmdk');
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', path, '1M');
    expect(detectFormat(probeFile(path)).format).toBe('vmdk');
  });

  it('an ISO 9660 image: CD001 at 0x8001', () => {
    const iso = new Uint8Array(0x9000);
    iso.set(new TextEncoder().encode('CD001'), 0x8001);
    const path = join(dir, 'cd.iso');
    writeFileSync(path, iso);
    const d = detectFormat(probeFile(path));
    expect(d.format).toBe('iso');
    expect(d.virtualSize).toBe(0x9000);
  });

  it('qcow2 and qed overlays name their backing file', () => {
    for (const f of ['qcow2', 'qed']) {
      const base = join(dir, `base.${f}`);
      const top = join(dir, `top.${f}`);
      qemuImg('create', '-q', '-f', f, base, '16M');
      qemuImg('create', '-q', '-f', f, '-b', `base.${f}`, '-F', f, top);
      const d = detectFormat(probeFile(top));
      expect(d.format).toBe(f);
      expect(d.overlay).toEqual({ backingFile: `base.${f}` });
      expect(d.virtualSize).toBe(16 << 20);
    }
  });

  it('small and empty files are raw', () => {
    expect(
      detectFormat({ head: new Uint8Array(3), iso: new Uint8Array(0), tail: new Uint8Array(3), size: 3 }),
    ).toMatchObject({ format: 'raw', virtualSize: 3 });
    expect(
      detectFormat({ head: new Uint8Array(0), iso: new Uint8Array(0), tail: new Uint8Array(0), size: 0 })
        .format,
    ).toBe('raw');
  });

  it('probeBlob reads only slices of a Blob', async () => {
    const path = join(dir, 'qcow2');
    const probe = probeFile(path);
    // A Blob whose slices are recorded: the page never reads the whole file.
    const size = 64 << 20;
    const slices: [number, number][] = [];
    const fake = {
      size,
      slice(a: number, b: number) {
        slices.push([a, b]);
        const bytes = a === 0 ? probe.head : a === 0x8001 ? probe.iso : probe.tail;
        return new Blob([bytes.slice()]);
      },
    } as unknown as Blob;
    expect((await probeBlob(fake)).format).toBe('qcow2');
    expect(slices.every(([a, b]) => b - a <= 4096)).toBe(true);
  });
});
