/**
 * luks: a raw LUKS1 volume (QEMU's block/crypto.c over crypto/block-luks.c). The file holds
 * the LUKS header and key material, then the payload, encrypted per 512-byte sector with the
 * sector number (from the payload start) as IV. The virtual size is the file size less the
 * payload offset. LUKS2 is not read: QEMU 7.2 does not read it either (it probes a LUKS2
 * volume as raw and refuses it with "LUKS version 2 is not supported").
 */
import type { Extent } from '../../core/device.js';
import type {
  CreateOptionSpec,
  CreateRequest,
  DriverContext,
  DriverOpenOptions,
  FormatDriver,
  FormatImage,
  FormatSpecific,
} from '../../core/driver.js';
import { VdiskError } from '../../core/errors.js';
import { HostFile } from '../../core/host-file.js';
import {
  createLuks,
  type LuksCreateOptions,
  type LuksVolume,
  luksInfo,
  luksPayloadOffset,
  openLuks,
} from './block.js';
import { SECTOR } from './crypto.js';

/** Bytes encrypted per step: bounds the memory of a large request. */
const CHUNK = 1 << 20;

export class LuksImage implements FormatImage {
  readonly format = 'luks';
  readonly alignment = SECTOR;
  readonly encrypted = true;
  readonly zeroInit = false;

  constructor(
    private readonly file: HostFile,
    private readonly vol: LuksVolume,
    public size: number,
  ) {}

  get readOnly(): boolean {
    return !this.file.writable;
  }

  attach(_ctx: DriverContext): void {}

  private get cipher() {
    const c = this.vol.cipher;
    if (c === undefined) throw new VdiskError('INTERNAL', 'The LUKS volume was opened without a key');
    return c;
  }

