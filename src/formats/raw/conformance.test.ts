import { runDeviceConformance } from '../../test/conformance.js';
import { qemuImgOk } from '../../test/oracle.js';

runDeviceConformance({
  format: 'raw',
  create: async (path, size) => {
    qemuImgOk(['create', '-f', 'raw', path, String(size)]);
  },
});
