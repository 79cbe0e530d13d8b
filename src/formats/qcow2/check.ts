/**
 * qemu-img check for qcow2 (QEMU's qcow2_check_refcounts): walk every structure that holds
 * clusters (header, active and snapshot L1/L2 tables, data and compressed clusters, the
 * snapshot table, the refcount table and blocks, the bitmap directory), count references
 * per host cluster, compare them with the stored refcounts, and report (or repair) what
 * differs, with qemu's messages and counters.
 */
import { CHECK_ERROR_REPORT, type CheckResult } from '../../core/driver.js';
import { strerror, VdiskError } from '../../core/errors.js';
import { type BitmapEntry, loadBitmapDirectory, parseBitmapsExt, readBitmapTable } from './bitmaps.js';
import { type Metadata, metadataOverlap, readOrZeros } from './check-open.js';
import { checkReadSnapshotTable, fixSnapshotTable } from './check-snapshots.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, INCOMPAT_CORRUPT, MAX_L1_BYTES, setU64 } from './header.js';
import {
  decodeCompressedBig,
  entryOffset,
  isCompressed,
  isCopied,
  isZero,
  L1_RESERVED_HI,
  L1_RESERVED_LO,
  L2_STD_RESERVED_HI,
  L2_STD_RESERVED_LO,
  withCopied,
} from './l2-entry.js';
import type { Qcow2Metadata } from './metadata.js';

const ZERO_BLOCK = Buffer.alloc(512);

/**
 * Entries [i, i + 512 / entryBytes) of an L2 table are all zero (one memcmp): the walks below
 * skip such blocks, which are nearly all of a sparse image's tables (a 1 TiB image with a few
 * clusters of data is mostly zero entries, and the per-entry loop ran before V8 optimised it).
 */
function zeroBlockAt(table: Uint8Array, i: number, entryBytes: number): boolean {
  const start = i * entryBytes;
  if (start % 512 !== 0 || start + 512 > table.length) return false;
  return Buffer.from(table.buffer, table.byteOffset + start, 512).equals(ZERO_BLOCK);
}

/** Indexes of an L2 table's entries, passing over 512-byte blocks of zeros. */
function* usedEntries(table: Uint8Array, meta: Qcow2Metadata): Generator<number> {
  const perBlock = 512 / meta.entryBytes;
  for (let i = 0; i < meta.l2Entries; i++) {
    if (zeroBlockAt(table, i, meta.entryBytes)) {
      i += perBlock - 1;
      continue;
    }
    yield i;
  }
}

/** The check stops here (QEMU's check returned an error): `failure` is set. */
class CheckAborted extends Error {}

/**
 * QEMU's qcow2_signal_corruption (fatal): said once; a writable image is marked corrupt.
 */
async function signalCorruption(
  st: { signalled?: boolean; meta: Qcow2Metadata; res: CheckResult },
  msg: string,
): Promise<void> {
  if (st.signalled === true) return;
  st.signalled = true;
  const { meta } = st;
  if (meta.readOnly) {
    st.res.messages.push(
      `qcow2: Image is corrupt: ${msg}; further non-fatal corruption events will be suppressed`,
    );
    return;
  }
  st.res.messages.push(
    `qcow2: Marking image as corrupt: ${msg}; further corruption events will be suppressed`,
  );
  if (meta.version === 3 && (meta.header.incompatible & INCOMPAT_CORRUPT) === 0) {
    meta.header.incompatible |= INCOMPAT_CORRUPT;
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, meta.header.incompatible);
    await meta.file.write(b, 72);
  }
}

/**
 * QEMU's qcow2_pre_write_overlap_check: false (after signalling the corruption) when a write
 * there would overwrite metadata.
 */
async function writeAllowed(
  st: { signalled?: boolean; meta: Qcow2Metadata; res: CheckResult },
  offset: number,
  size: number,
  ignore: Metadata | null,
): Promise<boolean> {
  const hit = metadataOverlap(st.meta, offset, size, ignore);
  if (hit === null) return true;
  await signalCorruption(st, `Preventing invalid write on metadata (overlaps with ${hit})`);
  return false;
}

