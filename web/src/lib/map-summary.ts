/**
 * The allocation map in words, for the accessible text beside the picture:
 * "64 MiB virtual disk: 12 % stored here (7.7 MiB), 40 % from master debian (25.6 MiB), …".
 */
import { formatBytes, formatPercent } from './sizes.js';
import type { AllocationMap, MapKind } from './types.js';

export const KIND_LABEL: Record<MapKind | 'unallocated', string> = {
  data: 'stored here',
  compressed: 'stored here, compressed',
  zero: 'declared zero here',
  master: 'read from the master',
  unallocated: 'unallocated (reads as zeros)',
};

const nameOf = (c: { id: string; name: string | null }) => (c.name !== null && c.name !== '' ? c.name : c.id);

/** How the master part is named: one master by name, or the chain below the image. */
export function mastersPhrase(map: Pick<AllocationMap, 'chain'>): string {
  const masters = map.chain.slice(1);
  if (masters.length === 0) return 'from a master';
  if (masters.length === 1) return `from master ${nameOf(masters[0]!)}`;
  const names = masters.map(nameOf);
  return `from masters ${names.slice(0, -1).join(', ')} and ${names.at(-1)}`;
}

export interface MapPart {
  kind: MapKind | 'unallocated';
  bytes: number;
  fraction: number;
  label: string;
}

/** The parts of the disk by kind, in the API's order then unallocated; empty kinds left out. */
export function mapParts(map: Pick<AllocationMap, 'virtual_size' | 'totals' | 'chain' | 'kinds'>): MapPart[] {
  const size = map.virtual_size;
  const parts: MapPart[] = [];
  let used = 0;
  for (const k of map.kinds) {
    const bytes = map.totals[k] ?? 0;
    used += bytes;
    if (bytes === 0) continue;
    parts.push({
      kind: k,
      bytes,
      fraction: size > 0 ? bytes / size : 0,
      label: k === 'master' ? mastersPhrase(map) : KIND_LABEL[k],
    });
  }
  const rest = Math.max(0, size - used);
  if (rest > 0 || parts.length === 0)
    parts.push({
      kind: 'unallocated',
      bytes: rest,
      fraction: size > 0 ? rest / size : 1,
      label: KIND_LABEL.unallocated,
    });
  return parts;
}

/** One sentence: the virtual size, then each part as "P % label (size)". */
export function summarizeMap(
  map: Pick<AllocationMap, 'virtual_size' | 'totals' | 'chain' | 'kinds'>,
): string {
  const parts = mapParts(map).map((p) => `${formatPercent(p.fraction)} ${p.label} (${formatBytes(p.bytes)})`);
  return `${formatBytes(map.virtual_size)} virtual disk: ${parts.join(', ')}.`;
}

/** Where the data of a region lies, for a bucket's tooltip: "12 % stored here, 88 % unallocated". */
export function describeBucket(
  fractions: readonly number[],
  kinds: readonly MapKind[],
  map: Pick<AllocationMap, 'chain'>,
): string {
  const out: string[] = [];
  let used = 0;
  kinds.forEach((k, i) => {
    const f = fractions[i] ?? 0;
    used += f;
    if (f > 0) out.push(`${formatPercent(f)} ${k === 'master' ? mastersPhrase(map) : KIND_LABEL[k]}`);
  });
  const rest = Math.max(0, 1 - used);
  if (rest > 0.0005 || out.length === 0) out.push(`${formatPercent(rest)} unallocated`);
  return out.join(', ');
}
