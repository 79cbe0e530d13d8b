import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

async function vdiskCreate(path: string, size: number, opts: string): Promise<void> {
  const r = await vdisk(['create', '-q', '-f', 'vhdx', ...(opts ? ['-o', opts] : []), path, String(size)]);
  if (r.code !== 0) throw new Error(r.stderr);
}

for (const [label, opts] of [
  ['vhdx dynamic (vdisk create, 1 MiB blocks)', 'block_size=1M'],
  ['vhdx dynamic, block_state_zero=off', 'block_state_zero=off'],
  ['vhdx fixed (zero blocks, as qemu makes it)', 'subformat=fixed'],
  ['vhdx fixed, block_state_zero=off (blocks present)', 'subformat=fixed,block_state_zero=off'],
] as const) {
  runDeviceConformance({
    format: 'vhdx',
    label,
    checkable: true,
    create: (path, size) => vdiskCreate(path, size, opts),
  });
}

runDeviceConformance({
  format: 'vhdx',
  label: 'vhdx dynamic (qemu-img create)',
  checkable: true,
  create: async (path, size) => {
    qemuImgOk(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', path, String(size)]);
  },
});
