/**
 * qemu-img check for qcow2 (QEMU's qcow2_check_refcounts): walk every structure that holds
 * clusters (header, active and snapshot L1/L2 tables, data and compressed clusters, the
 * snapshot table, the refcount table and blocks, the bitmap directory), count references
 * per host cluster, compare them with the stored refcounts, and report (or repair) what
 * differs, with qemu's messages and counters.
 */
import type { CheckResult } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { type BitmapEntry, loadBitmapDirectory, parseBitmapsExt, readBitmapTable } from './bitmaps.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, setU64 } from './header.js';
import type { Qcow2Image } from './image.js';

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

const COPIED_HI = 0x80000000;
const COMPRESSED_HI = 0x40000000;

interface State {
  counts: Float64Array;
  fileLen: number;
  res: CheckResult;
  img: Qcow2Image;
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
  const cs = st.img.clusterSize;
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
  for (let k = first; k <= last; k++) st.counts[k]!++;
}

async function checkL1(
  st: State,
  l1Offset: number,
  l1Size: number,
  fragInfo: boolean,
  active: boolean,
): Promise<void> {
  const img = st.img;
  const cs = img.clusterSize;
  inc(st, l1Offset, l1Size * 8);
  if (l1Size === 0) return;
  if (l1Offset + l1Size * 8 > st.fileLen) return;
  const raw = new Uint8Array(l1Size * 8);
  await img.file.read(raw, l1Offset);
  const v = new DataView(raw.buffer);
  const tables = new AheadReader(img, l2Offsets(v, l1Size, cs, st.fileLen));
  for (let i = 0; i < l1Size; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    const l2 = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
    if (l2 === 0) continue;
    inc(st, l2, cs);
    if (l2 % cs !== 0) {
      st.res.messages.push(
        `ERROR l2_offset=${l2.toString(16)}: Table is not cluster aligned; L1 entry corrupted`,
      );
      st.res.corruptions++;
      continue;
    }
    if (l2 + cs > st.fileLen) continue;
    checkL2(st, await tables.next(l2), l2, fragInfo, active);
  }
}

/**
 * Reads the tables a walk will visit, in the walk's order, with up to 32 reads in flight
 * (a 1 TiB image with small clusters has tens of thousands of L2 tables).
 */
class AheadReader {
  private readonly queue: Array<{ off: number; p: Promise<Uint8Array> }> = [];
  private pos = 0;

  constructor(
    private readonly img: Qcow2Image,
    private readonly offsets: number[],
  ) {
    while (this.queue.length < 32 && this.pos < offsets.length) this.start();
  }

