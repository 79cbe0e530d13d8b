/**
 * Internal snapshots of a qcow2 image: create, apply (goto) and delete, as qemu-img snapshot
 * -c/-a/-d do them (QEMU's qcow2_snapshot_create/_goto/_delete), but crash-safe.
 *
 * Why not QEMU's order: QEMU raises the refcounts in place and then clears QCOW_OFLAG_COPIED
 * in the active L1/L2 tables (or the reverse on delete). Those are writes to different
 * clusters, so a process killed between them leaves an active entry whose COPIED flag
 * disagrees with its refcount, which `qemu-img check` counts as a corruption.
 *
 * vdisk instead builds the whole new state in clusters that are free in the old state (a
 * shadow transaction) and switches to it with one write of the header fields 24..72 (size,
 * L1 table, refcount table, snapshot table):
 *   - active L2 tables whose COPIED flags must change are copied (the copy carries the new
 *     flags; the active L1 then names the copy), and a new active L1 table is written when
 *     any of its entries changes;
 *   - the refcount blocks whose counts change are written as new blocks, named by a new
 *     refcount table, which also gives the old blocks, the old table and every other
 *     released structure a refcount of 0 in the new state;
 *   - the header then points at the new L1 table, refcount table and snapshot table at once.
 * Killed before the header write, the image is exactly the old one (the new clusters are
 * unreferenced and have refcount 0 there: not even leaks); after it, exactly the new one.
 *
 * Refcounts count paths, as QEMU's check does: a data cluster named by an L2 table that n L1
 * tables name has n references from it. Moving the active L1 from table T to its copy T'
 * therefore changes no data refcount (the path through T becomes the path through T').
 */
import { VdiskError } from '../../core/errors.js';
import { l1EntriesFor, MAX_SNAPSHOTS, setU64 } from './header.js';
import { decodeL1, entryOffset, isCompressed, isCopied, setCopiedAt, withCopied } from './l2-entry.js';
import type { Qcow2Metadata } from './metadata.js';
import { DiscardRuns } from './refcount.js';
import { type Qcow2Snapshot, readSnapshots } from './snapshot.js';

/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE. */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

/** A snapshot table entry as written (QEMU 7.2's layout: 24 bytes of extra data at least). */
export interface SnapshotEntry {
  id: string;
  name: string;
  l1TableOffset: number;
  l1Size: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  vmStateSize: number;
  diskSize: number;
  /** -1 when not recorded. */
  icount: number;
  /** Extra data beyond the 24 bytes vdisk knows (kept as QEMU keeps it). */
  unknownExtra: Uint8Array;
}

/** Refcount changes and allocations of one transaction, applied by commit(). */
class Shadow {
  private deltas = new Int32Array(0);
  private readonly taken = new Set<number>();
  private readonly touchedBlocks = new Set<number>();
  private cursor: number;
  readonly cs: number;

  constructor(private readonly meta: Qcow2Metadata) {
    this.cs = meta.clusterSize;
    this.cursor = meta.refcounts!.freeClusterIndex;
  }

  private grow(k: number): void {
    if (k < this.deltas.length) return;
    const next = new Int32Array(Math.max(k + 1, Math.ceil(this.deltas.length * 1.5), 1024));
    next.set(this.deltas);
    this.deltas = next;
  }

