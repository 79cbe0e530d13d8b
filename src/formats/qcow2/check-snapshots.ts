/**
 * The snapshot table as `check` reads and repairs it (QEMU's qcow2_check_read_snapshot_table
 * and qcow2_check_fix_snapshot_table). An image opened for check does not read its snapshot
 * table at open (QEMU's qcow2_do_open skips it under BDRV_O_CHECK, so that a broken table is
 * reported rather than refused); check reads it here first, with QEMU's tolerance: what lies
 * past the end of the file reads as zeros, an entry with too much extra data or a table past
 * 64 MiB fails the check (or, with -r all, is cut back), and a v3 entry without the 16 bytes
 * of extra data every v3 entry needs is a corruption that -r all repairs by rewriting the table.
 */
import { CHECK_ERROR_REPORT } from '../../core/driver.js';
import { readOrZeros } from './check-open.js';
import { getU64, MAX_SNAPSHOTS } from './header.js';
import type { Qcow2Metadata } from './metadata.js';
import type { Qcow2Snapshot } from './snapshot.js';
import { encodeSnapshotTable, type SnapshotEntry } from './snapshot-write.js';

/** QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA and QCOW_MAX_SNAPSHOTS_SIZE. */
const MAX_EXTRA = 1024;
const MAX_TABLE_BYTES = 64 * 1024 * 1024;
const HEADER_BYTES = 40;
/** The extra data QEMU 7.2 knows: vm_state_size_large, disk_size, icount. */
const KNOWN_EXTRA = 24;

/** What reading the table left for the rest of the check. */
export interface SnapshotTableCheck {
  /** Snapshot-table corruptions still to repair (QEMU's snapshot_res.corruptions). */
  corruptions: number;
  corruptionsFixed: number;
  /** The check cannot go on (qemu-img prints "Check failed: …" and exits 1). */
  failure?: string;
  /** The entries as read, for a rewrite by -r all. */
  entries: SnapshotEntry[];
}

const align8 = (n: number): number => Math.ceil(n / 8) * 8;
const text = (b: Uint8Array): string => {
  // QEMU keeps the bytes as a C string: whatever follows a NUL is not shown.
  const nul = b.indexOf(0);
  return Buffer.from(nul < 0 ? b : b.subarray(0, nul)).toString('utf8');
};

/**
 * QEMU's qcow2_check_read_snapshot_table: read the table for check, report (and with
 * `repair === 'all'`, cut back) what is wrong, and set the metadata's snapshot list.
 */
