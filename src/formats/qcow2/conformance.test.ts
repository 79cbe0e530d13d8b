import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import { openImage } from '../../chain/open.js';
import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

/** qcow2 variants created by the real qemu-img with these -o options. */
const VARIANTS: Array<[string, string]> = [
  ['compat=0.10 (v2)', 'compat=0.10'],
  ['v3', 'compat=1.1'],
  ['extended_l2=on', 'extended_l2=on'],
  ['cluster_size=4k', 'cluster_size=4k'],
  ['cluster_size=2M', 'cluster_size=2M'],
  ['lazy_refcounts=on', 'lazy_refcounts=on'],
];

for (const [label, opts] of VARIANTS) {
  runDeviceConformance({
    format: 'qcow2',
    label: `qcow2 ${label} (created by qemu-img)`,
    checkable: true,
    create: async (path, size) => {
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', opts, path, String(size)]);
    },
  });
}

// An external data file: the image is opened with the data file it names (allowDataFile).
for (const raw of [false, true]) {
  runDeviceConformance({
    format: 'qcow2',
    label: `qcow2 data_file${raw ? ' data_file_raw=on' : ''} (created by qemu-img)`,
    checkable: true,
    create: async (path, size) => {
      const o = `data_file=${path}.data${raw ? ',data_file_raw=on' : ''}`;
      qemuImgOk(['create', '-q', '-f', 'qcow2', '-o', o, path, String(size)]);
    },
    open: (path, writable) => openImage(path, { format: 'qcow2', writable, allowDataFile: true }),
    // data_file_raw=on: the data file is the guest disk byte for byte, readable as raw.
    ...(raw
      ? {
          alsoCheck: (path: string, model: Buffer) =>
            expect(readFileSync(`${path}.data`).equals(model)).toBe(true),
        }
      : {}),
  });
}

for (const [label, opts] of [
  ['v3', []],
  ['extended_l2=on cluster_size=16k', ['-o', 'extended_l2=on,cluster_size=16k']],
] as const) {
  runDeviceConformance({
    format: 'qcow2',
    label: `qcow2 ${label} (created by vdisk)`,
    checkable: true,
    create: async (path, size) => {
      const r = await vdisk(['create', '-q', '-f', 'qcow2', ...opts, path, String(size)]);
      if (r.code !== 0) throw new Error(r.stderr);
    },
  });
}
