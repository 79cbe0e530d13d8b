/** qemu-img's snapshot table (block/qapi.c: bdrv_snapshot_dump). */
import type { SnapshotJson } from '../commands/info.js';
import { sizeToStr } from './format.js';

const pad2 = (n: number) => String(n).padStart(2, '0');

export function snapshotHeader(): string {
  return `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}\n`;
}

export function snapshotLine(s: SnapshotJson): string {
  const d = new Date(s['date-sec'] * 1000);
  // qemu prints local time (localtime_r + strftime "%Y-%m-%d %H:%M:%S").
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const secs = s['vm-clock-sec'];
  const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(Math.floor(s['vm-clock-nsec'] / 1e6)).padStart(3, '0')}`;
  const vmSize = s['vm-state-size'] === 0 ? '0 B' : sizeToStr(s['vm-state-size']);
  const icount = s.icount === undefined ? '' : String(s.icount);
  return `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${vmSize.padStart(8)}${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}\n`;
}

export function renderSnapshotTable(snaps: SnapshotJson[]): string {
  return snapshotHeader() + snaps.map(snapshotLine).join('');
}