  /** Add `d` to the refcount of every cluster the byte range touches. */
  add(offset: number, length: number, d: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + length - 1) / this.cs);
    this.grow(last);
    const per = this.meta.refcounts!.blockEntries;
    for (let k = first; k <= last; k++) {
      this.deltas[k]! += d;
      this.touchedBlocks.add(Math.floor(k / per));
    }
  }

  delta(k: number): number {
    return k < this.deltas.length ? this.deltas[k]! : 0;
  }

  /** Refcount of cluster k in the new state. */
  async final(k: number): Promise<number> {
    return (await this.meta.refcounts!.get(k)) + this.delta(k);
  }

  /** n contiguous clusters free in the old state and not yet taken; refcount 1 in the new one. */
  async alloc(n: number): Promise<number> {
    const rc = this.meta.refcounts!;
    let run = 0;
    while (run < n) {
      const k = this.cursor++;
      if (this.taken.has(k) || (await rc.get(k)) !== 0) run = 0;
      else run++;
    }
    const start = this.cursor - n;
    for (let k = start; k < start + n; k++) this.taken.add(k);
    this.add(start * this.cs, n * this.cs, 1);
    const off = start * this.cs;
    if (!Number.isSafeInteger(off + n * this.cs)) {
      throw new VdiskError('TOO_LARGE', 'Image file would grow beyond what vdisk supports');
    }
    return off;
  }

  /**
   * Write the new refcount blocks and table, then switch the header to the new state in one
   * write of bytes 24..72.
   */
  async commit(next: {
    size: number;
    l1Size: number;
    l1TableOffset: number;
    nbSnapshots: number;
    snapshotsOffset: number;
  }): Promise<void> {
    const meta = this.meta;
    const rc = meta.refcounts!;
    const cs = this.cs;
    const per = rc.blockEntries;
    // The old table and every block that gets replaced are released in the new state.
    this.add(rc.tableOffset, rc.tableClusters * cs, -1);
    const newBlocks = new Map<number, number>();
    let tableEntries = rc.table.length;
    let tableOffset = -1;
    let tableClusters = 0;
    for (;;) {
      let changed = false;
      for (const b of [...this.touchedBlocks].sort((x, y) => x - y)) {
        if (newBlocks.has(b)) continue;
        newBlocks.set(b, await this.alloc(1));
        const old = b < rc.table.length ? rc.table[b]! : 0;
        if (old !== 0) this.add(old, cs, -1);
        tableEntries = Math.max(tableEntries, b + 1);
        changed = true;
      }
      const need = Math.max(1, Math.ceil((tableEntries * 8) / cs));
      if (need > tableClusters) {
        if (tableClusters > 0) {
          // Too small after all: give the clusters back (they were never written).
          this.add(tableOffset, tableClusters * cs, -1);
          const k0 = tableOffset / cs;
          for (let k = k0; k < k0 + tableClusters; k++) this.taken.delete(k);
        }
        tableClusters = need;
        tableOffset = await this.alloc(need);
        changed = true;
      }
      if (!changed) break;
    }
    // New block contents: the old counts plus the deltas, checked before anything is written.
    const blocks: Array<[number, Uint8Array]> = [];
    const freed = new DiscardRuns(cs);
    for (const [b, at] of newBlocks) {
      const old = b < rc.table.length ? rc.table[b]! : 0;
      const buf = new Uint8Array(cs);
      if (old !== 0) buf.set(await rc.cache.get(old));
      for (let i = 0; i < per; i++) {
        const k = b * per + i;
        const d = this.delta(k);
        if (d === 0) continue;
        const v = rc.getIn(buf, i) + d;
        if (v < 0) {
          throw new VdiskError('CORRUPT_IMAGE', `Refcount of cluster ${k} would drop below zero`, {
            path: meta.file.path,
            offset: k * cs,
          });
        }
        if (v > rc.maxRefcount) {
          // QEMU fails with EINVAL here (e.g. a snapshot of an image with refcount_bits=1).
          throw new VdiskError('INVALID_ARGUMENT', `Refcount of cluster ${k} would overflow`, {
            path: meta.file.path,
            offset: k * cs,
            op: 'EINVAL',
          });
        }
        rc.setIn(buf, i, v);
        if (v === 0) freed.add(k);
      }
      blocks.push([at, buf]);
    }
    const table = new Uint8Array(tableClusters * cs);
    const tv = new DataView(table.buffer);
    for (let b = 0; b < tableEntries; b++) {
      const off = newBlocks.get(b) ?? (b < rc.table.length ? rc.table[b]! : 0);
      setU64(tv, b * 8, off);
    }
    for (const [at, buf] of blocks) await meta.file.write(buf, at);
    await meta.file.write(table, tableOffset);
    await meta.file.flush();
    // The switch: size, crypt method (unchanged), L1, refcount table, snapshot table.
    const h = meta.header;
    const hb = new Uint8Array(48);
    const hv = new DataView(hb.buffer);
    setU64(hv, 0, next.size);
    hv.setUint32(8, h.cryptMethod);
    hv.setUint32(12, next.l1Size);
    setU64(hv, 16, next.l1TableOffset);
    setU64(hv, 24, tableOffset);
    hv.setUint32(32, tableClusters);
    hv.setUint32(36, next.nbSnapshots);
    setU64(hv, 40, next.snapshotsOffset);
    await meta.file.write(hb, 24);
    await meta.file.flush();
    // What the new state released goes back to the host, as QEMU's snapshot operations
    // discard what they free (QCOW2_DISCARD_SNAPSHOT, on by default): only now, when nothing
    // on disk names it any more.
    freed.punch(meta.file);
    h.size = next.size;
    h.l1Size = next.l1Size;
    h.l1TableOffset = next.l1TableOffset;
    h.refcountTableOffset = tableOffset;
    h.refcountTableClusters = tableClusters;
    h.nbSnapshots = next.nbSnapshots;
    h.snapshotsOffset = next.snapshotsOffset;
  }
}

