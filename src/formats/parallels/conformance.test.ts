import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

runDeviceConformance({
  format: 'parallels',
  checkable: true,
  create: async (path, size) => {
    qemuImgOk(['create', '-f', 'parallels', path, String(size)]);
  },
});

runDeviceConformance({
  format: 'parallels',
  label: 'parallels cluster_size=4k (created by vdisk)',
  checkable: true,
  create: async (path, size) => {
    const r = await vdisk(['create', '-q', '-f', 'parallels', '-o', 'cluster_size=4k', path, String(size)]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});