export async function checkReadSnapshotTable(
  meta: Qcow2Metadata,
  repair: 'none' | 'leaks' | 'all',
  messages: string[],
): Promise<SnapshotTableCheck> {
  const fix = repair === 'all';
  const h = meta.header;
  const out: SnapshotTableCheck = { corruptions: 0, corruptionsFixed: 0, entries: [] };
  meta.snapshotList = [];
  meta.snapshotTableBytes = 0;
  let nb = h.nbSnapshots;
  let reduced = 0;
  if (nb > MAX_SNAPSHOTS && fix) {
    messages.push(`Discarding ${nb - MAX_SNAPSHOTS} overhanging snapshots`);
    reduced += nb - MAX_SNAPSHOTS;
    nb = MAX_SNAPSHOTS;
  }
  // qcow2_validate_table(…, "snapshot table").
  if (nb > MAX_SNAPSHOTS) {
    messages.push(`${CHECK_ERROR_REPORT}ERROR snapshot table too large`);
    messages.push(
      `You can force-remove all ${nb - MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all`,
    );
    h.nbSnapshots = 0;
    return { ...out, failure: 'File too large' };
  }
  if (
    h.snapshotsOffset % meta.clusterSize !== 0 ||
    !Number.isSafeInteger(h.snapshotsOffset + nb * HEADER_BYTES)
  ) {
    messages.push(`${CHECK_ERROR_REPORT}ERROR snapshot table offset invalid`);
    h.nbSnapshots = 0;
    return { ...out, failure: 'Invalid argument' };
  }

  const read = await readTable(meta, nb, fix, messages);
  if ('error' in read) {
    messages.push(`${CHECK_ERROR_REPORT}ERROR failed to read the snapshot table: ${read.error}`);
    messages.push(read.hint);
    h.nbSnapshots = 0;
    return { ...out, failure: 'File too large' };
  }
  nb = read.entries.length;
  reduced += read.reduced;
  out.entries = read.entries;
  out.corruptions += reduced + read.dropped;
  h.nbSnapshots = nb;
  meta.snapshotList = read.snapshots;
  meta.snapshotTableBytes = read.tableBytes;
  if (reduced > 0) {
    // The header's count first: the refcount check counts the table as the header has it.
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, nb);
    await meta.file.write(b, 60);
    out.corruptionsFixed += reduced;
    out.corruptions -= reduced;
  }
  // Every v3 entry needs vm_state_size_large and disk_size in its extra data.
  if (meta.version >= 3) {
    read.extraSizes.forEach((size, i) => {
      if (size < 16) {
        out.corruptions++;
        messages.push(`${fix ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      }
    });
  }
  return out;
}

interface TableRead {
  snapshots: Qcow2Snapshot[];
  entries: SnapshotEntry[];
  /** Each entry's extra_data_size as stored (after a cut by -r all). */
  extraSizes: number[];
  tableBytes: number;
  reduced: number;
  dropped: number;
}

/** QEMU's qcow2_do_read_snapshots with its repair mode; reads past EOF give zeros. */
async function readTable(
  meta: Qcow2Metadata,
  count: number,
  repair: boolean,
  messages: string[],
): Promise<TableRead | { error: string; hint: string }> {
  const file = meta.file;
  const fileLen = await file.size();
  const start = meta.header.snapshotsOffset;
  const read = async (len: number, at: number): Promise<Uint8Array> => {
    const b = new Uint8Array(len);
    await readOrZeros(file, b, at, fileLen);
    return b;
  };
  const r: TableRead = { snapshots: [], entries: [], extraSizes: [], tableBytes: 0, reduced: 0, dropped: 0 };
  let offset = start;
  let tableLength = 0;
  for (let i = 0; i < count; i++) {
    const before = offset;
    tableLength = align8(tableLength);
    offset = align8(offset);
    const entryOffset = offset;
    const head = await read(HEADER_BYTES, offset);
    offset += HEADER_BYTES;
    const v = new DataView(head.buffer);
    const idSize = v.getUint16(12);
    const nameSize = v.getUint16(14);
    let extraSize = v.getUint32(36);
    let truncate = false;
    if (extraSize > MAX_EXTRA) {
      if (!repair) {
        return {
          error: `Too much extra metadata in snapshot table entry ${i}`,
          hint: 'You can force-remove this extra metadata with qemu-img check -r all',
        };
      }
      messages.push(
        `Discarding too much extra metadata in snapshot table entry ${i} (${extraSize} > ${MAX_EXTRA})`,
      );
      r.dropped++;
      truncate = true;
    }
    const known = await read(Math.min(KNOWN_EXTRA, extraSize), offset);
    offset += known.length;
    const kv = new DataView(known.buffer);
    let unknownExtra: Uint8Array = new Uint8Array(0);
    if (extraSize > KNOWN_EXTRA) {
      const extraEnd = offset + extraSize - KNOWN_EXTRA;
      if (truncate) extraSize = MAX_EXTRA;
      unknownExtra = await read(extraSize - KNOWN_EXTRA, offset);
      offset = extraEnd;
    }
    const id = text(await read(idSize, offset));
    offset += idSize;
    const name = text(await read(nameSize, offset));
    offset += nameSize;
    tableLength += HEADER_BYTES + extraSize + idSize + nameSize;
    if (tableLength > MAX_TABLE_BYTES || offset - start > 0x7fffffff) {
      if (!repair) {
        return {
          error: 'Snapshot table is too big',
          hint: `You can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`,
        };
      }
      messages.push(`Discarding ${count - i} overhanging snapshots (snapshot table is too big)`);
      r.reduced += count - i;
      offset = before;
      break;
    }
    const vmStateSize = extraSize >= 8 ? getU64(kv, 0) : v.getUint32(32);
    const diskSize = extraSize >= 16 ? getU64(kv, 8) : meta.size;
    const icountRaw = extraSize >= 24 ? [kv.getUint32(16), kv.getUint32(20)] : undefined;
    const icount =
      icountRaw === undefined || (icountRaw[0] === 0xffffffff && icountRaw[1] === 0xffffffff)
        ? -1
        : icountRaw[0]! * 2 ** 32 + icountRaw[1]!;
    const entry: SnapshotEntry = {
      id,
      name,
      l1TableOffset: getU64(v, 0),
      l1Size: v.getUint32(8),
      dateSec: v.getUint32(16),
      dateNsec: v.getUint32(20),
      vmClockNsec: getU64(v, 24),
      vmStateSize: Number.isSafeInteger(vmStateSize) ? vmStateSize : 0,
      diskSize: Number.isSafeInteger(diskSize) ? diskSize : meta.size,
      icount: Number.isSafeInteger(icount) ? icount : -1,
      unknownExtra,
    };
    r.entries.push(entry);
    r.extraSizes.push(extraSize);
    r.snapshots.push({
      id,
      name,
      vmStateSize: entry.vmStateSize,
      dateSec: entry.dateSec,
      dateNsec: entry.dateNsec,
      vmClockNsec: Number.isSafeInteger(entry.vmClockNsec) ? entry.vmClockNsec : 0,
      ...(entry.icount >= 0 ? { icount: entry.icount } : {}),
      ...(extraSize >= 16 ? { diskSize: entry.diskSize } : {}),
      l1TableOffset: entry.l1TableOffset,
      l1Size: entry.l1Size,
      entryOffset,
    });
  }
  r.tableBytes = offset - start;
  return r;
}

/**
 * QEMU's qcow2_check_fix_snapshot_table: with -r all and snapshot-table corruptions left,
 * write the table again (every entry with QEMU 7.2's extra data) in newly allocated clusters,
 * point the header at it and free the old one. Returns an error message, or undefined.
 */
export async function fixSnapshotTable(
  meta: Qcow2Metadata,
  entries: SnapshotEntry[],
  writeAllowed: (offset: number, size: number) => Promise<boolean>,
  messages: string[],
): Promise<string | undefined> {
  const rc = meta.refcounts;
  if (rc == null) return 'Input/output error';
  const bytes = encodeSnapshotTable(entries);
  if (bytes.length > MAX_TABLE_BYTES) return 'File too large';
  const cs = meta.clusterSize;
  const at = bytes.length === 0 ? 0 : await rc.allocClusters(Math.ceil(bytes.length / cs));
  if (bytes.length > 0) {
    // qcow2_write_snapshots' overlap check; on failure the new clusters are given back.
    if (!(await writeAllowed(at, bytes.length))) {
      await rc.free(at, bytes.length, true);
      await rc.flush();
      return 'Input/output error';
    }
    await meta.file.write(bytes, at);
  }
  await rc.flush();
  const head = new Uint8Array(12);
  const hv = new DataView(head.buffer);
  hv.setUint32(0, entries.length);
  hv.setUint32(4, Math.floor(at / 2 ** 32));
  hv.setUint32(8, at >>> 0);
  await meta.file.write(head, 60);
  const old = { offset: meta.header.snapshotsOffset, length: meta.snapshotTableBytes };
  if (old.length > 0) {
    // QEMU's qcow2_free_clusters fails, says so and goes on when a cluster's refcount is
    // already 0 (an old table that ran past the end of the file).
    const cs0 = Math.floor(old.offset / cs);
    const cs1 = Math.ceil((old.offset + old.length) / cs);
    let free = true;
    for (let c = cs0; c < cs1 && free; c++) if ((await rc.get(c)) === 0) free = false;
    // (QCOW2_DISCARD_SNAPSHOT: the old table's clusters go back to the host.)
    if (free) await rc.free(old.offset, old.length, true);
    else messages.push('qcow2_free_clusters failed: Invalid argument');
  }
  await rc.flush();
  meta.header.snapshotsOffset = at;
  meta.header.nbSnapshots = entries.length;
  meta.snapshotTableBytes = bytes.length;
  return undefined;
}
