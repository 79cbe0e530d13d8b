/**
 * Upload safety: the data of `PUT /file` is inspected with the engine as it arrives, and
 * refused (415, nothing kept) when it is not what `disk_format` says or when opening it
 * later could make a hypervisor read host files. The rules follow Glance's format inspector
 * (glance/common/format_inspector.py, its safety_check()s and the GPT/MBR checks), applied
 * to the upload itself as the issue asks (Glance 25 applies them on import/conversion only):
 *
 * - the content's format, by the engine's probes (src/core/formats.ts probeBytes), must be
 *   the one `disk_format` names (raw-like formats: nothing the probes recognise). A fixed
 *   VHD probes as raw (its footer is at the end): for `vhd` the last 512 bytes are checked.
 * - qed: always refused (QEMU's qed may name a backing file; nobody else uses it).
 * - qcow2: decoded by the qcow2 driver's header codec (parseHeader, every check QEMU makes
 *   on open); a backing file or an external data file is refused.
 * - vmdk: only the single-file sparse kinds (monolithicSparse, streamOptimized): a "KDMV"
 *   header whose embedded descriptor (at sector 1, at most 1 MiB, parsed by the vmdk
 *   driver's descriptor parser) has that createType and names SPARSE extents only, without
 *   a path. A descriptor file, a VMFS ("COWD") extent, or a zero-capacity header (QEMU then
 *   reads the embedded descriptor as a descriptor file with its own extents) is refused.
 * - raw: an MBR (boot signature 0x55AA, not a FAT boot sector) must have valid boot flags,
 *   and a protective GPT entry (0xEE) must be alone and be followed by a GPT header.
 *
 * Memory: the first 2 MiB (a qcow2 header cluster at most; a vmdk header + descriptor) and
 * the last 512 bytes; the verdict on the head is given as soon as it is complete, so a
 * hostile upload is refused after 2 MiB, not after the whole image.
 */

import { VdiskError } from '../../core/errors.js';
import { PROBE_BYTES, probeBytes } from '../../core/formats.js';
import { registerBuiltinFormats } from '../../formats/index.js';
import { INCOMPAT_DATA_FILE, parseHeader } from '../../formats/qcow2/header.js';
import { decodeHeader as decodeQedHeader, F_BACKING_FILE } from '../../formats/qed/header.js';
import {
  createTypeOf,
  descriptorText,
  MAX_DESCRIPTOR_BYTES,
  parseDescriptor,
} from '../../formats/vmdk/descriptor.js';
import { decodeVmdk4, SECTOR } from '../../formats/vmdk/header.js';
import { HttpError } from '../http.js';
import { diskFormatOf, engineFormatOf } from './formats.js';
import type { ImageRow } from './policy.js';

/** The master of an overlay being uploaded (its image row says `backing_image_id`). */
export interface MasterInfo {
  id: string;
  virtualSize: number | null;
}

export interface UploadInspector {
  /** Every chunk, in order; throws HttpError(415) as soon as the content is refused. */
  feed(chunk: Buffer): void;
  /** End of the data: the checks that need the whole size; the virtual size when known. */
  finish(size: number): { virtualSize: number | null };
}

/**
 * Makes the inspector of one upload (`declaredSize`: Content-Length, when sent). With `master`,
 * the upload must be an overlay (qcow2 or qed naming a backing file, whose name is ignored) of
 * at least the master's virtual size; without it, naming a backing file is refused.
 */
export type InspectorFactory = (
  img: ImageRow,
  declaredSize: number | null,
  master?: MasterInfo | null,
  opts?: InspectOptions,
) => UploadInspector;

export interface InspectOptions {
  /**
   * The content must be in the format disk_format names (default). Off (Glance's
   * require_image_format_match = false): another format is accepted, but still checked for
   * what makes it unsafe as the format it really is (backing files, extents…).
   */
  requireFormatMatch?: boolean;
}

const HEAD_BYTES = 2 << 20;
const TAIL_BYTES = 512;

