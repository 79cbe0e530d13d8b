/** Opening a VMDK: a monolithic sparse file, or a descriptor file and the extents it names. */
import type { DriverOpenOptions } from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import type { HostFile } from '../../core/host-file.js';
import {
  cidOf,
  createTypeOf,
  type Descriptor,
  descriptorText,
  MAX_DESCRIPTOR_BYTES,
  parseDescriptor,
} from './descriptor.js';
import type { VmdkExtent } from './extent.js';
import { FlatExtent } from './flat.js';
import { decodeCowd, decodeFooter, decodeVmdk4, SECTOR, type SparseHeader } from './header.js';
import { VmdkImage } from './image.js';
import { SeSparseExtent } from './sesparse.js';
import { SparseExtent } from './sparse.js';

/** createType values QEMU accepts in a descriptor file (vmdk_open_desc_file). */
const DESCRIPTOR_TYPES = [
  'monolithicFlat',
  'vmfs',
  'vmfsSparse',
  'seSparse',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
];

/** Where QEMU reads an embedded descriptor's CID (s->desc_offset = 0x200, DESC_SIZE 20 sectors). */
const EMBEDDED_DESC_OFFSET = 0x200;
const EMBEDDED_DESC_SIZE = 20 * SECTOR;

function magicOf(head: Uint8Array): string {
  return String.fromCharCode(head[0] ?? 0, head[1] ?? 0, head[2] ?? 0, head[3] ?? 0);
}

export async function openVmdk(file: HostFile, opts: DriverOpenOptions): Promise<VmdkImage> {
  const fileSize = await file.size();
  // (A file of fewer than 4 bytes is read as a descriptor, as QEMU 7.2 does.)
  const head = new Uint8Array(4);
  await file.read(head, 0);
  const magic = magicOf(head);
  if (magic === 'KDMV' || magic === 'COWD') return openMonolithic(file, fileSize, opts);
  return openDescriptorFile(file, fileSize, opts);
}

async function openMonolithic(file: HostFile, fileSize: number, opts: DriverOpenOptions): Promise<VmdkImage> {
  const { extent, header } = await openSparse(file, fileSize, 0, opts.writable, '', file.path);
  // The embedded descriptor: where the header says (QEMU always looks at sector 1).
  const offset = header.descOffset > 0 ? header.descOffset * SECTOR : EMBEDDED_DESC_OFFSET;
  const room = Math.min(
    header.descSize > 0 ? header.descSize * SECTOR : EMBEDDED_DESC_SIZE,
    MAX_DESCRIPTOR_BYTES,
  );
  const raw = new Uint8Array(Math.max(0, Math.min(room, fileSize - offset)));
  await file.read(raw, offset);
  const text = descriptorText(raw);
  const d = parseDescriptor(text);
  return new VmdkImage({
    files: [file],
    extents: [extent],
    descriptor: { file, offset, room, text },
    cid: cidOf(d, 'CID', file.path),
    parentCid: cidOf(d, 'parentCID', file.path),
    createType: extent.compressed ? 'streamOptimized' : 'monolithicSparse',
    parentHint: d.keys.get('parentFileNameHint'),
    readOnly: !opts.writable,
  });
}

async function openDescriptorFile(
  file: HostFile,
  fileSize: number,
  opts: DriverOpenOptions,
): Promise<VmdkImage> {
  const raw = new Uint8Array(Math.min(fileSize, MAX_DESCRIPTOR_BYTES));
  await file.read(raw, 0);
  const text = descriptorText(raw);
  const ct = checkDescriptorType(text);
  if (fileSize > MAX_DESCRIPTOR_BYTES) {
    throw new VdiskError('INVALID_IMAGE', `VMDK descriptor file too big (${fileSize} bytes)`);
  }
  const d = parseDescriptor(text);
  createTypeOf(d);
  const cid = cidOf(d, 'CID', file.path);
  const parentCid = cidOf(d, 'parentCID', file.path);
  const files: HostFile[] = [file];
  const extents: VmdkExtent[] = [];
  try {
    await openExtents(d, file, opts, files, extents);
  } catch (err) {
    for (const f of files.slice(1)) await f.close().catch(() => {});
    throw err;
  }
  return new VmdkImage({
    files,
    extents,
    descriptor: { file, offset: 0, room: undefined, text },
    cid,
    parentCid,
    createType: ct,
    parentHint: d.keys.get('parentFileNameHint'),
    readOnly: !opts.writable,
  });
}

/** QEMU's checks of a descriptor file's createType, first and in its words. */
function checkDescriptorType(text: string): string {
  const ct = /createType[ \t]*=[ \t]*"([^"\n]*)"/.exec(text)?.[1];
  if (ct === undefined) throw new VdiskError('INVALID_IMAGE', 'invalid VMDK image descriptor');
  if (!DESCRIPTOR_TYPES.includes(ct)) throw new VdiskError('UNSUPPORTED', `Unsupported image type '${ct}'`);
  return ct;
}

/** QEMU's extent filename as info shows it: the descriptor's directory (as given) + the name. */
function infoName(descPath: string, name: string): string {
  if (name.startsWith('/')) return name;
  const slash = descPath.lastIndexOf('/');
  return slash < 0 ? name : descPath.slice(0, slash + 1) + name;
}

