import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

runDeviceConformance({
  format: 'vdi',
  checkable: true,
  create: async (path, size) => {
    qemuImgOk(['create', '-f', 'vdi', path, String(size)]);
  },
});

runDeviceConformance({
  format: 'vdi',
  label: 'vdi static=on (created by vdisk)',
  checkable: true,
  create: async (path, size) => {
    const r = await vdisk(['create', '-q', '-f', 'vdi', '-o', 'static=on', path, String(size)]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});