/** The entries of the current table, in the form they are rewritten (QEMU 7.2 keeps unknown extra data). */
async function currentEntries(meta: Qcow2Metadata): Promise<SnapshotEntry[]> {
  const out: SnapshotEntry[] = [];
  for (const s of meta.snapshotList) {
    const head = new Uint8Array(40);
    await meta.file.read(head, s.entryOffset);
    const v = new DataView(head.buffer);
    const extraSize = v.getUint32(36);
    const extra = new Uint8Array(extraSize);
    if (extraSize > 0) await meta.file.read(extra, s.entryOffset + 40);
    out.push({
      id: s.id,
      name: s.name,
      l1TableOffset: s.l1TableOffset,
      l1Size: s.l1Size,
      dateSec: s.dateSec,
      dateNsec: s.dateNsec,
      vmClockNsec: s.vmClockNsec,
      vmStateSize: s.vmStateSize,
      diskSize: s.diskSize ?? meta.size,
      // The reader leaves icount out when it is -1 ("not recorded") or absent (old entries).
      icount: s.icount ?? -1,
      unknownExtra: extraSize > 24 ? extra.slice(24) : new Uint8Array(0),
    });
  }
  return out;
}

/** QEMU's qcow2_write_snapshots layout: 40-byte header, extra data, id, name, 8-aligned. */
export function encodeSnapshotTable(entries: SnapshotEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  for (const e of entries) {
    const id = Buffer.from(e.id, 'utf8');
    const name = Buffer.from(e.name, 'utf8');
    const extraSize = 24 + e.unknownExtra.length;
    const len = Math.ceil((40 + extraSize + id.length + name.length) / 8) * 8;
    const b = new Uint8Array(len);
    const v = new DataView(b.buffer);
    setU64(v, 0, e.l1TableOffset);
    v.setUint32(8, e.l1Size);
    v.setUint16(12, id.length);
    v.setUint16(14, name.length);
    v.setUint32(16, e.dateSec);
    v.setUint32(20, e.dateNsec);
    setU64(v, 24, e.vmClockNsec);
    // A VM state that does not fit in 32 bits is recorded only in the extra data.
    v.setUint32(32, e.vmStateSize <= 0xffffffff ? e.vmStateSize : 0);
    v.setUint32(36, extraSize);
    setU64(v, 40, e.vmStateSize);
    setU64(v, 48, e.diskSize);
    if (e.icount < 0) {
      v.setUint32(56, 0xffffffff);
      v.setUint32(60, 0xffffffff);
    } else setU64(v, 56, e.icount);
    b.set(e.unknownExtra, 64);
    b.set(id, 40 + extraSize);
    b.set(name, 40 + extraSize + id.length);
    // The last entry is not padded on disk (QEMU writes exactly the table's size).
    parts.push(b);
    size += len;
  }
  if (entries.length > 0) {
    const last = entries[entries.length - 1]!;
    const exact =
      40 +
      24 +
      last.unknownExtra.length +
      Buffer.byteLength(last.id, 'utf8') +
      Buffer.byteLength(last.name, 'utf8');
    size -= parts[parts.length - 1]!.length - exact;
    parts[parts.length - 1] = parts[parts.length - 1]!.subarray(0, exact);
  }
  const out = new Uint8Array(size);
  let p = 0;
  for (const b of parts) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}

