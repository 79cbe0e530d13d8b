/**
 * Builders for the read-only formats qemu-img cannot create (dmg, cloop, bochs), written by
 * the formats' descriptions: the format tests and `npm run fuzz` make their images with them.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { CLOOP_MAGIC } from '../formats/cloop/probe.js';
import { UDBZ, UDIG, UDRW, UDZE, UDZO } from '../formats/dmg/udif.js';

const UDCM = 0x7ffffffe;
const UDLE = 0xffffffff;
const ULFO = 0x80000007;

export type Kind = 'zero' | 'raw' | 'ignore' | 'zlib' | 'bzip2' | 'comment' | 'lzfse';

export interface ChunkSpec {
  kind: Kind;
  sectors: number;
  /** Content for data chunks (sectors * 512 bytes); zeros otherwise. */
  data?: Buffer;
}

export function bzip2(data: Buffer): Buffer {
  const r = spawnSync('bzip2', ['-c', '-9'], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`bzip2 failed: ${r.stderr}`);
  return r.stdout;
}

const typeOf: Record<Kind, number> = {
  zero: UDZE,
  raw: UDRW,
  ignore: UDIG,
  zlib: UDZO,
  bzip2: UDBZ,
  comment: UDCM,
  lzfse: ULFO,
};

export interface Built {
  file: Buffer;
  /** The disk as the chunks describe it. */
  disk: Buffer;
}

export interface BuildOptions {
  /** Partitions (one mish block each), in disk order. */
  parts: ChunkSpec[][];
  /** Bytes before the data fork. */
  lead?: number;
  /** Put the mish blocks in a binary resource fork rather than the XML list. */
  resourceFork?: boolean;
  /** Extra bytes after the trailer (koly then is not at a sector boundary from the end). */
  tail?: number;
  /** Change the trailer, the XML or a mish block before writing. */
  patchKoly?: (koly: Buffer) => void;
  xml?: (xml: string) => string;
  patchMish?: (mish: Buffer, part: number) => void;
}

/** A UDIF image: [lead][data fork][resource fork or XML][koly], chunks stored as their kinds say. */
export function buildDmg(o: BuildOptions): Built {
  const lead = o.lead ?? 0;
  const fork: Buffer[] = [];
  let forkLen = 0;
  const mishes: Buffer[] = [];
  const disk: Buffer[] = [];
  let sector = 0;
  o.parts.forEach((chunks, p) => {
    const partStart = sector;
    // Each partition's chunks are relative to its first sector and to its data offset.
    const dataOffset = forkLen;
    const entries: Buffer[] = [];
    let rel = 0;
    for (const c of chunks) {
      const content = c.data ?? Buffer.alloc(c.sectors * 512);
      let stored: Buffer = Buffer.alloc(0);
      if (c.kind === 'raw') stored = content;
      else if (c.kind === 'zlib') stored = deflateSync(content);
      else if (c.kind === 'bzip2') stored = bzip2(content);
      else if (c.kind === 'lzfse') stored = randomBytes(100);
      const e = Buffer.alloc(40);
      e.writeUInt32BE(typeOf[c.kind], 0);
      e.writeBigUInt64BE(BigInt(rel), 8);
      e.writeBigUInt64BE(BigInt(c.kind === 'comment' ? 0 : c.sectors), 0x10);
      e.writeBigUInt64BE(BigInt(forkLen - dataOffset), 0x18);
      e.writeBigUInt64BE(BigInt(stored.length), 0x20);
      entries.push(e);
      fork.push(stored);
      forkLen += stored.length;
      if (c.kind !== 'comment') {
        disk.push(c.kind === 'zero' || c.kind === 'ignore' ? Buffer.alloc(c.sectors * 512) : content);
        rel += c.sectors;
      }
    }
    const end = Buffer.alloc(40);
    end.writeUInt32BE(UDLE, 0);
    end.writeBigUInt64BE(BigInt(rel), 8);
    entries.push(end);
    const mish = Buffer.alloc(204 + 40 * entries.length);
    mish.write('mish', 0, 'latin1');
    mish.writeUInt32BE(1, 4);
    mish.writeBigUInt64BE(BigInt(partStart), 8);
    mish.writeBigUInt64BE(BigInt(rel), 0x10);
    mish.writeBigUInt64BE(BigInt(dataOffset), 0x18);
    mish.writeUInt32BE(entries.length, 0xc8);
    Buffer.concat(entries).copy(mish, 204);
    o.patchMish?.(mish, p);
    mishes.push(mish);
    sector += rel;
  });
  const data = Buffer.concat(fork);
  const metaOffset = lead + data.length;
  let meta: Buffer;
  if (o.resourceFork) {
    // Resource data: a header whose first word is the data offset and third the data length,
    // then (length, mish) records, as QEMU walks them.
    const records = Buffer.concat(
      mishes.map((m) => {
        const len = Buffer.alloc(4);
        len.writeUInt32BE(m.length, 0);
        return Buffer.concat([len, m]);
      }),
    );
    const head = Buffer.alloc(256);
    head.writeUInt32BE(256, 0);
    head.writeUInt32BE(256 + records.length, 4);
    head.writeUInt32BE(records.length, 8);
    meta = Buffer.concat([head, records]);
  } else {
    const items = mishes
      .map(
        (m, i) =>
          `\t\t\t<dict>\n\t\t\t\t<key>Attributes</key>\n\t\t\t\t<string>0x0050</string>\n\t\t\t\t<key>CFName</key>\n\t\t\t\t<string>part &amp; ${i} (Apple_HFS : ${i + 1})</string>\n\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n\t\t\t\t${m
            .toString('base64')
            .replace(
              /(.{52})/g,
              '$1\n\t\t\t\t',
            )}\n\t\t\t\t</data>\n\t\t\t\t<key>ID</key>\n\t\t\t\t<string>${i - 1}</string>\n\t\t\t\t<key>Name</key>\n\t\t\t\t<string>part ${i}</string>\n\t\t\t</dict>\n`,
      )
      .join('');
    let xml =
      '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n' +
      '<plist version="1.0">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n' +
      items +
      '\t\t</array>\n\t\t<key>plst</key>\n\t\t<array>\n\t\t\t<dict>\n\t\t\t\t<key>Data</key>\n\t\t\t\t<data>\n\t\t\t\tAAAA\n\t\t\t\t</data>\n\t\t\t</dict>\n\t\t</array>\n\t</dict>\n</dict>\n</plist>\n';
    if (o.xml) xml = o.xml(xml);
    meta = Buffer.from(xml, 'utf8');
  }
  const koly = Buffer.alloc(512);
  koly.write('koly', 0, 'latin1');
  koly.writeUInt32BE(4, 4);
  koly.writeUInt32BE(512, 8);
  koly.writeUInt32BE(1, 12);
  koly.writeBigUInt64BE(BigInt(lead), 0x18);
  koly.writeBigUInt64BE(BigInt(data.length), 0x20);
  if (o.resourceFork) {
    koly.writeBigUInt64BE(BigInt(metaOffset), 0x28);
    koly.writeBigUInt64BE(BigInt(meta.length), 0x30);
  } else {
    koly.writeBigUInt64BE(BigInt(metaOffset), 0xd8);
    koly.writeBigUInt64BE(BigInt(meta.length), 0xe0);
  }
  koly.writeUInt32BE(1, 0x1e8);
  koly.writeBigUInt64BE(BigInt(sector), 0x1ec);
  o.patchKoly?.(koly);
  const file = Buffer.concat([randomBytes(lead), data, meta, koly, Buffer.alloc(o.tail ?? 0, 0x5a)]);
  return { file, disk: Buffer.concat(disk) };
}

