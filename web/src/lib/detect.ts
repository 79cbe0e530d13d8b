/**
 * The disk format of a file from its first bytes, before it is uploaded: the browser reads
 * `file.slice(0, 4096)`, five bytes at 0x8001 (ISO 9660) and the last 512 bytes (a fixed
 * VHD's footer), never the whole file. The registry inspects the upload again and has the
 * last word (415); this only fills in the form.
 */

export type DetectedFormat = 'qcow2' | 'qed' | 'vmdk' | 'vdi' | 'vhdx' | 'vhd' | 'iso' | 'raw';

export interface Detection {
  format: DetectedFormat;
  /** Why: the signature found, in words. */
  reason: string;
  /** Virtual size when the header says it (qcow2, qed, vmdk sparse, vhd); raw/iso: the file size. */
  virtualSize?: number;
  /** qcow2/qed naming a backing file: an overlay, which needs its master in the registry. */
  overlay?: { backingFile: string };
}

export interface Probe {
  /** The first 4096 bytes (fewer for a small file). */
  head: Uint8Array;
  /** Bytes 0x8001..0x8006 (empty when the file is smaller). */
  iso: Uint8Array;
  /** The last 512 bytes (or fewer). */
  tail: Uint8Array;
  /** The file's size in bytes. */
  size: number;
}

/** Byte ranges to read from a file of `size` bytes. */
export const PROBE_RANGES = (size: number) => ({
  head: [0, Math.min(size, 4096)] as const,
  iso: [Math.min(size, 0x8001), Math.min(size, 0x8006)] as const,
  tail: [Math.max(0, size - 512), size] as const,
});

const ascii = (b: Uint8Array, at: number, len: number): string => {
  let s = '';
  for (let i = at; i < at + len && i < b.length; i++) s += String.fromCharCode(b[i]!);
  return s;
};

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** A u64 as a number (exact to 2^53, far beyond any disk). */
function u64(b: Uint8Array, at: number, little: boolean): number | undefined {
  if (b.length < at + 8) return undefined;
  const v = view(b);
  const hi = v.getUint32(little ? at + 4 : at, little);
  const lo = v.getUint32(little ? at : at + 4, little);
  return hi * 2 ** 32 + lo;
}

function u32(b: Uint8Array, at: number, little: boolean): number | undefined {
  if (b.length < at + 4) return undefined;
  return view(b).getUint32(at, little);
}

/** The backing file name stored at [offset, offset+len) of the head, when it is inside it. */
function nameAt(head: Uint8Array, offset: number, len: number): string {
  if (len <= 0 || offset + len > head.length) return '(stored beyond the first 4 KiB)';
  return new TextDecoder().decode(head.subarray(offset, offset + len));
}

function qcow2(head: Uint8Array): Detection {
  const d: Detection = { format: 'qcow2', reason: 'the magic QFI\\xfb at byte 0' };
  const vs = u64(head, 24, false);
  if (vs !== undefined) d.virtualSize = vs;
  const backingOffset = u64(head, 8, false);
  if (backingOffset !== undefined && backingOffset !== 0) {
    d.overlay = { backingFile: nameAt(head, backingOffset, u32(head, 16, false) ?? 0) };
  }
  return d;
}

function qed(head: Uint8Array): Detection {
  const d: Detection = { format: 'qed', reason: 'the magic QED\\0 at byte 0' };
  const vs = u64(head, 48, true);
  if (vs !== undefined) d.virtualSize = vs;
  const features = u32(head, 16, true) ?? 0;
  if ((features & 1) !== 0) {
    d.overlay = { backingFile: nameAt(head, u32(head, 56, true) ?? 0, u32(head, 60, true) ?? 0) };
  }
  return d;
}

function vhdFooterSize(footer: Uint8Array): number | undefined {
  // Current size: bytes 48..56 of the footer, big-endian.
  return u64(footer, 48, false);
}

export function detectFormat(p: Probe): Detection {
  const { head, iso, tail, size } = p;
  const magic4 = ascii(head, 0, 4);
  if (magic4 === 'QFI\xfb') return qcow2(head);
  if (magic4 === 'QED\0') return qed(head);
  if (magic4 === 'KDMV') {
    const d: Detection = { format: 'vmdk', reason: 'the magic KDMV at byte 0: a sparse extent' };
    const sectors = u64(head, 12, true);
    if (sectors !== undefined) d.virtualSize = sectors * 512;
    return d;
  }
  if (ascii(head, 0, 21) === '# Disk DescriptorFile')
    return { format: 'vmdk', reason: 'a "# Disk DescriptorFile" text: a descriptor' };
  if (ascii(head, 0, 8) === 'vhdxfile') return { format: 'vhdx', reason: 'the signature vhdxfile at byte 0' };
  if (ascii(head, 0, 4) === '<<< ' && u32(head, 0x40, true) === 0xbeda107f) {
    const d: Detection = { format: 'vdi', reason: 'a VirtualBox header with the magic 0xbeda107f at 0x40' };
    // Header v1.1: disk size (u64 LE) at 0x170.
    const vs = u64(head, 0x170, true);
    if (vs !== undefined && vs > 0) d.virtualSize = vs;
    return d;
  }
  if (ascii(head, 0, 8) === 'conectix') {
    const d: Detection = { format: 'vhd', reason: 'the footer copy conectix at byte 0: a dynamic VHD' };
    const vs = vhdFooterSize(head);
    if (vs !== undefined) d.virtualSize = vs;
    return d;
  }
  if (tail.length === 512 && ascii(tail, 0, 8) === 'conectix') {
    const d: Detection = { format: 'vhd', reason: 'the footer conectix in the last 512 bytes: a fixed VHD' };
    const vs = vhdFooterSize(tail);
    if (vs !== undefined) d.virtualSize = vs;
    return d;
  }
  if (ascii(iso, 0, 5) === 'CD001')
    return { format: 'iso', reason: 'CD001 at byte 0x8001: an ISO 9660 file system', virtualSize: size };
  return { format: 'raw', reason: 'no image signature: raw data', virtualSize: size };
}

/** Read the probe's byte ranges of a File (or Blob): a few KiB, never the whole file. */
export async function probeBlob(blob: Blob): Promise<Detection> {
  const r = PROBE_RANGES(blob.size);
  const read = async ([a, b]: readonly [number, number]) =>
    new Uint8Array(await blob.slice(a, b).arrayBuffer());
  const [head, iso, tail] = await Promise.all([read(r.head), read(r.iso), read(r.tail)]);
  return detectFormat({ head, iso, tail, size: blob.size });
}