async function readTable(meta: Qcow2Metadata, l2: number, l1i: number): Promise<Uint8Array> {
  const cs = meta.clusterSize;
  if (l2 % cs !== 0 || l2 + cs > meta.fileEnd) {
    throw new VdiskError(
      'CORRUPT_IMAGE',
      `L2 table offset 0x${l2.toString(16)} (L1 index 0x${l1i.toString(16)}) is invalid`,
      { path: meta.file.path },
    );
  }
  const t = new Uint8Array(cs);
  await meta.file.read(t, l2);
  return t;
}

/** The host ranges (data clusters, compressed data) an L2 table's entries reference. */
function scanTable(meta: Qcow2Metadata, table: Uint8Array, l2: number): Array<[number, number]> {
  const v = new DataView(table.buffer, table.byteOffset, table.length);
  const refs: Array<[number, number]> = [];
  const cs = meta.clusterSize;
  for (let i = 0; i < meta.l2Entries; i++) {
    const e = i * meta.entryBytes;
    const hi = v.getUint32(e);
    const lo = v.getUint32(e + 4);
    if (isCompressed(hi)) {
      const [off, size] = meta.compressedRange(hi, lo, l2, i);
      refs.push([off, size]);
      continue;
    }
    const host = entryOffset(hi, lo);
    if (!meta.hasHost(hi, host) || meta.hasDataFile) continue;
    if (host % cs !== 0 || host >= meta.fileEnd) {
      throw new VdiskError(
        'CORRUPT_IMAGE',
        `Cluster offset 0x${host.toString(16)} is ${host % cs !== 0 ? 'unaligned' : 'past the end of the file'} (L2 offset: 0x${l2.toString(16)}, L2 index: 0x${i.toString(16)})`,
        { path: meta.file.path },
      );
    }
    refs.push([host, cs]);
  }
  return refs;
}

/** Read an L1 table's entries (offsets only). */
async function readL1Offsets(meta: Qcow2Metadata, offset: number, size: number): Promise<Float64Array> {
  if (size > 0 && (offset % meta.clusterSize !== 0 || offset + size * 8 > meta.fileEnd)) {
    throw new VdiskError('CORRUPT_IMAGE', `Snapshot L1 table offset 0x${offset.toString(16)} is invalid`, {
      path: meta.file.path,
    });
  }
  const raw = new Uint8Array(size * 8);
  if (size > 0) await meta.file.read(raw, offset);
  const v = new DataView(raw.buffer);
  const out = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    out[i] = entryOffset(hi, lo);
  }
  return out;
}

/**
 * Add (or remove, d = -1) the paths an L1 table holds: its L2 tables and their data. Tables
 * are read one at a time (memory stays bounded; the refcount deltas take 4 bytes per host
 * cluster).
 */