interface State {
  counts: Float64Array;
  /** QEMU's nb_clusters: the in-memory refcount table's size (the file's, grown by references). */
  nb: number;
  /** What the walk may repair (QEMU's fix argument of calculate_refcounts). */
  fix: 'none' | 'leaks' | 'all';
  /** QEMU's rebuild flag: the refcount structures themselves are broken. */
  rebuild: boolean;
  /** The corruption message for a bad refcount table entry was printed. */
  signalled?: boolean;
  fileLen: number;
  res: CheckResult;
  meta: Qcow2Metadata;
  snapshotCorruptionsLeft: number;
}

function grow(st: State, k: number): void {
  if (k < st.counts.length) return;
  const next = new Float64Array(Math.max(k + 1, Math.ceil(st.counts.length * 1.5)));
  next.set(st.counts);
  st.counts = next;
}

/** QEMU's qcow2_inc_refcounts_imrt. */
function inc(st: State, offset: number, size: number): void {
  if (size <= 0) return;
  const cs = st.meta.clusterSize;
  if (offset + size - st.fileLen >= cs) {
    st.res.messages.push(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${size.toString(16)}`,
    );
    st.res.corruptions++;
    return;
  }
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  if (last - first > 1 << 26) throw new VdiskError('TOO_LARGE', 'Region too large to check');
  grow(st, last);
  st.nb = Math.max(st.nb, last + 1);
  // The count is kept at the image's refcount width (qcow2_inc_refcounts_imrt): at its
  // maximum, another reference is an overflow.
  const max = 2 ** (2 ** st.meta.header.refcountOrder) - 1;
  for (let k = first; k <= last; k++) {
    if (st.counts[k]! >= max) {
      st.res.messages.push(
        `ERROR: overflow cluster offset=0x${(k * cs).toString(16)}`,
        'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing',
      );
      st.res.corruptions++;
      continue;
    }
    st.counts[k]!++;
  }
}

/**
 * QEMU's check_refcounts_l1: every non-zero entry names an L2 table, which is counted and
 * walked wherever it points (unaligned, past the end of the file, at offset 0: QEMU reads what
 * is there, and zeros past the end of the file, as HostFile.read does).
 */
async function checkL1(
  st: State,
  l1Offset: number,
  l1Size: number,
  fragInfo: boolean,
  active: boolean,
): Promise<void> {
  const meta = st.meta;
  const cs = meta.clusterSize;
  if (l1Size === 0) return;
  inc(st, l1Offset, l1Size * 8);
  const raw = new Uint8Array(l1Size * 8);
  await readOrZeros(meta.file, raw, l1Offset, st.fileLen);
  const v = new DataView(raw.buffer);
  const tables = new AheadReader(meta, l2Offsets(v, l1Size), st.fileLen);
  for (let i = 0; i < l1Size; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    // L1E_RESERVED_MASK: bits 0-8 and 56-62.
    if ((hi & L1_RESERVED_HI) !== 0 || (lo & L1_RESERVED_LO) !== 0) {
      st.res.messages.push(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      st.res.corruptions++;
    }
    const l2 = entryOffset(hi, lo);
    inc(st, l2, cs);
    if (l2 % cs !== 0) {
      st.res.messages.push(
        `ERROR l2_offset=${l2.toString(16)}: Table is not cluster aligned; L1 entry corrupted`,
      );
      st.res.corruptions++;
    }
    await checkL2(st, await tables.next(l2), l2, fragInfo, active);
  }
}

/** A number as printf's %#x prints it (no prefix for 0). */
const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`);

/** A 64-bit entry as printf's PRIx64 prints it. */
function hex64(hi: number, lo: number): string {
  return (BigInt(hi >>> 0) * 0x100000000n + BigInt(lo >>> 0)).toString(16);
}

/**
 * Reads the tables a walk will visit, in the walk's order, with up to 32 reads in flight
 * (a 1 TiB image with small clusters has tens of thousands of L2 tables).
 */
class AheadReader {
  private readonly queue: Array<{ off: number; p: Promise<Uint8Array> }> = [];
  private pos = 0;

  constructor(
    private readonly meta: Qcow2Metadata,
    private readonly offsets: number[],
    private readonly fileLen: number,
  ) {
    while (this.queue.length < 32 && this.pos < offsets.length) this.start();
  }

  private start(): void {
    const off = this.offsets[this.pos++]!;
    const buf = new Uint8Array(this.meta.clusterSize);
    const p = readOrZeros(this.meta.file, buf, off, this.fileLen).then(() => buf);
    p.catch(() => {});
    this.queue.push({ off, p });
  }

  async next(off: number): Promise<Uint8Array> {
    const head = this.queue.shift();
    if (this.pos < this.offsets.length) this.start();
    if (head === undefined || head.off !== off) throw new Error('check: tables read out of order');
    return head.p;
  }
}

/** The L2 tables a walk over an L1 table reads, in order (every non-zero entry). */
function l2Offsets(v: DataView, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    if (hi !== 0 || lo !== 0) out.push(entryOffset(hi, lo));
  }
  return out;
}

/** QEMU's check_refcounts_l2. */
async function checkL2(
  st: State,
  table: Uint8Array,
  l2off: number,
  fragInfo: boolean,
  _active: boolean,
): Promise<void> {
  const meta = st.meta;
  const cs = meta.clusterSize;
  const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
  // Fragmentation is counted within each L2 table (as QEMU does).
  let nextContiguous = 0;
  const ext = meta.extL2;
  for (const i of usedEntries(table, meta)) {
    const e = i * meta.entryBytes;
    const hi = v.getUint32(e);
    const lo = v.getUint32(e + 4);
    const bhi = ext ? v.getUint32(e + 8) : 0;
    const blo = ext ? v.getUint32(e + 12) : 0;
    const entryHex = () => hex64(hi, lo);
    const compressed = isCompressed(hi);
    // L2E_STD_RESERVED_MASK (bits 1-8 and 56-61) of a standard cluster descriptor.
    if (!compressed && ((hi & L2_STD_RESERVED_HI) !== 0 || (lo & L2_STD_RESERVED_LO) !== 0)) {
      st.res.messages.push(`ERROR found l2 entry with reserved bits set: ${entryHex()}`);
      st.res.corruptions++;
    }
    if (compressed) {
      // Up to 62 bits of host offset: exact as a BigInt (a corrupted entry names any of them).
      const { offset: coffBig, sectors } = decodeCompressedBig(hi, lo, meta.clusterBits);
      const coff = Number(coffBig);
      if (isCopied(hi)) {
        st.res.messages.push(
          `ERROR: coffset=0x${coffBig.toString(16)}: copied flag must never be set for compressed clusters`,
        );
        st.res.corruptions++;
      }
      if (meta.hasDataFile) {
        st.res.messages.push(
          `ERROR compressed cluster ${i} with data file, entry=0x${hex64(withCopied(hi, false), lo)}`,
        );
        st.res.corruptions++;
        continue;
      }
      if (bhi !== 0 || blo !== 0) {
        st.res.messages.push(
          `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(withCopied(hi, false), lo)}`,
        );
        st.res.corruptions++;
        continue;
      }
      const csize = sectors * 512 - (lo & 511);
      if (!Number.isSafeInteger(coff)) {
        // Past any file: qcow2_inc_refcounts_imrt's message, with the exact offset.
        st.res.messages.push(
          `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${coffBig.toString(16)} size 0x${csize.toString(16)}`,
        );
        st.res.corruptions++;
      } else inc(st, coff, csize);
      if (fragInfo) {
        st.res.allocatedClusters!++;
        st.res.compressedClusters!++;
        st.res.fragmentedClusters!++;
      }
      continue;
    }
    const host = entryOffset(hi, lo);
    if (meta.hasHost(hi, host)) {
      if (ext && (bhi & blo) !== 0) {
        st.res.messages.push(
          `ERROR offset=${host.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`,
        );
        st.res.corruptions++;
      }
      if (host % cs !== 0) {
        st.res.corruptions++;
        const containsData = ext ? blo !== 0 : !isZero(lo);
        if (containsData) {
          st.res.messages.push(
            `ERROR offset=${host.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`,
          );
        } else {
          const fix = st.fix === 'all';
          st.res.messages.push(
            `${fix ? 'Repairing' : 'ERROR'} offset=${host.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
          );
          if (fix) {
            if (
              !(await writeAllowed(
                st,
                l2off + e,
                meta.entryBytes,
                _active ? 'active L2 table' : 'inactive L2 table',
              ))
            ) {
              // QEMU stops checking this table and fails the check.
              st.res.messages.push('ERROR: Overlap check failed');
              st.res.checkErrors++;
              st.res.failure = 'Input/output error';
              throw new CheckAborted();
            }
            // QEMU's fix_l2_entry_by_zero: the entry becomes a plain zero cluster (with extended
            // L2 entries, its allocated subclusters become zero ones).
            if (ext) {
              v.setUint32(e + 8, (bhi | blo) >>> 0);
              v.setUint32(e + 12, 0);
              v.setUint32(e, 0);
              v.setUint32(e + 4, 0);
            } else {
              v.setUint32(e, 0);
              v.setUint32(e + 4, 1);
            }
            await meta.file.write(table.subarray(e, e + meta.entryBytes), l2off + e);
            st.res.corruptions--;
            st.res.corruptionsFixed++;
            continue;
          }
        }
      }
      if (fragInfo) {
        st.res.allocatedClusters!++;
        if (nextContiguous !== 0 && host !== nextContiguous) st.res.fragmentedClusters!++;
        nextContiguous = host + cs;
      }
      if (!meta.hasDataFile) inc(st, host, cs);
    } else if (ext && blo !== 0) {
      st.res.messages.push(
        `ERROR: Unallocated cluster has non-zero subcluster allocation bitmap, entry=0x${entryHex()}`,
      );
      st.res.corruptions++;
    }
  }
}

/** Check (and with repair, fix) the image's refcounts. The image's caches must be flushed. */
export async function checkImage(
  meta: Qcow2Metadata,
  repair: 'none' | 'leaks' | 'all',
): Promise<CheckResult> {
  const res: CheckResult = {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocatedClusters: 0,
    totalClusters: Math.ceil(meta.size / meta.clusterSize),
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
  };
  const cs = meta.clusterSize;
  // QEMU's qcow2_check_read_snapshot_table runs first. An image opened for check has not read
  // its snapshot table yet; any other (a dirty image repaired at open) has read it strictly.
  const snap = meta.forCheck ? await checkReadSnapshotTable(meta, repair, res.messages) : undefined;
  if (snap?.failure !== undefined) {
    res.checkErrors++;
    res.failure = snap.failure;
    return res;
  }
  const fileLen = await meta.file.size();
  const nb = Math.ceil(fileLen / cs);
  const st: State = {
    counts: new Float64Array(nb),
    nb,
    fix: repair,
    rebuild: false,
    fileLen,
    res,
    meta,
    // Snapshot-table corruptions that -r all does not repair keep the image from being marked clean.
    snapshotCorruptionsLeft: repair === 'all' ? 0 : (snap?.corruptions ?? 0),
  };
  try {
    await checkRefcounts(st, repair);
  } catch (err) {
    if (err instanceof CheckAborted) return res;
    throw err;
  }
  if (snap === undefined || res.failure !== undefined) return res;
  // qcow2_check_fix_snapshot_table: -r all writes the table again.
  if (snap.corruptions > 0 && repair === 'all') {
    const why = await fixSnapshotTable(
      meta,
      snap.entries,
      (o, n) => writeAllowed(st, o, n, null),
      res.messages,
    );

    if (why !== undefined) {
      res.checkErrors++;
      res.messages.push(`ERROR failed to update snapshot table: ${why}`);
      res.failure = why;
      return res;
    }
    snap.corruptionsFixed += snap.corruptions;
    snap.corruptions = 0;
  }
  res.corruptions += snap.corruptions;
  res.corruptionsFixed += snap.corruptionsFixed;
  return res;
}

/** QEMU's qcow2_check_refcounts. */
async function checkRefcounts(st: State, repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
  const { meta, res } = st;
  const cs = meta.clusterSize;
  await calculate(st);
  // A bad bitmap table stops the check (QEMU's calculate_refcounts returns its error).
  if (res.failure !== undefined) return res;

  // Compare with the stored refcounts: first without fixing (QEMU prints the problems),
  // then, when repairing and something is wrong, again with fixing from the same start.
  const fixLeaks = repair !== 'none';
  const fixErrors = repair === 'all';
  const before = { corruptions: res.corruptions, leaks: res.leaks };
  const n = st.nb;
  const pass = await compareRefcounts(st, n, false, false);
  let highest = pass.highest;
  const rebuild = st.rebuild || pass.rebuild;
  if (rebuild && fixErrors) {
    // QEMU's path: new refcount structures from the counted references, then a recount
    // (the old structures are now leaked, and those leaks are repaired silently).
    res.messages.push('Rebuilding refcount structure');
    const old = { corruptions: res.corruptions, leaks: res.leaks };
    await rebuildRefcounts(st);
    res.corruptions = 0;
    res.leaks = 0;
    st.nb = Math.max(st.nb, Math.ceil(st.fileLen / cs));
    st.counts = new Float64Array(st.nb);
    st.fix = 'none';
    st.rebuild = false;
    const frag = {
      a: res.allocatedClusters,
      f: res.fragmentedClusters,
      c: res.compressedClusters,
    };
    await calculate(st);
    res.allocatedClusters = frag.a;
    res.fragmentedClusters = frag.f;
    res.compressedClusters = frag.c;
    const saved = { ...res };
    res.leaks = 0;
    res.corruptions = 0;
    const m = st.nb;
    const again = await compareRefcounts(st, m, true, false);
    highest = again.highest;
    if (again.rebuild || st.rebuild) res.messages.push('ERROR rebuilt refcount structure is still broken');
    const freshLeaks = res.leaks;
    res.corruptions = saved.corruptions;
    res.leaks = saved.leaks;
    res.leaksFixed = saved.leaksFixed;
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fixLeaks) {
    if (rebuild) {
      // QEMU gives up here with -EIO.
      res.messages.push('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      res.failure = 'Input/output error';
    } else if (res.leaks > before.leaks || res.corruptions > before.corruptions) {
      res.corruptions = before.corruptions;
      res.leaks = before.leaks;
      highest = (await compareRefcounts(st, n, fixLeaks, fixErrors)).highest;
    }
  }

  if (res.failure !== undefined) return res;
  // QCOW_OFLAG_COPIED must be set exactly where the refcount is 1 (active tables only).
  await checkCopied(st, repair);
  if (fixLeaks || fixErrors) await meta.refcounts!.flush();
  // qcow2_co_check_locked: a repair that leaves no corruption marks the image consistent.
  if (
    fixLeaks &&
    res.checkErrors === 0 &&
    res.corruptions === 0 &&
    st.snapshotCorruptionsLeft === 0 &&
    (meta.header.incompatible & INCOMPAT_CORRUPT) !== 0
  ) {
    meta.header.incompatible &= ~INCOMPAT_CORRUPT;
    const b = new Uint8Array(8);
    setU64(new DataView(b.buffer), 0, meta.header.incompatible);
    await meta.file.write(b, 72);
  }
  res.imageEndOffset = (highest + 1) * cs;
  return res;
}

/** QEMU's calculate_refcounts: count every reference to every host cluster. */
async function calculate(st: State): Promise<void> {
  const { meta, res } = st;
  const cs = meta.clusterSize;
  const rc = await meta.loadRefcounts();
  const h = meta.header;

  inc(st, 0, cs);
  await checkL1(st, meta.l1TableOffset, meta.l1Size, true, true);
  for (const s of meta.snapshotList) {
    if (s.l1TableOffset % cs !== 0) {
      res.messages.push(
        `ERROR snapshot ${s.id} (${s.name}) l1_offset=${hex(s.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    if (s.l1Size > MAX_L1_BYTES / 8) {
      res.messages.push(
        `ERROR snapshot ${s.id} (${s.name}) l1_size=${hex(s.l1Size)}: L1 table is too large; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    await checkL1(st, s.l1TableOffset, s.l1Size, false, false);
  }
  inc(st, h.snapshotsOffset, meta.snapshotTableBytes);
  inc(st, rc.tableOffset, rc.tableClusters * cs);
  // The LUKS header of an encrypted image (qcow2_check_refcounts counts crypto_header).
  if (meta.luks !== undefined) inc(st, meta.luks.ref.offset, meta.luks.ref.length);
  await countBitmaps(st);
  await checkRefblocks(st, rc.tableOffset, rc.table.length);
}

/** QEMU's check_refblocks. */
async function checkRefblocks(st: State, tableOffset: number, entries: number): Promise<void> {
  const { meta, res } = st;
  const cs = meta.clusterSize;
  // The table as stored: the reserved bits (0-8) are masked when it is loaded.
  const raw = new Uint8Array(entries * 8);
  await readOrZeros(meta.file, raw, tableOffset, st.fileLen);
  const v = new DataView(raw.buffer);
  for (let i = 0; i < entries; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    if ((lo & 0x1ff) !== 0) {
      res.messages.push(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      st.rebuild = true;
      continue;
    }
    const off = hi * 0x100000000 + lo;
    if (off % cs !== 0) {
      res.messages.push(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      st.rebuild = true;
      continue;
    }
    const k = off / cs;
    if (k >= st.nb) {
      const fix = st.fix === 'all';
      res.corruptions++;
      res.messages.push(`${fix ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (fix) {
        // QEMU grows the file so that the block lies inside it (zeros: refcounts 0).
        const why = await growFile(meta, off + cs);
        if (why !== null) {
          st.rebuild = true;
          res.messages.push(`${CHECK_ERROR_REPORT}Could not resize file: ${why}`);
          res.messages.push(`ERROR could not resize image: ${why}`);
          continue;
        }
        st.fileLen = await meta.file.size();
        meta.fileEnd = Math.max(meta.fileEnd, st.fileLen);
        st.nb = Math.max(st.nb, Math.ceil(st.fileLen / cs));
        res.corruptions--;
        res.corruptionsFixed++;
        inc(st, off, cs);
      }
      continue;
    }
    inc(st, off, cs);
    if (st.counts[k] !== 1) {
      res.messages.push(`ERROR refcount block ${i} refcount=${st.counts[k]}`);
      res.corruptions++;
      st.rebuild = true;
    }
  }
}

/**
 * Grow the image file to `length` for a repair; null, or why not as strerror says it. Lengths
 * past what a double holds exactly (the host refuses far smaller ones) fail as the host does.
 */
async function growFile(meta: Qcow2Metadata, length: number): Promise<string | null> {
  if (!Number.isSafeInteger(length)) return 'File too large';
  try {
    await meta.file.truncate(length);
    return null;
  } catch (err) {
    if (!(err instanceof VdiskError) || err.cause === undefined) throw err;
    return strerror(err.cause);
  }
}

/**
 * QEMU's rebuild_refcount_structure: refcount blocks for every range that has references,
 * placed first-fit in the counted space, then a refcount table after them, repeated until
 * the new structures cover themselves; then written and put in the header.
 */
async function rebuildRefcounts(st: State): Promise<void> {
  const { meta } = st;
  const cs = meta.clusterSize;
  const rc = meta.refcounts!;
  const per = rc.blockEntries;
  let firstFree = 0;
  const alloc = (n: number, from = firstFree): number => {
    for (let start = from; ; start++) {
      let ok = true;
      for (let k = 0; k < n; k++) {
        if ((st.counts[start + k] ?? 0) !== 0) {
          ok = false;
          start += k;
          break;
        }
      }
      if (!ok) continue;
      grow(st, start + n - 1);
      st.nb = Math.max(st.nb, start + n);
      for (let k = 0; k < n; k++) st.counts[start + k] = 1;
      if (start === firstFree) firstFree = start + n;
      return start;
    }
  };
  const table: number[] = [];
  let tableOffset = -1;
  let tableClusters = 0;
  for (let changed = true; changed; ) {
    changed = false;
    for (let b = 0; b * per < st.counts.length; b++) {
      if ((table[b] ?? 0) !== 0) continue;
      let used = false;
      const end = Math.min(st.counts.length, (b + 1) * per);
      for (let i = b * per; i < end && !used; i++) used = st.counts[i] !== 0;
      if (used) {
        // QEMU allocates no refblock inside a range an earlier refblock already covers.
        table[b] = alloc(1, Math.max(firstFree, b * per)) * cs;
        changed = true;
      }
    }
    const needed = Math.max(1, Math.ceil((table.length * 8) / cs));
    if (needed > tableClusters) {
      tableClusters = needed;
      tableOffset = alloc(needed) * cs;
      changed = true;
    }
  }
  const fail = (what: string): never => {
    // error_report_err of the rebuild's error; the check fails.
    st.res.messages.push(`${CHECK_ERROR_REPORT}ERROR writing ${what}: Input/output error`);
    st.res.failure = 'Input/output error';
    throw new CheckAborted();
  };
  for (let b = 0; b < table.length; b++) {
    const off = table[b] ?? 0;
    if (off === 0) continue;
    if (!(await writeAllowed(st, off, cs, null))) {
      st.res.checkErrors++;
      fail('refblock');
    }
    const buf = new Uint8Array(cs);
    const end = Math.min(st.counts.length, (b + 1) * per);
    for (let i = b * per; i < end; i++) {
      const c = st.counts[i]!;
      if (c !== 0) rc.setIn(buf, i - b * per, Math.min(c, rc.maxRefcount));
    }
    await meta.file.write(buf, off);
  }
  const raw = new Uint8Array(tableClusters * cs);
  const v = new DataView(raw.buffer);
  for (let i = 0; i < table.length; i++) setU64(v, i * 8, table[i] ?? 0);
  // (QEMU counts no check error for this one.)
  if (!(await writeAllowed(st, tableOffset, raw.length, null))) fail('reftable');
  await meta.file.write(raw, tableOffset);
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  setU64(hv, 0, tableOffset);
  hv.setUint32(8, tableClusters);
  await meta.file.write(hdr, 48);
  meta.header.refcountTableOffset = tableOffset;
  meta.header.refcountTableClusters = tableClusters;
  st.fileLen = Math.max(st.fileLen, await meta.file.size());
  meta.fileEnd = Math.max(meta.fileEnd, st.fileLen);
  await meta.reloadRefcounts();
}

/** QEMU's compare_refcounts. */
async function compareRefcounts(
  st: State,
  n: number,
  fixLeaks: boolean,
  fixErrors: boolean,
): Promise<{ highest: number; rebuild: boolean }> {
  const { res, meta } = st;
  const rc = meta.refcounts!;
  const cs = meta.clusterSize;
  let highest = 0;
  let rebuild = false;
  for (let i = 0; i < n; i++) {
    let stored: number;
    try {
      stored = await rc.get(i);
    } catch (err) {
      if (!(err instanceof VdiskError) || err.code !== 'CORRUPT_IMAGE') throw err;
      // QEMU's qcow2_get_refcount fails with -EIO on a bad refcount table entry, after
      // qcow2_signal_corruption said so once.
      await signalCorruption(st, err.message);
      res.messages.push(`Can't get refcount for cluster ${i}: Input/output error`);
      res.checkErrors++;
      continue;
    }
    const refs = st.counts[i] ?? 0;
    if (stored > 0 || refs > 0) highest = i;
    if (stored === refs) continue;
    let fixed: 'leaks' | 'corruptions' | null = null;
    if (stored === 0) rebuild = true;
    else if (stored > refs && fixLeaks) fixed = 'leaks';
    else if (stored < refs && fixErrors) fixed = 'corruptions';
    if (stored === 0 && fixErrors) fixed = 'corruptions';
    res.messages.push(
      `${fixed !== null ? 'Repairing' : stored < refs ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${stored} reference=${refs}`,
    );
    if (fixed !== null) {
      // A missing refcount block gets allocated first (update answers "again" then). A leak
      // repaired to 0 goes back to the host (QCOW2_DISCARD_ALWAYS).
      while ((await rc.update(i * cs, 1, Math.abs(stored - refs), stored > refs, true)) !== undefined) {}
      if (fixed === 'leaks') res.leaksFixed++;
      else res.corruptionsFixed++;
      continue;
    }
    if (stored < refs) res.corruptions++;
    else res.leaks++;
  }
  return { highest, rebuild };
}

/**
 * QEMU's check_oflag_copied: QCOW_OFLAG_COPIED must be set exactly where the refcount is 1
 * (active L1 and L2 tables). Repaired with -r all, and with -r leaks when nothing else is wrong.
 */
async function checkCopied(st: State, fix: 'none' | 'leaks' | 'all'): Promise<void> {
  const { meta, res } = st;
  const repair =
    fix === 'all' || (fix === 'leaks' && res.checkErrors === 0 && res.corruptions === 0 && res.leaks === 0);
  const rc = meta.refcounts!;
  const cs = meta.clusterSize;
  const refcount = async (cluster: number): Promise<number | undefined> => {
    try {
      return await rc.get(cluster);
    } catch (err) {
      // QEMU prints nothing here: compare_refcounts has reported it.
      if (err instanceof VdiskError && err.code === 'CORRUPT_IMAGE') return undefined;
      throw err;
    }
  };
  // The active L1 table as loaded at open (entries as stored, reserved bits too).
  const fileLen = await meta.file.size();
  const l1 = new Uint8Array(meta.l1Size * 8);
  await readOrZeros(meta.file, l1, meta.l1TableOffset, fileLen);
  const lv = new DataView(l1.buffer);
  const offsets: number[] = [];
  for (const l2 of meta.l1Off.subarray(0, meta.l1Size)) if (l2 !== 0) offsets.push(l2);
  const tables = new AheadReader(meta, offsets, fileLen);
  for (let i = 0; i < meta.l1Size; i++) {
    const l2 = meta.l1Off[i]!;
    if (l2 === 0) continue;
    const r1 = await refcount(Math.floor(l2 / cs));
    if (r1 === undefined) {
      await tables.next(l2);
      continue;
    }
    const hi = lv.getUint32(i * 8);
    const lo = lv.getUint32(i * 8 + 4);
    const copied = isCopied(hi);
    if ((r1 === 1) !== copied) {
      res.messages.push(
        `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(hi, lo)} refcount=${r1}`,
      );
      if (repair) {
        lv.setUint32(i * 8, withCopied(hi, r1 === 1));
        // qcow2_write_l1_entry writes the 512-byte block of the table holding the entry.
        const blockStart = Math.floor((i * 8) / 512) * 512;
        const blockEnd = Math.min(l1.length, blockStart + 512);
        if (
          !(await writeAllowed(st, meta.l1TableOffset + blockStart, blockEnd - blockStart, 'active L1 table'))
        ) {
          res.checkErrors++;
          res.failure = 'Input/output error';
          throw new CheckAborted();
        }
        await meta.file.write(l1.subarray(i * 8, i * 8 + 8), meta.l1TableOffset + i * 8);
        meta.l1Copied[i] = r1 === 1 ? 1 : 0;
        res.corruptionsFixed++;
      } else {
        res.corruptions++;
      }
    }
    const table = await tables.next(l2);
    const v = new DataView(table.buffer, table.byteOffset, table.byteLength);
    let dirty = 0;
    for (const j of usedEntries(table, meta)) {
      const e = j * meta.entryBytes;
      const ehi = v.getUint32(e);
      const elo = v.getUint32(e + 4);
      if (isCompressed(ehi)) continue;
      const host = entryOffset(ehi, elo);
      // Normal and preallocated-zero clusters (QCOW2_CLUSTER_NORMAL, _ZERO_ALLOC).
      if (!meta.hasHost(ehi, host)) continue;
      const r = meta.hasDataFile ? 1 : await refcount(Math.floor(host / cs));
      if (r === undefined) continue;
      const c = isCopied(ehi);
      if ((r === 1) !== c) {
        res.messages.push(
          `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(ehi, elo)} refcount=${r}`,
        );
        res.corruptions++;
        if (repair) {
          v.setUint32(e, withCopied(ehi, r === 1));
          dirty++;
        }
      }
    }
    if (dirty > 0) {
      if (!(await writeAllowed(st, l2, cs, 'active L2 table'))) {
        res.messages.push(
          'ERROR: Could not write L2 table; metadata overlap check failed: Input/output error',
        );
        res.checkErrors++;
        res.failure = 'Input/output error';
        throw new CheckAborted();
      }
      await meta.file.write(table, l2);
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
}

/**
 * Persistent bitmaps (QEMU's qcow2_check_bitmaps_refcounts): the directory, each bitmap
 * table and the data clusters it names; a table entry that breaks the rules is a corruption.
 * The directory was checked when the image was opened (a bad one fails the open, as in QEMU).
 */
async function countBitmaps(st: State): Promise<void> {
  const meta = st.meta;
  const h = meta.header;
  const ext = parseBitmapsExt(
    h.extensions.find((e) => e.type === EXT_BITMAPS)?.data,
    (h.autoclear & AUTOCLEAR_BITMAPS) !== 0,
    meta.clusterSize,
    meta.file.path,
  );
  if (ext === undefined) return;
  inc(st, ext.dirOffset, ext.dirSize);
  let list: BitmapEntry[];
  try {
    list = await loadBitmapDirectory(meta.file, ext, meta.clusterSize, meta.size, meta.file.path);
  } catch {
    st.res.corruptions++;
    return;
  }
  for (const e of list) {
    inc(st, e.tableOffset, e.tableSize * 8);
    const table = await readBitmapTable(meta.file, e, meta.clusterSize);
    // QEMU's bitmap_table_load refuses the whole table for one bad entry (in-use bitmaps
    // reach here: the open skipped their tables), and the check fails with its EINVAL.
    if (table.some((t) => t.bad)) {
      st.res.corruptions++;
      st.res.failure = 'Invalid argument';
      return;
    }
    for (const t of table) if (t.offset !== 0) inc(st, t.offset, meta.clusterSize);
  }
}
