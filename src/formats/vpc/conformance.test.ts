import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk, vdisk } from '../../test/oracle.js';

// force_size keeps the 8 MiB the suite asks for (CHS rounding would change it).
runDeviceConformance({
  format: 'vpc',
  label: 'vpc dynamic (vdisk create)',
  create: async (path, size) => {
    const r = await vdisk(['create', '-q', '-f', 'vpc', '-o', 'force_size=on', path, String(size)]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});

runDeviceConformance({
  format: 'vpc',
  label: 'vpc dynamic (qemu-img create)',
  create: async (path, size) => {
    qemuImgOk(['create', '-q', '-f', 'vpc', '-o', 'force_size=on', path, String(size)]);
  },
});

runDeviceConformance({
  format: 'vpc',
  label: 'vpc fixed',
  create: async (path, size) => {
    const r = await vdisk([
      'create',
      '-q',
      '-f',
      'vpc',
      '-o',
      'subformat=fixed,force_size=on',
      path,
      String(size),
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
  },
});
