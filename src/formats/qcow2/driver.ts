/** The qcow2 format driver: probe, open, create (also sequentially), measure. */
import type { FormatDriver } from '../../core/driver.js';
import { QCOW2_AMEND_OPTIONS } from './amend-options.js';
import { createQcow2, QCOW2_CREATE_OPTIONS, qcow2StreamTargetSize } from './create.js';
import { measureQcow2 } from './measure.js';
import { openQcow2 } from './open.js';
import { probeQcow2 } from './probe.js';

export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe: (head) => probeQcow2(head),
  open: (file, opts) => openQcow2(file, opts),
  create: (req) => createQcow2(req),
  async createSequential(src, options) {
    return (await import('./stream.js')).createQcow2Sequential(src, options);
  },
  createOptions: QCOW2_CREATE_OPTIONS,
  supportsBacking: true,
  compressedWrites: true,
  measure: measureQcow2,
  amendOptions: QCOW2_AMEND_OPTIONS,
  streamTargetSize: qcow2StreamTargetSize,
};