  // QEMU's crypto driver has no block status: everything is allocated data, with no offset.
  async blockStatus(offset: number, length: number): Promise<Extent> {
    return { offset, length, allocated: true, zero: false, data: true };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const cipher = this.cipher;
    await this.file.read(buf, this.vol.payloadOffset + offset);
    for (let pos = 0; pos < buf.length; pos += CHUNK) {
      const part = buf.subarray(pos, Math.min(buf.length, pos + CHUNK));
      cipher.run(false, part, part, (offset + pos) / SECTOR);
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const cipher = this.cipher;
    const tmp = new Uint8Array(Math.min(CHUNK, buf.length));
    for (let pos = 0; pos < buf.length; pos += CHUNK) {
      const n = Math.min(CHUNK, buf.length - pos);
      const out = tmp.subarray(0, n);
      cipher.run(true, buf.subarray(pos, pos + n), out, (offset + pos) / SECTOR);
      await this.file.write(out, this.vol.payloadOffset + offset + pos);
    }
  }

  // Zeros are written encrypted (an unencrypted zero sector would read back as garbage).
  async writeZeroes(offset: number, length: number, _unmap: boolean): Promise<void> {
    const zero = new Uint8Array(Math.min(CHUNK, length));
    for (let pos = 0; pos < length; pos += CHUNK) {
      const n = Math.min(CHUNK, length - pos);
      await this.write(zero.subarray(0, n), offset + pos);
    }
  }

  // QEMU 7.2's crypto driver does not pass discards down.
  async discard(_offset: number, _length: number): Promise<void> {}

  flush(): Promise<void> {
    return this.file.flush();
  }

  close(): Promise<void> {
    return this.file.close();
  }

  actualSize(): Promise<number> {
    return this.file.allocatedSize();
  }

  /**
   * block_crypto_co_truncate: the file becomes payload + size; preallocation is the file's
   * (what grows reads as noise until written, as in QEMU).
   */
  async resize(size: number, opts: { preallocation?: string; shrink: boolean }): Promise<void> {
    const mode = opts.preallocation ?? 'off';
    if (!PREALLOC.includes(mode))
      throw new VdiskError('INVALID_ARGUMENT', `Unsupported preallocation mode '${mode}'`);
    const old = await this.file.size();
    const end = this.vol.payloadOffset + size;
    await this.file.truncate(end);
    if (end > old && mode === 'falloc') this.file.allocate(old, end - old);
    if (end > old && mode === 'full') {
      const zero = new Uint8Array(Math.min(4 << 20, end - old));
      for (let p = old; p < end; p += zero.length)
        await this.file.write(zero.subarray(0, Math.min(zero.length, end - p)), p);
    }
    this.size = Math.ceil(size / SECTOR) * SECTOR;
  }

  formatSpecific(): FormatSpecific {
    return { type: 'luks', data: luksInfo(this.vol.parsed) };
  }
}

async function openLuksFile(file: HostFile, opts: DriverOpenOptions): Promise<FormatImage> {
  const fileSize = await file.size();
  // A short file reads as zeros past its end, as QEMU reads it (the header checks or the
  // unlock then fail).
  const vol = await openLuks((buf, off) => file.read(buf, off), opts.options?.['key-secret'], {
    noIo: opts.noIo === true,
    prefix: '',
    secrets: opts.secrets,
  });
  if (vol.payloadOffset > fileSize) {
    // block/crypto.c getlength: -EIO when the file ends before the payload starts.
    throw new VdiskError('EIO', 'Could not refresh total sector count: Input/output error');
  }
  return new LuksImage(file, vol, Math.ceil((fileSize - vol.payloadOffset) / SECTOR) * SECTOR);
}

const PREALLOC = ['off', 'falloc', 'full'];

function luksOptions(o: Record<string, string>): LuksCreateOptions {
  return {
    keySecret: o['key-secret'],
    cipherAlg: o['cipher-alg'],
    cipherMode: o['cipher-mode'],
    ivgenAlg: o['ivgen-alg'],
    ivgenHashAlg: o['ivgen-hash-alg'],
    hashAlg: o['hash-alg'],
    iterTime: o['iter-time'] === undefined ? undefined : Number(o['iter-time']),
  };
}

async function createLuksFile(req: CreateRequest): Promise<void> {
  const o = req.options;
  const prealloc = o['preallocation'] ?? 'off';
  if (!PREALLOC.includes(prealloc))
    throw new VdiskError('INVALID_ARGUMENT', `invalid parameter value: ${prealloc}`);
  const file = await HostFile.open(req.path, { create: true });
  try {
    await createLuks(
      { ...luksOptions(o), secrets: req.secrets },
      '',
      async (payload) => {
        const total = payload + req.size;
        await file.truncate(total);
        if (prealloc === 'falloc' && !file.allocate(0, total)) {
          throw new VdiskError(
            'UNSUPPORTED',
            `Could not preallocate '${req.path}': the file system does not support fallocate`,
          );
        }
        if (prealloc === 'full') {
          const zero = new Uint8Array(Math.min(4 << 20, Math.max(total, 1)));
          for (let pos = 0; pos < total; pos += zero.length) {
            await file.write(zero.subarray(0, Math.min(zero.length, total - pos)), pos);
          }
        }
      },
      (buf, off) => file.write(buf, off),
    );
    await file.flush();
  } finally {
    await file.close();
  }
}

const createOptions: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'key-secret', type: 'string', help: 'ID of the secret that provides the keyslot passphrase' },
  { name: 'cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  {
    name: 'preallocation',
    type: 'string',
    help: 'Preallocation mode (allowed values: off, falloc, full)',
    protocol: true,
  },
];

export const luksDriver: FormatDriver = {
  name: 'luks',
  open: openLuksFile,
  create: createLuksFile,
  createOptions,
  // block_crypto_measure: the payload offset plus the virtual size (no holes in a luks file).
  async measure(size, options, source, secrets) {
    const payload = luksPayloadOffset({ ...luksOptions(options), secrets }, '');
    const data = source !== undefined ? source.size : Math.ceil(size / SECTOR) * SECTOR;
    return { required: payload + data, fullyAllocated: payload + data };
  },
};
