/** Human sizes and dates, as people read them (binary units, as qemu-img and `openstack --human-readable`). */

const UNITS = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** 1536 → "1.5 KiB"; 0 → "0 bytes"; null/undefined → "—". Three significant digits. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  if (n < 1024) return n === 1 ? '1 byte' : `${n} bytes`;
  let u = 0;
  let v = n;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  // Trim trailing zeros: 2.00 GiB → 2 GiB, 1.50 → 1.5.
  const text = v.toFixed(digits).replace(/\.0+$|(\.\d*[1-9])0+$/, '$1');
  return `${text} ${UNITS[u]}`;
}

/** Exact byte count with thousands separators, for titles and details. */
const GROUPED = new Intl.NumberFormat('en-US');

export function formatExactBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  return `${GROUPED.format(n)} bytes`;
}

/** A percentage for texts: 0.4 → "40 %", 0.004 → "0.4 %", tiny non-zero → "< 0.1 %". */
export function formatPercent(fraction: number): string {
  const p = fraction * 100;
  if (p === 0) return '0 %';
  if (p < 0.1) return '< 0.1 %';
  if (p < 10) return `${(Math.round(p * 10) / 10).toString()} %`;
  return `${Math.round(p)} %`;
}

/** An ISO time as "2026-12-05 14:03" in the browser's time zone; invalid → the text itself. */
export function formatDate(iso: string | null | undefined): string {
  if (iso === null || iso === undefined || iso === '') return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (x: number) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** Bytes per second as a rate. */
export const formatRate = (bytesPerSecond: number): string => `${formatBytes(Math.round(bytesPerSecond))}/s`;

/** Seconds as "1 min 05 s" / "12 s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}