async function openExtents(
  d: Descriptor,
  descFile: HostFile,
  opts: DriverOpenOptions,
  files: HostFile[],
  extents: VmdkExtent[],
): Promise<void> {
  const byName = new Map<string, HostFile>();
  let start = 0;
  for (const line of d.extents) {
    // QEMU uses only RW extents and skips the others (vmdk_parse_extents).
    if (line.access !== 'RW') continue;
    const invalid = () => new VdiskError('INVALID_IMAGE', `Invalid extent line: ${line.text}`);
    const t = line.type;
    if (t === 'FLAT') {
      if (line.offset === undefined) throw invalid();
    } else if (t === 'VMFS' || t === 'SPARSE' || t === 'VMFSSPARSE' || t === 'SESPARSE') {
      if (line.offset !== undefined) throw invalid();
    } else {
      // QEMU silently skips extent types it does not know (ZERO, VMFSRDM, ...), which shifts
      // every later extent; vdisk refuses them instead.
      throw new VdiskError('UNSUPPORTED', `Unsupported extent type '${t}'`);
    }
    if (line.filename === undefined || line.filename === '' || line.sectors <= 0) throw invalid();
    if (opts.openExtentFile === undefined) {
      throw new VdiskError(
        'NOT_ALLOWED',
        `'${descFile.path}' names the extent file '${line.filename}', which was not allowed to be opened`,
      );
    }
    let f = byName.get(line.filename);
    if (f === undefined) {
      f = await opts.openExtentFile(line.filename, opts.writable);
      files.push(f);
      byName.set(line.filename, f);
    }
    const name = infoName(descFile.path, line.filename);
    let extent: VmdkExtent;
    if (t === 'FLAT' || t === 'VMFS') {
      extent = new FlatExtent(f, start, line.sectors * SECTOR, (line.offset ?? 0) * SECTOR, t, name);
    } else if (t === 'SESPARSE') {
      extent = await SeSparseExtent.open(f, await f.size(), start, opts.writable, name);
    } else {
      const size = await f.size();
      if (size < 4) throw new VdiskError('INVALID_IMAGE', 'File is too small, not a valid image');
      extent = (await openSparse(f, size, start, opts.writable, t, name)).extent;
    }
    if (start + extent.size > Number.MAX_SAFE_INTEGER)
      throw new VdiskError('TOO_LARGE', 'VMDK image too large');
    extents.push(extent);
    start += extent.size;
  }
}

/** Open a sparse extent file (its size from its own header, as QEMU does). */
async function openSparse(
  file: HostFile,
  fileSize: number,
  start: number,
  writable: boolean,
  type: string,
  infoFilename: string,
): Promise<{ extent: SparseExtent; header: SparseHeader }> {
  const raw = new Uint8Array(SECTOR);
  await file.read(raw, 0);
  const magic = magicOf(raw);
  let header: SparseHeader;
  if (magic === 'KDMV') header = decodeVmdk4(raw);
  else if (magic === 'COWD') header = decodeCowd(raw);
  else throw new VdiskError('INVALID_IMAGE', 'Image not in VMDK format');
  if (header.kind === 'vmdk4' && header.capacity === 0 && header.descOffset > 0) {
    // QEMU reads such a file's embedded descriptor as a descriptor file (so an empty
    // monolithicSparse, which it creates, is refused for its createType). vdisk applies the
    // same createType rule and otherwise refuses the nesting.
    const raw = new Uint8Array(
      Math.max(0, Math.min(MAX_DESCRIPTOR_BYTES, fileSize - header.descOffset * SECTOR)),
    );
    await file.read(raw, header.descOffset * SECTOR);
    checkDescriptorType(descriptorText(raw));
    throw new VdiskError('UNSUPPORTED', 'VMDK sparse file whose embedded descriptor names other extents');
  }
  let gdAtEnd = false;
  if (header.gdOffset < 0) {
    // A stream: the footer (1536 bytes before the end) holds the real header.
    const end = Math.ceil(fileSize / SECTOR) * SECTOR;
    if (end < 1536 + SECTOR) throw new VdiskError('INVALID_IMAGE', 'Invalid footer');
    const foot = new Uint8Array(3 * SECTOR);
    await file.read(foot, end - 1536);
    header = decodeFooter(foot);
    gdAtEnd = true;
    if (writable) {
      throw new VdiskError(
        'UNSUPPORTED',
        'A streamOptimized image with its grain directory at the end can only be opened read-only',
      );
    }
  }
  const gdEntries = SparseExtent.validate(header, fileSize, writable);
  const readDir = async (sector: number) => {
    const bytes = new Uint8Array(gdEntries * 4);
    await file.read(bytes, sector * SECTOR);
    const v = new DataView(bytes.buffer);
    const out = new Uint32Array(gdEntries);
    for (let i = 0; i < gdEntries; i++) out[i] = v.getUint32(i * 4, true);
    return out;
  };
  const gd = await readDir(header.gdOffset);
  const rgd = header.rgdOffset > 0 ? await readDir(header.rgdOffset) : null;
  const extent = new SparseExtent({
    file,
    start,
    header,
    gdOffset: header.gdOffset,
    gd,
    rgd,
    fileSize,
    type,
    infoFilename,
    gdAtEnd,
  });
  return { extent, header };
}