export function makeCloop(blockSize: number, blocks: Buffer[]): Buffer {
  const head = Buffer.alloc(136);
  head.write(CLOOP_MAGIC, 0, 'latin1');
  head.writeUInt32BE(blockSize, 128);
  head.writeUInt32BE(blocks.length, 132);
  const compressed = blocks.map((b) => deflateSync(b));
  const table = Buffer.alloc((blocks.length + 1) * 8);
  let off = 136 + table.length;
  for (let i = 0; i <= blocks.length; i++) {
    table.writeBigUInt64BE(BigInt(off), i * 8);
    off += compressed[i]?.length ?? 0;
  }
  return Buffer.concat([head, table, ...compressed]);
}

/** A growing redolog of `size` bytes, extents of `extent` bytes, some sectors present. */
export function makeBochs(
  size: number,
  extent: number,
  version: 1 | 2,
  fill: (n: number) => Buffer = randomBytes,
): Buffer {
  const catalogSize = Math.ceil(size / extent);
  const bitmapBytes = Math.ceil(extent / 512 / 8);
  const bitmapBlocks = Math.ceil(bitmapBytes / 512);
  const extentBlocks = extent / 512;
  const header = Buffer.alloc(512);
  header.write('Bochs Virtual HD Image', 0, 'latin1');
  header.write('Redolog', 32, 'latin1');
  header.write('Growing', 48, 'latin1');
  header.writeUInt32LE(version === 2 ? 0x00020000 : 0x00010000, 64);
  header.writeUInt32LE(512, 68);
  header.writeUInt32LE(catalogSize, 72);
  header.writeUInt32LE(bitmapBytes, 76);
  header.writeUInt32LE(extent, 80);
  header.writeBigUInt64LE(BigInt(size), version === 2 ? 88 : 84);
  const catalog = Buffer.alloc(catalogSize * 4, 0xff);
  const blocks: Buffer[] = [];
  // Extents 1 and 3 stored (in reverse order in the file), with every third sector present.
  for (const [slot, ext] of [
    [0, 3],
    [1, 1],
  ] as const) {
    if (ext >= catalogSize) continue;
    catalog.writeUInt32LE(slot, ext * 4);
    const bitmap = Buffer.alloc(bitmapBlocks * 512);
    for (let s = 0; s < extentBlocks; s += 3) bitmap[s >> 3]! |= 1 << (s & 7);
    blocks.push(bitmap, fill(extent));
  }
  return Buffer.concat([header, catalog, ...blocks]);
}