async function addL1Paths(meta: Qcow2Metadata, tx: Shadow, entries: Float64Array, d: number): Promise<void> {
  for (let i = 0; i < entries.length; i++) {
    const l2 = entries[i]!;
    if (l2 === 0) continue;
    tx.add(l2, meta.clusterSize, d);
    for (const [off, len] of scanTable(meta, await readTable(meta, l2, i), l2)) tx.add(off, len, d);
  }
}

/**
 * The new active L1 table for `entries` (the L2 tables it names), with COPIED flags that
 * match the refcounts of the new state. An L2 table whose entries' flags must change is
 * copied (the copy holds the new flags, the old table loses the active's reference).
 * Returns the encoded table (callers compare it with the current one).
 */
async function finishActive(
  meta: Qcow2Metadata,
  tx: Shadow,
  entries: Float64Array,
  l1Size: number,
): Promise<Uint8Array> {
  const cs = meta.clusterSize;
  const raw = new Uint8Array(l1Size * 8);
  const lv = new DataView(raw.buffer);
  for (let i = 0; i < entries.length && i < l1Size; i++) {
    const l2 = entries[i]!;
    if (l2 === 0) continue;
    const copy = await readTable(meta, l2, i);
    const v = new DataView(copy.buffer);
    let differs = false;
    for (let j = 0; j < meta.l2Entries; j++) {
      const e = j * meta.entryBytes;
      const hi = v.getUint32(e);
      const lo = v.getUint32(e + 4);
      if (isCompressed(hi)) continue;
      const host = entryOffset(hi, lo);
      if (!meta.hasHost(hi, host) || meta.hasDataFile) continue;
      const want = (await tx.final(host / cs)) === 1;
      if (want !== isCopied(hi)) {
        v.setUint32(e, withCopied(hi, want));
        differs = true;
      }
    }
    let target = l2;
    if (differs) {
      target = await tx.alloc(1);
      tx.add(l2, cs, -1);
      await meta.file.write(copy, target);
    }
    setU64(lv, i * 8, target);
    if ((await tx.final(target / cs)) === 1) setCopiedAt(lv, i * 8);
  }
  return raw;
}

