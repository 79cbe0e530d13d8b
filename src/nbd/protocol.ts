/**
 * The NBD protocol's numbers and wire encodings (NetworkBlockDevice/nbd doc/proto.md): the
 * fixed newstyle handshake, option replies, requests, simple and structured replies. Every
 * integer is big-endian. Nothing here does I/O.
 */

/** 'NBDMAGIC', the first eight bytes the server sends. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': the newstyle handshake's magic, and the magic of every option request. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply. */
export const REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags. */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags. */
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_ROTATIONAL = 1 << 4;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_CACHE = 1 << 10;
export const FLAG_SEND_FAST_ZERO = 1 << 11;

/** Options. */
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set. */
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_SHUTDOWN = 0x80000007;
export const REP_ERR_TOO_BIG = 0x80000009;

/** NBD_REP_INFO types. */
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

/** Commands. */
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

/** Command flags. */
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

/** Structured reply flags and chunk types. */
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = 0x8001;

/** base:allocation flags. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
/** qemu:dirty-bitmap:NAME: the range is dirty. */
export const STATE_DIRTY = 1 << 0;

/** Error values. */
export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

/**
 * The largest payload of a request or reply: 32 MiB, as qemu-nbd (NBD_MAX_BUFFER_SIZE), and
 * what the specification says no one may call a denial of service.
 */
export const MAX_PAYLOAD = 32 << 20;
/** The longest string (export name, description, context name, message) the spec allows. */
export const MAX_STRING = 4096;

export const REQUEST_SIZE = 28;
export const OPTION_HEADER_SIZE = 16;

/** The server's first message: NBDMAGIC, IHAVEOPT, handshake flags. */
export function greeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

/** An option reply: magic, option, type, length, data. */
export function optionReply(option: number, type: number, data?: Uint8Array): Buffer {
  const n = data?.length ?? 0;
  const b = Buffer.allocUnsafe(20 + n);
  b.writeBigUInt64BE(REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(n, 16);
  if (data !== undefined) b.set(data, 20);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoString(type: number, text: Buffer): Buffer {
  const b = Buffer.allocUnsafe(2 + text.length);
  b.writeUInt16BE(type, 0);
  text.copy(b, 2);
  return b;
}

export function infoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_REP_SERVER's data: name length, name, description. */
export function serverEntry(name: Buffer, description: Buffer): Buffer {
  const b = Buffer.allocUnsafe(4 + name.length + description.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  description.copy(b, 4 + name.length);
  return b;
}

export function metaContextEntry(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

export interface Request {
  flags: number;
  type: number;
  /** The client's cookie (handle), echoed as is: kept as its eight bytes. */
  cookie: Buffer;
  /** Offsets past 2^53 cannot be exact in a number: `offsetBig` is the exact value. */
  offset: number;
  offsetBig: bigint;
  length: number;
}

/** Decode a 28-byte request header; null when the magic is wrong. */
export function parseRequest(b: Buffer): Request | null {
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) return null;
  const offsetBig = b.readBigUInt64BE(16);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: offsetBig > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offsetBig),
    offsetBig,
    length: b.readUInt32BE(24),
  };
}

export function simpleReply(error: number, cookie: Buffer): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

/** A structured reply chunk's 20-byte header (the payload follows it). */
export function chunkHeader(flags: number, type: number, cookie: Buffer, length: number): Buffer {
  const b = Buffer.allocUnsafe(20);
  writeChunkHeader(b, 0, flags, type, cookie, length);
  return b;
}

function writeChunkHeader(
  b: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: Buffer,
  length: number,
): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  cookie.copy(b, at + 8);
  b.writeUInt32BE(length, at + 16);
}

/** The header of an OFFSET_DATA chunk and the offset that starts its payload (28 bytes). */
export function dataChunkHeader(cookie: Buffer, offset: number, dataLength: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(28);
  writeChunkHeader(b, 0, done ? REPLY_FLAG_DONE : 0, REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength);
  b.writeBigUInt64BE(BigInt(offset), 20);
  return b;
}

/** An OFFSET_HOLE chunk (32 bytes). */
export function holeChunk(cookie: Buffer, offset: number, length: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(32);
  writeChunkHeader(b, 0, done ? REPLY_FLAG_DONE : 0, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
  b.writeBigUInt64BE(BigInt(offset), 20);
  b.writeUInt32BE(length, 28);
  return b;
}

/** A final NBD_REPLY_TYPE_NONE chunk. */
export function doneChunk(cookie: Buffer): Buffer {
  return chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/** A final NBD_REPLY_TYPE_ERROR chunk with a message for humans. */
export function errorChunk(cookie: Buffer, error: number, message: string): Buffer {
  const msg = truncateUtf8(message, MAX_STRING);
  const b = Buffer.allocUnsafe(20 + 6 + msg.length);
  writeChunkHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + msg.length);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  return b;
}

/** A BLOCK_STATUS chunk: context id, then (length, flags) pairs. */
export function blockStatusChunk(
  cookie: Buffer,
  contextId: number,
  extents: readonly { length: number; flags: number }[],
  done: boolean,
): Buffer {
  const payload = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(20 + payload);
  writeChunkHeader(b, 0, done ? REPLY_FLAG_DONE : 0, REPLY_TYPE_BLOCK_STATUS, cookie, payload);
  b.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length, at);
    b.writeUInt32BE(e.flags >>> 0, at + 4);
    at += 8;
  }
  return b;
}

/** At most `max` bytes of `text` in UTF-8, cut on a character boundary. */
export function truncateUtf8(text: string, max: number): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= max) return b;
  let n = max;
  // Back up over continuation bytes (10xxxxxx) so the cut does not split a character.
  while (n > 0 && (b[n]! & 0xc0) === 0x80) n--;
  return b.subarray(0, n);
}

/** Option names as qemu-nbd 7.2 words them in its messages (nbd_opt_lookup). */
const optionNames: Record<number, string> = {
  [OPT_EXPORT_NAME]: 'export name',
  [OPT_ABORT]: 'abort',
  [OPT_LIST]: 'list',
  4: 'peek export',
  [OPT_STARTTLS]: 'starttls',
  [OPT_INFO]: 'info',
  [OPT_GO]: 'go',
  [OPT_STRUCTURED_REPLY]: 'structured reply',
  [OPT_LIST_META_CONTEXT]: 'list meta context',
  [OPT_SET_META_CONTEXT]: 'set meta context',
};

export function optionName(option: number): string {
  return optionNames[option] ?? '<unknown>';
}

/** Command names as qemu-nbd words them (nbd_cmd_lookup). */
const commandNames: Record<number, string> = {
  [CMD_READ]: 'read',
  [CMD_WRITE]: 'write',
  [CMD_DISC]: 'disconnect',
  [CMD_FLUSH]: 'flush',
  [CMD_TRIM]: 'trim',
  [CMD_CACHE]: 'cache',
  [CMD_WRITE_ZEROES]: 'write zeroes',
  [CMD_BLOCK_STATUS]: 'block status',
};

export function commandName(type: number): string {
  return commandNames[type] ?? '<unknown>';
}
