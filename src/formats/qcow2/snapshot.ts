/** The internal snapshot table (qcow2.rst "Snapshots"). */
import type { SnapshotInfo } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import { getU64 } from './header.js';

export interface Qcow2Snapshot extends SnapshotInfo {
  l1TableOffset: number;
  l1Size: number;
  /** Byte range of the entry in the snapshot table (check counts it). */
  entryOffset: number;
}

/** Upper bound of the table's size QEMU accepts (QCOW_MAX_SNAPSHOTS_SIZE). */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

export async function readSnapshots(
  file: HostFile,
  offset: number,
  count: number,
  fileSize: number,
): Promise<{ snapshots: Qcow2Snapshot[]; tableBytes: number }> {
  const out: Qcow2Snapshot[] = [];
  if (count === 0) return { snapshots: out, tableBytes: 0 };
  let pos = offset;
  const bad = (msg: string) => new VdiskError('INVALID_IMAGE', msg, { path: file.path, offset: pos });
  for (let i = 0; i < count; i++) {
    if (pos + 40 > fileSize) throw bad('Snapshot table runs past the end of the file');
    const head = new Uint8Array(40);
    await file.read(head, pos);
    const v = new DataView(head.buffer);
    const l1TableOffset = getU64(v, 0);
    const l1Size = v.getUint32(8);
    const idSize = v.getUint16(12);
    const nameSize = v.getUint16(14);
    const dateSec = v.getUint32(16);
    const dateNsec = v.getUint32(20);
    const vmClock = getU64(v, 24);
    const vmState32 = v.getUint32(32);
    const extraSize = v.getUint32(36);
    if (extraSize > 1024) throw bad('Too much extra metadata in snapshot table entry');
    const rest = new Uint8Array(extraSize + idSize + nameSize);
    if (pos + 40 + rest.length > fileSize) throw bad('Snapshot table runs past the end of the file');
    await file.read(rest, pos + 40);
    const ev = new DataView(rest.buffer);
    let vmStateSize = vmState32;
    let diskSize: number | undefined;
    let icount: number | undefined;
    if (extraSize >= 8) vmStateSize = getU64(ev, 0);
    if (extraSize >= 16) diskSize = getU64(ev, 8);
    if (extraSize >= 24) {
      // -1 means "not recorded".
      const hi = ev.getUint32(16);
      const lo = ev.getUint32(20);
      if (!(hi === 0xffffffff && lo === 0xffffffff)) icount = hi * 2 ** 32 + lo;
    }
    const id = Buffer.from(rest.subarray(extraSize, extraSize + idSize)).toString('utf8');
    const name = Buffer.from(rest.subarray(extraSize + idSize)).toString('utf8');
    if (!Number.isSafeInteger(l1TableOffset) || l1Size * 8 > 32 * 1024 * 1024) {
      throw bad(`Snapshot L1 table of '${name}' is invalid`);
    }
    out.push({
      id,
      name,
      vmStateSize: Number.isFinite(vmStateSize) ? vmStateSize : 0,
      dateSec,
      dateNsec,
      vmClockNsec: Number.isFinite(vmClock) ? vmClock : 0,
      ...(icount !== undefined ? { icount } : {}),
      ...(diskSize !== undefined ? { diskSize } : {}),
      l1TableOffset,
      l1Size,
      entryOffset: pos,
    });
    pos += 40 + rest.length;
    pos = Math.ceil(pos / 8) * 8;
    if (pos - offset > MAX_TABLE_BYTES) throw bad('Snapshot table too large');
  }
  return { snapshots: out, tableBytes: pos - offset };
}
