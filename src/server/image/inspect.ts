/**
 * Inspection of an upload's first bytes with the engine's probes: the virtual size of the
 * formats whose header states it (qcow2). Upload safety checks build on this (issue 5).
 */
import { probeQcow2 } from '../../formats/qcow2/probe.js';
import type { ContentInspector } from './data.js';

export const inspectUpload: ContentInspector = (head, img) => {
  if (probeQcow2(head) > 0 && head.length >= 32) {
    // qcow2 header: size (u64, big endian) at offset 24.
    const size = Number(head.readBigUInt64BE(24));
    return { virtualSize: Number.isSafeInteger(size) ? size : null };
  }
  if (img.disk_format === 'raw') return { virtualSize: null };
  return undefined;
};