async function currentActiveRaw(meta: Qcow2Metadata): Promise<Uint8Array> {
  const raw = new Uint8Array(meta.l1Size * 8);
  if (meta.l1Size > 0) await meta.file.read(raw, meta.l1TableOffset);
  return raw;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/** Write the new snapshot table into the transaction; returns its offset (0 when empty). */
async function writeTable(meta: Qcow2Metadata, tx: Shadow, entries: SnapshotEntry[]): Promise<number> {
  const bytes = encodeSnapshotTable(entries);
  if (bytes.length > MAX_TABLE_BYTES) {
    throw new VdiskError('TOO_LARGE', 'Snapshot table too large', { path: meta.file.path, op: 'EFBIG' });
  }
  // The old table is released in the new state.
  tx.add(meta.header.snapshotsOffset, meta.snapshotTableBytes, -1);
  if (bytes.length === 0) return 0;
  const at = await tx.alloc(Math.ceil(bytes.length / meta.clusterSize));
  await meta.file.write(bytes, at);
  return at;
}

/** Point the header at the new snapshot table and active L1 table, then reload the state. */
async function commitTable(
  meta: Qcow2Metadata,
  tx: Shadow,
  activeL1: number,
  nbSnapshots: number,
  tableAt: number,
  newRaw: Uint8Array,
): Promise<void> {
  await tx.commit({
    size: meta.size,
    l1Size: meta.l1Size,
    l1TableOffset: activeL1,
    nbSnapshots,
    snapshotsOffset: tableAt,
  });
  await reload(meta, newRaw);
}

/** Bring the metadata state up to date with what the header now describes. */
async function reload(meta: Qcow2Metadata, l1Raw: Uint8Array | null): Promise<void> {
  const h = meta.header;
  meta.fileEnd = Math.max(meta.fileEnd, await meta.file.size());
  meta.l2Cache.clear();
  meta.l2Cache.fileEnd = meta.fileEnd;
  if (l1Raw !== null) {
    const n = l1Raw.length / 8;
    const l1 = decodeL1(l1Raw, n);
    meta.l1Off = l1.off;
    meta.l1Copied = l1.copied;
    meta.l1Size = n;
    meta.l1TableOffset = h.l1TableOffset;
  }
  const { snapshots, tableBytes } = await readSnapshots(
    meta.file,
    h.snapshotsOffset,
    h.nbSnapshots,
    meta.fileEnd,
  );
  meta.snapshotList = snapshots;
  meta.snapshotTableBytes = tableBytes;
  await meta.reloadRefcounts();
}

/** QEMU's find_new_snapshot_id: one more than the largest numeric id (strtoul). */
function newId(list: readonly Qcow2Snapshot[]): string {
  let max = 0n;
  for (const s of list) {
    const m = /^\s*\+?(\d+)/.exec(s.id);
    if (m === null) continue;
    const n = BigInt(m[1]!);
    if (n > max) max = n > 0xffffffffffffffffn ? 0xffffffffffffffffn : n;
  }
  return String(max + 1n);
}

/** qemu-img copies the name into a 256-byte buffer (pstrcpy): at most 255 bytes are kept. */
function truncateName(name: string): string {
  const b = Buffer.from(name, 'utf8');
  return b.length <= 255 ? name : b.subarray(0, 255).toString('utf8');
}

export interface CreateSnapshotRequest {
  name: string;
  dateSec: number;
  dateNsec: number;
}

/** QEMU's qcow2_snapshot_create (crash-safe: see the file comment). The caches must be flushed. */
export async function createSnapshot(
  meta: Qcow2Metadata,
  req: CreateSnapshotRequest,
): Promise<Qcow2Snapshot> {
  if (meta.snapshotList.length >= MAX_SNAPSHOTS) {
    throw new VdiskError('TOO_LARGE', 'Too many snapshots', { path: meta.file.path, op: 'EFBIG' });
  }
  if (meta.hasDataFile) {
    throw new VdiskError('UNSUPPORTED', 'Snapshots are not supported with an external data file', {
      path: meta.file.path,
      op: 'ENOTSUP',
    });
  }
  const tx = new Shadow(meta);
  const active = meta.l1Off.slice(0, meta.l1Size);
  // The snapshot's L1 table holds the same L2 tables: one more path to each and its data.
  await addL1Paths(meta, tx, active, 1);
  const oldRaw = await currentActiveRaw(meta);
  const newRaw = await finishActive(meta, tx, active, meta.l1Size);
  let snapL1: number;
  let activeL1 = meta.l1TableOffset;
  const l1Clusters = Math.ceil((meta.l1Size * 8) / meta.clusterSize);
  if (sameBytes(oldRaw, newRaw)) {
    // Nothing in the active tables changes: the snapshot gets a copy, as in QEMU.
    snapL1 = meta.l1Size > 0 ? await tx.alloc(l1Clusters) : 0;
    if (meta.l1Size > 0) await meta.file.write(oldRaw, snapL1);
  } else {
    // The snapshot keeps the old active L1 table; the active one moves to a new table.
    snapL1 = meta.l1TableOffset;
    activeL1 = await tx.alloc(l1Clusters);
    await meta.file.write(newRaw, activeL1);
  }
  const entries = await currentEntries(meta);
  const entry: SnapshotEntry = {
    id: newId(meta.snapshotList),
    name: truncateName(req.name),
    l1TableOffset: snapL1,
    l1Size: meta.l1Size,
    dateSec: req.dateSec,
    dateNsec: req.dateNsec,
    vmClockNsec: 0,
    vmStateSize: 0,
    diskSize: meta.size,
    // qemu-img zeroes the snapshot info it passes (icount 0, measured on 7.2).
    icount: 0,
    unknownExtra: new Uint8Array(0),
  };
  entries.push(entry);
  const tableAt = await writeTable(meta, tx, entries);
  await commitTable(meta, tx, activeL1, entries.length, tableAt, newRaw);
  return meta.snapshotList[meta.snapshotList.length - 1]!;
}

/** QEMU's find_snapshot_by_id_or_name: by id first, then by name. */
export function findByIdOrName(meta: Qcow2Metadata, idOrName: string): number {
  const byId = meta.snapshotList.findIndex((s) => s.id === idOrName);
  return byId >= 0 ? byId : meta.snapshotList.findIndex((s) => s.name === idOrName);
}

/**
 * QEMU's qcow2_snapshot_goto: the active L1 table becomes a copy of the snapshot's, and the
 * virtual size the snapshot's disk size (QEMU truncates the image to it first).
 */
export async function applySnapshot(meta: Qcow2Metadata, index: number): Promise<void> {
  const sn = meta.snapshotList[index]!;
  if (meta.hasDataFile) {
    throw new VdiskError('UNSUPPORTED', 'Snapshots are not supported with an external data file', {
      path: meta.file.path,
      op: 'ENOTSUP',
    });
  }
  const tx = new Shadow(meta);
  const snapEntries = await readL1Offsets(meta, sn.l1TableOffset, sn.l1Size);
  await addL1Paths(meta, tx, snapEntries, 1);
  const old = meta.l1Off.slice(0, meta.l1Size);
  await addL1Paths(meta, tx, old, -1);
  const size = sn.diskSize ?? meta.size;
  const grown = size > meta.size ? l1EntriesFor(size, meta.clusterBits, meta.extL2) : 0;
  const l1Size = Math.max(meta.l1Size, sn.l1Size, grown);
  const newRaw = await finishActive(meta, tx, snapEntries, l1Size);
  if (meta.l1Size > 0) tx.add(meta.l1TableOffset, meta.l1Size * 8, -1);
  const activeL1 = l1Size > 0 ? await tx.alloc(Math.ceil((l1Size * 8) / meta.clusterSize)) : 0;
  if (l1Size > 0) await meta.file.write(newRaw, activeL1);
  await tx.commit({
    size,
    l1Size,
    l1TableOffset: activeL1,
    nbSnapshots: meta.snapshotList.length,
    snapshotsOffset: meta.header.snapshotsOffset,
  });
  await reload(meta, newRaw);
}

/**
 * QEMU's qcow2_snapshot_delete: the entry leaves the table, the snapshot's L1/L2/data lose a
 * reference, its L1 table is freed, and COPIED comes back where a refcount drops to 1.
 */
export async function deleteSnapshot(meta: Qcow2Metadata, index: number): Promise<void> {
  const sn = meta.snapshotList[index]!;
  const tx = new Shadow(meta);
  const snapEntries = await readL1Offsets(meta, sn.l1TableOffset, sn.l1Size);
  await addL1Paths(meta, tx, snapEntries, -1);
  tx.add(sn.l1TableOffset, sn.l1Size * 8, -1);
  const entries = (await currentEntries(meta)).filter((_, i) => i !== index);
  const tableAt = await writeTable(meta, tx, entries);
  const active = meta.l1Off.slice(0, meta.l1Size);
  const oldRaw = await currentActiveRaw(meta);
  const newRaw = await finishActive(meta, tx, active, meta.l1Size);
  let activeL1 = meta.l1TableOffset;
  if (!sameBytes(oldRaw, newRaw)) {
    tx.add(meta.l1TableOffset, meta.l1Size * 8, -1);
    activeL1 = await tx.alloc(Math.ceil((meta.l1Size * 8) / meta.clusterSize));
    await meta.file.write(newRaw, activeL1);
  }
  await commitTable(meta, tx, activeL1, entries.length, tableAt, newRaw);
}
