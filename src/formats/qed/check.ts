/**
 * QED consistency check (the invariants of docs/interop/qed_spec.rst, counted as QEMU's
 * qed-check.c counts them): every table and data cluster is referenced once, lies within the
 * file and is cluster-aligned; clusters of the file that nothing references are leaks.
 * Repair clears entries that point outside the file (QEMU fixes only those: a cluster
 * referenced twice stays a corruption, and leaks cannot be given back without moving data).
 */
import type { CheckResult } from '../../core/driver.js';
import type { HostFile } from '../../core/host-file.js';
import type { QedHeader } from './header.js';
import { type Table, Table as TableClass, ZERO_CLUSTER } from './table.js';

export async function checkQed(
  file: HostFile,
  header: QedHeader,
  l1: Table,
  fileEnd: number,
  fix: boolean,
): Promise<CheckResult> {
  const cs = header.clusterSize;
  const fileSize = await file.size();
  const nClusters = Math.ceil(fileSize / cs);
  // One bit per cluster of the file: bounded by the file's size (2 MiB for 1 TiB at 64 KiB).
  const used = new Uint8Array(Math.ceil(nClusters / 8));
  const tableBytes = header.tableSize * cs;
  const r: CheckResult = {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocatedClusters: 0,
    totalClusters: Math.ceil(header.imageSize / cs),
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
  };

  /** Mark n clusters from `offset` used; false when any was already used. */
  const markUsed = (offset: number, n: number): boolean => {
    const first = offset / cs;
    let ok = true;
    for (let c = first; c < first + n; c++) {
      const bit = 1 << (c & 7);
      if (used[c >> 3]! & bit) ok = false;
      used[c >> 3]! |= bit;
    }
    return ok;
  };
  const clusterOk = (off: number) => off % cs === 0 && off >= header.headerSize * cs && off < fileSize;
  const tableOk = (off: number) => clusterOk(off) && off + tableBytes <= fileSize;

  for (let c = 0; c < header.headerSize; c++) markUsed(c * cs, 1);
  markUsed(header.l1Offset, header.tableSize);

  let l1Dirty = false;
  let lastData = 0;
  for (let i = 0; i < l1.length; i++) {
    const l2Offset = l1.get(i);
    if (l2Offset === 0) continue;
    if (!tableOk(l2Offset)) {
      r.corruptions++;
      if (fix) {
        l1.set(i, 0);
        l1Dirty = true;
        r.corruptionsFixed++;
      }
      continue;
    }
    if (!markUsed(l2Offset, header.tableSize)) {
      r.corruptions++;
      continue;
    }
    let l2: Table;
    try {
      l2 = await TableClass.read(file, l2Offset, tableBytes);
    } catch {
      r.checkErrors++;
      continue;
    }
    let l2Dirty = false;
    for (let j = 0; j < l2.length; j++) {
      const e = l2.get(j);
      if (e === 0 || e === ZERO_CLUSTER) continue;
      r.allocatedClusters!++;
      if (lastData !== 0 && e !== lastData + cs) r.fragmentedClusters!++;
      lastData = e;
      if (!clusterOk(e)) {
        r.corruptions++;
        if (fix) {
          l2.set(j, 0);
          l2Dirty = true;
          r.corruptionsFixed++;
        }
        continue;
      }
      if (!markUsed(e, 1)) r.corruptions++;
    }
    if (l2Dirty) await file.write(l2.bytes, l2Offset);
  }
  if (l1Dirty) await file.write(l1.bytes, header.l1Offset);
  for (let c = header.headerSize; c < nClusters && c * cs < Math.max(fileEnd, fileSize); c++) {
    if (!(used[c >> 3]! & (1 << (c & 7)))) r.leaks++;
  }
  return r;
}