  private start(): void {
    const off = this.offsets[this.pos++]!;
    const buf = new Uint8Array(this.img.clusterSize);
    const p = this.img.file.read(buf, off).then(() => buf);
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

/** The L2 tables a walk over an L1 table reads, in order. */
function l2Offsets(v: DataView, count: number, cs: number, fileLen: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const hi = v.getUint32(i * 8);
    const lo = v.getUint32(i * 8 + 4);
    const l2 = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
    if (l2 !== 0 && l2 % cs === 0 && l2 + cs <= fileLen) out.push(l2);
  }
  return out;
}

function checkL2(st: State, table: Uint8Array, l2off: number, fragInfo: boolean, _active: boolean): void {
  const img = st.img;
  const cs = img.clusterSize;
  const v = new DataView(table.buffer);
  // Fragmentation is counted within each L2 table (as QEMU does).
  let nextContiguous = 0;
  const ext = img.extL2;
  const perBlock = 512 / img.entryBytes;
  for (let i = 0; i < img.l2Entries; i++) {
    if (zeroBlockAt(table, i, img.entryBytes)) {
      i += perBlock - 1;
      continue;
    }
    const e = i * img.entryBytes;
    const hi = v.getUint32(e);
    const lo = v.getUint32(e + 4);
    const bhi = ext ? v.getUint32(e + 8) : 0;
    const blo = ext ? v.getUint32(e + 12) : 0;
    const entryHex = () => (hi * 0x100000000 + lo).toString(16);
    if ((hi & COMPRESSED_HI) !== 0) {
      if ((hi & COPIED_HI) !== 0) {
        const [off] = img.compressedRange(hi & ~COPIED_HI, lo, l2off, i);
        st.res.messages.push(
          `ERROR: coffset=0x${off.toString(16)}: copied flag must never be set for compressed clusters`,
        );
        st.res.corruptions++;
      }
      if (img.hasDataFile) {
        st.res.messages.push(`ERROR compressed cluster ${i} with data file, entry=0x${entryHex()}`);
        st.res.corruptions++;
        continue;
      }
      if (bhi !== 0 || blo !== 0) {
        st.res.messages.push(
          `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${entryHex()}`,
        );
        st.res.corruptions++;
        continue;
      }
      const x = 70 - img.clusterBits;
      const coff = (hi & ((1 << (x - 32)) - 1)) * 0x100000000 + lo;
      const sectors = ((hi & 0x3fffffff) >>> (x - 32)) + 1;
      inc(st, coff, sectors * 512 - (coff % 512));
      if (fragInfo) {
        st.res.allocatedClusters!++;
        st.res.compressedClusters!++;
        st.res.fragmentedClusters!++;
      }
      continue;
    }
    const host = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
    if (img.hasHost(hi, host)) {
      if (ext && (bhi & blo) !== 0) {
        st.res.messages.push(
          `ERROR offset=${host.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`,
        );
        st.res.corruptions++;
      }
      if (host % cs !== 0) {
        st.res.corruptions++;
        const containsData = ext ? blo !== 0 : (lo & 1) === 0;
        st.res.messages.push(
          containsData
            ? `ERROR offset=${host.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`
            : `ERROR offset=${host.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
        );
      }
      if (fragInfo) {
        st.res.allocatedClusters!++;
        if (nextContiguous !== 0 && host !== nextContiguous) st.res.fragmentedClusters!++;
        nextContiguous = host + cs;
      }
      if (!img.hasDataFile) inc(st, host, cs);
    } else if (ext && blo !== 0) {
      st.res.messages.push(
        `ERROR: Unallocated cluster has non-zero subcluster allocation bitmap, entry=0x${entryHex()}`,
      );
      st.res.corruptions++;
    }
  }
}

/** Check (and with repair, fix) the image's refcounts. The image's caches must be flushed. */
export async function checkImage(img: Qcow2Image, repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
  const res: CheckResult = {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocatedClusters: 0,
    totalClusters: Math.ceil(img.size / img.clusterSize),
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
  };
  const cs = img.clusterSize;
  const fileLen = await img.file.size();
  const st: State = { counts: new Float64Array(Math.ceil(fileLen / cs)), fileLen, res, img };
  await calculate(st);
  // A bad bitmap table stops the check (QEMU's calculate_refcounts returns its error).
  if (res.failure !== undefined) return res;

  // Compare with the stored refcounts: first without fixing (QEMU prints the problems),
  // then, when repairing and something is wrong, again with fixing from the same start.
  const fixLeaks = repair !== 'none';
  const fixErrors = repair === 'all';
  const before = { corruptions: res.corruptions, leaks: res.leaks };
  const n = Math.max(st.counts.length, Math.ceil(fileLen / cs));
  const pass = await compareRefcounts(st, n, false, false);
  let highest = pass.highest;
  if (pass.rebuild && fixErrors) {
    // QEMU's path: new refcount structures from the counted references, then a recount
    // (the old structures are now leaked, and those leaks are repaired silently).
    res.messages.push('Rebuilding refcount structure');
    const old = { corruptions: res.corruptions, leaks: res.leaks };
    await rebuildRefcounts(st);
    res.corruptions = 0;
    res.leaks = 0;
    st.counts = new Float64Array(Math.ceil(st.fileLen / cs));
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
    const m = Math.max(st.counts.length, Math.ceil(st.fileLen / cs));
    const again = await compareRefcounts(st, m, true, false);
    highest = again.highest;
    if (again.rebuild) res.messages.push('ERROR rebuilt refcount structure is still broken');
    const freshLeaks = res.leaks;
    res.corruptions = saved.corruptions;
    res.leaks = saved.leaks;
    res.leaksFixed = saved.leaksFixed;
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fixLeaks) {
    if (pass.rebuild) {
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
  await checkCopied(img, res);
  if (fixLeaks || fixErrors) await img.refcounts!.flush();
  res.imageEndOffset = (highest + 1) * cs;
  return res;
}

/** QEMU's calculate_refcounts: count every reference to every host cluster. */
async function calculate(st: State): Promise<void> {
  const { img, res, fileLen } = st;
  const cs = img.clusterSize;
  const rc = await img.loadRefcounts();
  const h = img.header;

  inc(st, 0, cs);
  await checkL1(st, img.l1TableOffset, img.l1Size, true, true);
  for (const s of img.snapshotList) {
    if (s.l1TableOffset % cs !== 0) {
      res.messages.push(
        `ERROR snapshot ${s.id} (${s.name}) l1_offset=${s.l1TableOffset.toString(16)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    await checkL1(st, s.l1TableOffset, s.l1Size, false, false);
  }
  inc(st, h.snapshotsOffset, img.snapshotTableBytes);
  inc(st, rc.tableOffset, rc.tableClusters * cs);
  // The LUKS header of an encrypted image (qcow2_check_refcounts counts crypto_header).
  if (img.luks !== undefined) inc(st, img.luks.ref.offset, img.luks.ref.length);
  await countBitmaps(st);
  // Refcount blocks.
  for (let i = 0; i < rc.table.length; i++) {
    const off = rc.table[i]!;
    if (off === 0) continue;
    const k = off / cs;
    if (off % cs !== 0) {
      res.messages.push(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      continue;
    }
    if (k >= st.counts.length && off >= fileLen) {
      res.messages.push(`ERROR refcount block ${i} is outside image`);
      res.corruptions++;
      continue;
    }
    inc(st, off, cs);
    if (st.counts[k] !== 1) {
      res.messages.push(`ERROR refcount block ${i} refcount=${st.counts[k]}`);
      res.corruptions++;
    }
  }
}

/**
 * QEMU's rebuild_refcount_structure: refcount blocks for every range that has references,
 * placed first-fit in the counted space, then a refcount table after them, repeated until
 * the new structures cover themselves; then written and put in the header.
 */
async function rebuildRefcounts(st: State): Promise<void> {
  const { img } = st;
  const cs = img.clusterSize;
  const rc = img.refcounts!;
  const per = rc.blockEntries;
  let firstFree = 0;
  const alloc = (n: number): number => {
    for (let start = firstFree; ; start++) {
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
        table[b] = alloc(1) * cs;
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
  for (let b = 0; b < table.length; b++) {
    const off = table[b] ?? 0;
    if (off === 0) continue;
    const buf = new Uint8Array(cs);
    const end = Math.min(st.counts.length, (b + 1) * per);
    for (let i = b * per; i < end; i++) {
      const c = st.counts[i]!;
      if (c !== 0) rc.setIn(buf, i - b * per, Math.min(c, rc.maxRefcount));
    }
    await img.file.write(buf, off);
  }
  const raw = new Uint8Array(tableClusters * cs);
  const v = new DataView(raw.buffer);
  for (let i = 0; i < table.length; i++) setU64(v, i * 8, table[i] ?? 0);
  await img.file.write(raw, tableOffset);
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  setU64(hv, 0, tableOffset);
  hv.setUint32(8, tableClusters);
  await img.file.write(hdr, 48);
  img.header.refcountTableOffset = tableOffset;
  img.header.refcountTableClusters = tableClusters;
  st.fileLen = Math.max(st.fileLen, await img.file.size());
  img.fileEnd = Math.max(img.fileEnd, st.fileLen);
  await img.reloadRefcounts();
}

/** QEMU's compare_refcounts. */
async function compareRefcounts(
  st: State,
  n: number,
  fixLeaks: boolean,
  fixErrors: boolean,
): Promise<{ highest: number; rebuild: boolean }> {
  const { res, img } = st;
  const rc = img.refcounts!;
  const cs = img.clusterSize;
  let highest = -1;
  let rebuild = false;
  for (let i = 0; i < n; i++) {
    const stored = await rc.get(i);
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
      // A missing refcount block gets allocated first (update answers "again" then).
      while ((await rc.update(i * cs, 1, Math.abs(stored - refs), stored > refs)) !== undefined) {}
      if (fixed === 'leaks') res.leaksFixed++;
      else res.corruptionsFixed++;
      continue;
    }
    if (stored < refs) res.corruptions++;
    else res.leaks++;
  }
  return { highest, rebuild };
}

/** (vdisk reports wrong COPIED flags but does not repair them yet.) */
async function checkCopied(img: Qcow2Image, res: CheckResult): Promise<void> {
  const rc = img.refcounts!;
  const cs = img.clusterSize;
  const offsets: number[] = [];
  for (const l2 of img.l1Off.subarray(0, img.l1Size)) {
    if (l2 !== 0 && l2 % cs === 0 && l2 + cs <= img.fileEnd) offsets.push(l2);
  }
  const tables = new AheadReader(img, offsets);
  for (let i = 0; i < img.l1Size; i++) {
    const l2 = img.l1Off[i]!;
    if (l2 === 0 || l2 % cs !== 0) continue;
    const refcount = await rc.get(l2 / cs);
    const copied = img.l1Copied[i] === 1;
    if ((refcount === 1) !== copied) {
      const entry = (copied ? 2 ** 63 : 0) + l2;
      res.messages.push(
        `ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${BigInt(entry).toString(16)} refcount=${refcount}`,
      );
      res.corruptions++;
    }
    if (l2 + cs > img.fileEnd) continue;
    const table = await tables.next(l2);
    const v = new DataView(table.buffer);
    const perBlock = 512 / img.entryBytes;
    for (let j = 0; j < img.l2Entries; j++) {
      if (zeroBlockAt(table, j, img.entryBytes)) {
        j += perBlock - 1;
        continue;
      }
      const e = j * img.entryBytes;
      const hi = v.getUint32(e);
      const lo = v.getUint32(e + 4);
      if ((hi & COMPRESSED_HI) !== 0) continue;
      const host = (hi & 0x00ffffff) * 0x100000000 + ((lo & 0xfffffe00) >>> 0);
      if (host === 0 || host % cs !== 0 || img.hasDataFile) continue;
      const r = await rc.get(host / cs);
      const c = (hi & COPIED_HI) !== 0;
      if ((r === 1) !== c) {
        const entry = BigInt(hi >>> 0) * 0x100000000n + BigInt(lo >>> 0);
        res.messages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${entry.toString(16)} refcount=${r}`);
        res.corruptions++;
      }
    }
  }
}

/**
 * Persistent bitmaps (QEMU's qcow2_check_bitmaps_refcounts): the directory, each bitmap
 * table and the data clusters it names; a table entry that breaks the rules is a corruption.
 * The directory was checked when the image was opened (a bad one fails the open, as in QEMU).
 */
async function countBitmaps(st: State): Promise<void> {
  const img = st.img;
  const h = img.header;
  const ext = parseBitmapsExt(
    h.extensions.find((e) => e.type === EXT_BITMAPS)?.data,
    (h.autoclear & AUTOCLEAR_BITMAPS) !== 0,
    img.clusterSize,
    img.file.path,
  );
  if (ext === undefined) return;
  inc(st, ext.dirOffset, ext.dirSize);
  let list: BitmapEntry[];
  try {
    list = await loadBitmapDirectory(img.file, ext, img.clusterSize, img.size, img.file.path);
  } catch {
    st.res.corruptions++;
    return;
  }
  for (const e of list) {
    inc(st, e.tableOffset, e.tableSize * 8);
    const table = await readBitmapTable(img.file, e, img.clusterSize);
    // QEMU's bitmap_table_load refuses the whole table for one bad entry (in-use bitmaps
    // reach here: the open skipped their tables), and the check fails with its EINVAL.
    if (table.some((t) => t.bad)) {
      st.res.corruptions++;
      st.res.failure = 'Invalid argument';
      return;
    }
    for (const t of table) if (t.offset !== 0) inc(st, t.offset, img.clusterSize);
  }
}