/** Glance's words (image_conversion.py): 'Image format detection failed'. */
const mismatch = (detail: string) => new HttpError(415, `Image format detection failed: ${detail}`);
/** Glance's words (image_conversion.py): 'Image has disallowed configuration'. */
const unsafe = (detail: string) => new HttpError(415, `Image has disallowed configuration: ${detail}`);

const show = (s: string) => JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}…` : s);

export const inspectUpload: InspectorFactory = (img, declaredSize, master, opts) => {
  registerBuiltinFormats();
  return new Inspector(
    img.disk_format ?? 'raw',
    declaredSize,
    master ?? null,
    opts?.requireFormatMatch !== false,
  );
};

const noBacking = (what: string) => `the ${what} image names a backing file`;

class Inspector implements UploadInspector {
  private parts: Buffer[] = [];
  private headLen = 0;
  private head: Buffer | null = null;
  private tail: Buffer = Buffer.alloc(0);
  private detected = 'raw';
  /** The content is in the declared format (only false when a mismatch is allowed). */
  private matches = true;
  private virtualSize: number | null = null;

  constructor(
    private readonly diskFormat: string,
    private readonly declaredSize: number | null,
    private readonly master: MasterInfo | null,
    private readonly requireMatch: boolean,
  ) {}

  feed(chunk: Buffer): void {
    if (this.head === null) {
      const take = Math.min(chunk.length, HEAD_BYTES - this.headLen);
      this.parts.push(chunk.subarray(0, take));
      this.headLen += take;
      if (this.headLen === HEAD_BYTES) this.inspectHead(this.declaredSize);
    }
    if (this.diskFormat === 'vhd') {
      this.tail =
        chunk.length >= TAIL_BYTES
          ? Buffer.from(chunk.subarray(chunk.length - TAIL_BYTES))
          : Buffer.concat([this.tail, chunk]).subarray(-TAIL_BYTES);
    }
  }

  finish(size: number): { virtualSize: number | null } {
    if (this.head === null) this.inspectHead(size);
    else if (this.detected === 'qcow2' && this.declaredSize !== size) this.checkQcow2(size);
    if (this.diskFormat === 'vhd' && this.detected === 'raw') {
      // A fixed VHD: raw data followed by the footer ("conectix", disk size at 48).
      if (size >= TAIL_BYTES && this.tail.subarray(0, 8).toString('latin1') === 'conectix')
        this.virtualSize = safeSize(this.tail.readBigUInt64BE(48));
      else if (this.requireMatch) throw mismatch('the data is not in disk_format vhd (no VHD footer).');
      else this.matches = false;
    }
    if (this.virtualSize === null && this.detected === 'raw' && this.diskFormat === 'raw')
      this.virtualSize = size;
    // Data in another format than declared (allowed by the operator): no virtual size claimed.
    return { virtualSize: this.matches ? this.virtualSize : null };
  }

  private inspectHead(fileSize: number | null): void {
    const head = Buffer.concat(this.parts);
    this.parts = [];
    this.head = head;
    const detected = probeBytes(head.subarray(0, PROBE_BYTES), '');
    this.detected = detected;
    const expected = engineFormatOf(this.diskFormat);
    const fixedVhd = this.diskFormat === 'vhd' && detected === 'raw';
    this.matches = detected === expected || fixedVhd;
    if (!this.matches && (this.requireMatch || this.master !== null))
      throw mismatch(`the data is not in disk_format ${this.diskFormat} (it is ${diskFormatOf(detected)}).`);
    if (this.master !== null && detected !== 'qcow2' && detected !== 'qed')
      throw unsafe(
        `only qcow2 and qed images can be overlays of a master (backing_image_id); this is ${diskFormatOf(detected)}.`,
      );
    switch (detected) {
      case 'qcow2':
        this.checkQcow2(fileSize);
        break;
      case 'qed':
        this.checkQed(head, fileSize);
        break;
      case 'vmdk':
        this.checkVmdk(head, fileSize);
        break;
      case 'vdi':
        if (head.length >= 0x178) this.virtualSize = safeSize(head.readBigUInt64LE(0x170));
        break;
      case 'vpc':
        if (head.length >= 56) this.virtualSize = safeSize(head.readBigUInt64BE(48));
        break;
      case 'raw':
        if (this.diskFormat === 'raw') checkPartitionTable(head);
        break;
    }
  }

  private checkQcow2(fileSize: number | null): void {
    const head = this.head!;
    // Encrypted images are stored as they are (the registry never opens them); the header
    // codec refuses to decode them, so it reads a copy with crypt_method cleared.
    const copy = Buffer.from(head.subarray(0, Math.min(head.length, HEAD_BYTES)));
    if (copy.length >= 36) copy.writeUInt32BE(0, 32);
    let h: ReturnType<typeof parseHeader>;
    try {
      h = parseHeader(copy, fileSize ?? Number.MAX_SAFE_INTEGER, 'upload');
    } catch (e) {
      if (e instanceof VdiskError) throw mismatch(`invalid qcow2 data: ${e.message}.`);
      throw e;
    }
    if ((h.incompatible & INCOMPAT_DATA_FILE) !== 0 || h.dataFile !== undefined)
      throw unsafe(`the qcow2 image names an external data file ${show(h.dataFile ?? '')}.`);
    this.checkLayering(
      'qcow2',
      h.backingFileOffset !== 0 || h.backingFile !== undefined,
      h.backingFile ?? '',
      h.size,
    );
    this.virtualSize = h.size;
  }

  private checkQed(head: Buffer, fileSize: number | null): void {
    let h: ReturnType<typeof decodeQedHeader>;
    try {
      h = decodeQedHeader(head, fileSize ?? Number.MAX_SAFE_INTEGER);
    } catch (e) {
      if (e instanceof VdiskError) throw mismatch(`invalid qed data: ${e.message}.`);
      throw e;
    }
    const named = (h.features & F_BACKING_FILE) !== 0;
    const end = h.backingNameOffset + h.backingNameSize;
    const name =
      named && end <= head.length ? head.subarray(h.backingNameOffset, end).toString('latin1') : '';
    this.checkLayering('qed', named, name, h.imageSize);
    this.virtualSize = h.imageSize;
  }

  /**
   * A backing file is accepted only in an overlay upload (the image names its master with
   * backing_image_id; the stored name is never followed), and an overlay upload must be one,
   * at least as large as its master.
   */
  private checkLayering(fmt: string, namesBacking: boolean, name: string, size: number): void {
    const m = this.master;
    if (m === null) {
      if (namesBacking)
        throw unsafe(
          `${noBacking(fmt)} ${show(name)}; to upload an overlay, name its master with the property backing_image_id.`,
        );
      return;
    }
    if (!namesBacking)
      throw unsafe(
        `the image names master ${m.id} (backing_image_id) but the ${fmt} data is not an overlay (it names no backing file).`,
      );
    if (m.virtualSize !== null && size < m.virtualSize)
      throw unsafe(
        `the overlay's virtual size (${size}) is smaller than its master's (${m.virtualSize}, image ${m.id}).`,
      );
  }

  private checkVmdk(head: Buffer, fileSize: number | null): void {
    const magic = head.subarray(0, 4).toString('latin1');
    if (magic === 'COWD')
      throw unsafe(
        'only monolithicSparse and streamOptimized vmdk images are accepted (this is vmfsSparse).',
      );
    if (magic !== 'KDMV') {
      // A descriptor file: its extents are other files.
      let ct = 'a descriptor file';
      try {
        ct = createTypeOf(parseDescriptor(descriptorText(head.subarray(0, MAX_DESCRIPTOR_BYTES))));
      } catch {
        // unreadable: refused all the same
      }
      throw unsafe(`only monolithicSparse and streamOptimized vmdk images are accepted (this is ${ct}).`);
    }
    if (head.length < SECTOR) throw mismatch('invalid vmdk data: truncated header.');
    let desc: ReturnType<typeof parseDescriptor>;
    let capacity: number;
    try {
      const h = decodeVmdk4(head);
      if (h.version < 1 || h.version > 3)
        throw new VdiskError('UNSUPPORTED', `Unsupported VMDK version ${h.version}`);
      // QEMU reads a zero-capacity sparse header's descriptor as a descriptor file.
      if (h.capacity === 0)
        throw unsafe('a vmdk header of capacity 0 (its descriptor would name other files).');
      if (h.descOffset !== 1 || h.descSize === 0 || h.descSize * SECTOR > MAX_DESCRIPTOR_BYTES + 1)
        throw new VdiskError('INVALID_IMAGE', 'Wrong descriptor location');
      const end = SECTOR + h.descSize * SECTOR;
      if (head.length < end || (fileSize !== null && fileSize < end))
        throw new VdiskError('INVALID_IMAGE', 'truncated descriptor');
      desc = parseDescriptor(descriptorText(head.subarray(SECTOR, end)));
      capacity = h.capacity;
    } catch (e) {
      if (e instanceof VdiskError) throw mismatch(`invalid vmdk data: ${e.message}.`);
      throw e;
    }
    const ct = desc.keys.get('createType');
    if (ct !== 'monolithicSparse' && ct !== 'streamOptimized')
      throw unsafe(
        `only monolithicSparse and streamOptimized vmdk images are accepted (this is ${ct ?? 'unknown'}).`,
      );
    if (desc.extents.length === 0) throw unsafe('the vmdk descriptor names no extent.');
    const parent = desc.keys.get('parentFileNameHint');
    if (parent !== undefined && parent !== '')
      throw unsafe(`the vmdk descriptor names a parent file ${show(parent)}.`);
    for (const x of desc.extents) {
      const f = x.filename ?? '';
      if (x.type !== 'SPARSE' || f.includes('/') || f.includes('\\') || f === '..' || f === '.')
        throw unsafe(`the vmdk descriptor names a host file: ${show(x.text.trim())}.`);
    }
    if (capacity * SECTOR > Number.MAX_SAFE_INTEGER)
      throw mismatch('invalid vmdk data: capacity out of range.');
    this.virtualSize = capacity * SECTOR;
  }
}

function safeSize(v: bigint): number | null {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;
}

/**
 * A raw disk's partition table, as Glance's GPT inspector checks it: an MBR's entries must
 * have boot flag 0x00 or 0x80, and a protective entry (type 0xEE) must be the only one. We
 * also want the GPT header ("EFI PART", at LBA 1 for 512-byte or 4096-byte sectors) that a
 * protective MBR announces.
 */
export function checkPartitionTable(head: Buffer): void {
  if (head.length < 512 || head[510] !== 0x55 || head[511] !== 0xaa) return;
  if (isFatBootSector(head)) return;
  let used = 0;
  let protective = false;
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    const boot = head[e]!;
    const type = head[e + 4]!;
    if (boot !== 0x00 && boot !== 0x80) throw unsafe(`MBR partition entry ${i} has an invalid boot flag.`);
    if (type !== 0) used++;
    if (type === 0xee) protective = true;
  }
  if (protective && used !== 1) throw unsafe('the GPT protective MBR defines other partitions.');
  if (protective) {
    const sig = (at: number) =>
      head.length >= at + 8 && head.subarray(at, at + 8).toString('latin1') === 'EFI PART';
    if (!sig(512) && !sig(4096)) throw unsafe('the GPT protective MBR is not followed by a GPT header.');
  }
}

/** A FAT boot sector also ends in 0x55AA; its BIOS parameter block tells it apart. */
function isFatBootSector(b: Buffer): boolean {
  const jump = b[0] === 0xeb || b[0] === 0xe9;
  const bytesPerSector = b.readUInt16LE(11);
  const fats = b[16]!;
  const media = b[21]!;
  return (
    jump &&
    [512, 1024, 2048, 4096].includes(bytesPerSector) &&
    (fats === 1 || fats === 2) &&
    (media === 0xf0 || media >= 0xf8)
  );
}
