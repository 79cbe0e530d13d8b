import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

for (const subformat of [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
]) {
  runDeviceConformance({
    format: 'vmdk',
    label: `vmdk subformat=${subformat} (created by qemu-img)`,
    checkable: true,
    create: async (path, size) => {
      qemuImgOk(['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, path, String(size)]);
    },
  });
}

runDeviceConformance({
  format: 'vmdk',
  label: 'vmdk zeroed_grain=on adapter_type=lsilogic (created by vdisk)',
  checkable: true,
  create: async (path, size) => {
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'vmdk',
      '-o',
      'zeroed_grain=on,adapter_type=lsilogic',
      path,
      String(size),
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});

runDeviceConformance({
  format: 'vmdk',
  label: 'vmdk streamOptimized (created by vdisk)',
  checkable: true,
  create: async (path, size) => {
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'vmdk',
      '-o',
      'subformat=streamOptimized',
      path,
      String(size),
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});
