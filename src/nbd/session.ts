/**
 * One NBD connection: the fixed newstyle handshake (option haggling) and then the
 * transmission phase, as the NBD specification (NetworkBlockDevice/nbd doc/proto.md) defines
 * them and as qemu-nbd answers where the specification leaves a choice.
 *
 * Requests are served concurrently, up to MAX_IN_FLIGHT per connection; the payload buffers of
 * reads and writes come out of a per-connection and a server-wide byte budget, given back
 * once the reply has been handed to the kernel, so that memory stays bounded whatever clients
 * send (a client that does not read its replies stops being read from). Everything a client
 * can send — bad magic, unknown options or commands, oversized lengths, ranges past the end —
 * gets the specification's error reply or, where it says so, a disconnect; never an exception
 * that escapes.
 */
import { readSync } from 'node:fs';
import type { Socket } from 'node:net';
import { VdiskError } from '../core/errors.js';
import { native } from '../native/index.js';
import { DIRTY_BITMAP_PREFIX } from './bitmaps.js';
import {
  ALLOCATION_DEPTH,
  BASE_ALLOCATION,
  type NbdExport,
  NotFast,
  type ReadPiece,
  type StatusExtent,
} from './export.js';
import { type BufferPool, ByteBudget, ConnectionClosed, SocketReader } from './io.js';
import * as P from './protocol.js';

/** What a session needs from its server. */
export interface SessionHost {
  findExport(name: Buffer): NbdExport | undefined;
  readonly exports: readonly NbdExport[];
  readonly budget: ByteBudget;
  readonly pool: BufferPool;
  /** Milliseconds a client has to finish the handshake (0: no limit). */
  readonly handshakeLimitMs: number;
  /** Send data the image stores as is straight from its file (sendfile), when possible. */
  readonly directIo: boolean;
  /** Errors worth telling the operator (qemu-nbd prints them too). */
  log(message: string): void;
}

/** Requests served at once on one connection (qemu's MAX_NBD_REQUESTS). */
export const MAX_IN_FLIGHT = 16;
/** Payload bytes one connection may hold at once (one 32 MiB request always fits). */
export const CONNECTION_BUDGET = 16 << 20;
/** Option data longer than this is skipped and answered NBD_REP_ERR_TOO_BIG. */
const MAX_OPTION_DATA = 1 << 20;
/** Extents in one block status chunk (the spec asks for at most 2^20). */
const MAX_EXTENTS = 1 << 16;
const BASE_ALLOCATION_ID = 0;
const ALLOCATION_DEPTH_ID = 1;
/** The id of the export's first dirty bitmap context; the next ones follow (qemu's numbering). */
const DIRTY_BITMAP_ID = 2;
const EAGAIN = 11;
/** EPIPE, ECONNRESET, ENOTCONN: send errors that mean the peer has gone. */
const PEER_GONE = new Set([32, 104, 107]);
/** The send buffer asked of the kernel for each connection (capped by net.core.wmem_max). */
const SEND_BUFFER = 4 << 20;

/** A range of a host file to send as it is. */
interface FileRange {
  fd: number;
  offset: number;
  length: number;
}

/** A refusal of an option, carried to the reply. */
class OptionError extends Error {
  constructor(
    readonly type: number,
    message: string,
  ) {
    super(message);
  }
}

/** A request refused with an NBD error value. */
class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

interface Contexts {
  /** The export name SET_META_CONTEXT was given (bytes). */
  exportName: Buffer;
  base: boolean;
  depth: boolean;
  /** Which of the export's bitmaps (qemu:dirty-bitmap:NAME) are selected. */
  bitmaps: boolean[];
}

export class NbdSession {
  private readonly reader: SocketReader;
  private structured = false;
  private noZeroes = false;
  private contexts: Contexts | null = null;
  private inFlight = 0;
  private readonly connBudget = new ByteBudget(CONNECTION_BUDGET);
  private slotWaiters: (() => void)[] = [];
  /** Buffers of replies not yet handed to the kernel, released if the socket dies first. */
  private readonly held = new Set<() => void>();
  /** Aborted when the socket closes: budget waits give up. */
  private readonly closing = new AbortController();
  /** Direct replies waiting for the socket's queue to empty. */
  private idleWaiters: (() => void)[] = [];
  /** The export chosen by NBD_OPT_GO / EXPORT_NAME (set once transmission starts). */
  export: NbdExport | null = null;
  /** The socket's descriptor, when replies may be sent from files directly (sendDirect). */
  private sockFd: number | null = null;

  constructor(
    private readonly sock: Socket,
    private readonly host: SessionHost,
  ) {
    this.reader = new SocketReader(sock);
    sock.setNoDelay(true);
    const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    if (native !== null && typeof fd === 'number' && fd >= 0) {
      native.setSendBuffer?.(fd, SEND_BUFFER);
      if (
        host.directIo &&
        native.sendFile !== undefined &&
        native.sendBytes !== undefined &&
        native.cached !== undefined
      )
        this.sockFd = fd;
    }
    sock.on('close', () => {
      this.closing.abort();
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
      for (const release of [...this.held]) release();
    });
  }

  /** Serve the connection to its end. Never rejects. */
  async run(): Promise<void> {
    const limit = this.host.handshakeLimitMs;
    const timer =
      limit > 0
        ? setTimeout(() => {
            this.host.log('option negotiation failed: handshake timed out');
            this.sock.destroy();
          }, limit)
        : null;
    try {
      const exp = await this.handshake();
      if (timer !== null) clearTimeout(timer);
      if (exp === null) return;
      this.export = exp;
      await this.transmission(exp);
    } catch (err) {
      if (!(err instanceof ConnectionClosed && !err.partial)) {
        this.host.log(`Disconnect client, due to: ${err instanceof Error ? err.message : String(err)}`);
      }
    } finally {
      if (timer !== null) clearTimeout(timer);
      await this.finish();
    }
  }

  /** Let in-flight requests reply, then close the socket. */
  private async finish(): Promise<void> {
    while (this.inFlight > 0) await this.slotFreed();
    if (!this.sock.destroyed) {
      await new Promise<void>((resolve) => {
        this.sock.end(() => resolve());
        // A peer that stopped reading never lets the end complete.
        setTimeout(resolve, 5000).unref();
      });
      this.sock.destroy();
    }
  }

  // ------------------------------------------------------------------ writing

  /** Queue buffers as one write; `done` runs once they are handed to the kernel (or lost). */
  private send(bufs: readonly Uint8Array[], done?: () => void): void {
    let once: (() => void) | undefined;
    if (done !== undefined) {
      const release = () => {
        if (this.held.delete(release)) done();
      };
      this.held.add(release);
      once = release;
    }
    if (this.sock.destroyed || !this.sock.writable) {
      once?.();
      return;
    }
    const written = () => {
      once?.();
      if (this.idleWaiters.length > 0 && this.sock.writableLength === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    };
    if (bufs.length === 1) {
      this.sock.write(bufs[0]!, written);
      return;
    }
    this.sock.cork();
    for (let i = 0; i < bufs.length; i++) {
      if (i === bufs.length - 1) this.sock.write(bufs[i]!, written);
      else this.sock.write(bufs[i]!);
    }
    this.sock.uncork();
  }

  /** Resolves once nothing is queued on the socket (or it is closed). */
  private socketIdle(): Promise<void> {
    if (this.sock.writableLength === 0 || this.sock.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  // ------------------------------------------------------------------ handshake

  /** Option haggling; the export to serve, or null when the connection is to end. */
  private async handshake(): Promise<NbdExport | null> {
    this.send([P.greeting()]);
    let clientFlags: number;
    try {
      clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    } catch {
      // Nothing sent: a port probe.
      return null;
    }
    const fixed = (clientFlags & P.FLAG_C_FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (clientFlags & P.FLAG_C_NO_ZEROES) !== 0;
    if ((clientFlags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) !== 0) {
      this.host.log(`option negotiation failed: Unknown client flags 0x${clientFlags.toString(16)} received`);
      return null;
    }
    for (;;) {
      const head = await this.reader.read(P.OPTION_HEADER_SIZE);
      if (head.readBigUInt64BE(0) !== P.IHAVEOPT) {
        this.host.log('option negotiation failed: Bad magic received');
        return null;
      }
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (!fixed && option !== P.OPT_EXPORT_NAME) {
        this.host.log(`option negotiation failed: Unsupported option ${option} (${P.optionName(option)})`);
        return null;
      }
      if (length > MAX_OPTION_DATA) {
        await this.reader.skip(length);
        if (option === P.OPT_EXPORT_NAME) {
          this.host.log('option negotiation failed: export name too long');
          return null;
        }
        this.optionError(option, P.REP_ERR_TOO_BIG, `option '${P.optionName(option)}' data too long`);
        if (option === P.OPT_ABORT) return null;
        continue;
      }
      const data = length > 0 ? await this.reader.read(length) : Buffer.alloc(0);
      try {
        const chosen = await this.option(option, data);
        if (chosen !== undefined) return chosen;
      } catch (err) {
        if (!(err instanceof OptionError)) throw err;
        this.optionError(option, err.type, err.message);
      }
    }
  }

  private optionReply(option: number, type: number, data?: Uint8Array): void {
    this.send([P.optionReply(option, type, data)]);
  }

  private optionError(option: number, type: number, message: string): void {
    this.optionReply(option, type, P.truncateUtf8(message, P.MAX_STRING));
  }

  /** Handle one option: undefined to go on haggling, an export to transmit, null to close. */
  private async option(option: number, data: Buffer): Promise<NbdExport | null | undefined> {
    const invalidLength = () =>
      new OptionError(P.REP_ERR_INVALID, `option '${P.optionName(option)}' has unexpected length`);
    switch (option) {
      case P.OPT_EXPORT_NAME: {
        const exp = this.host.findExport(data);
        if (exp === undefined) {
          this.host.log(`option negotiation failed: export '${sanitize(data)}' not present`);
          return null;
        }
        this.keepContextsFor(data);
        this.send([P.exportNameReply(exp.size, exp.transmissionFlags(this.structured), this.noZeroes)]);
        return exp;
      }
      case P.OPT_ABORT:
        // The client may hang up before reading this: errors are of no interest.
        this.optionReply(option, P.REP_ACK);
        return null;
      case P.OPT_LIST:
        if (data.length > 0) throw invalidLength();
        for (const exp of this.host.exports) {
          this.optionReply(
            option,
            P.REP_SERVER,
            P.serverEntry(Buffer.from(exp.name, 'utf8'), Buffer.from(exp.description, 'utf8')),
          );
        }
        this.optionReply(option, P.REP_ACK);
        return undefined;
      case P.OPT_STARTTLS:
        if (data.length > 0) throw invalidLength();
        throw new OptionError(P.REP_ERR_POLICY, 'TLS not configured');
      case P.OPT_INFO:
      case P.OPT_GO:
        return this.info(option, data);
      case P.OPT_STRUCTURED_REPLY:
        if (data.length > 0) throw invalidLength();
        if (this.structured) throw new OptionError(P.REP_ERR_INVALID, 'structured reply already negotiated');
        this.structured = true;
        this.optionReply(option, P.REP_ACK);
        return undefined;
      case P.OPT_LIST_META_CONTEXT:
      case P.OPT_SET_META_CONTEXT:
        this.metaContexts(option, data);
        return undefined;
      default:
        throw new OptionError(P.REP_ERR_UNSUP, `Unsupported option ${option} (${P.optionName(option)})`);
    }
  }

  /** NBD_OPT_INFO and NBD_OPT_GO: the export's details; GO then starts transmission. */
  private info(option: number, data: Buffer): NbdExport | undefined {
    const bad = (why: string) => new OptionError(P.REP_ERR_INVALID, why);
    if (data.length < 6) throw bad(`option '${P.optionName(option)}' has unexpected length`);
    const nameLength = data.readUInt32BE(0);
    if (nameLength > P.MAX_STRING) throw bad('Invalid name length');
    if (4 + nameLength + 2 > data.length) throw bad(`Inconsistent lengths in option ${P.optionName(option)}`);
    const name = data.subarray(4, 4 + nameLength);
    const count = data.readUInt16BE(4 + nameLength);
    if (4 + nameLength + 2 + 2 * count !== data.length)
      throw bad(`option '${P.optionName(option)}' has unexpected length`);
    let sendName = false;
    let blockSize = false;
    for (let i = 0; i < count; i++) {
      const what = data.readUInt16BE(4 + nameLength + 2 + 2 * i);
      if (what === P.INFO_NAME) sendName = true;
      else if (what === P.INFO_BLOCK_SIZE) blockSize = true;
    }
    const exp = this.host.findExport(name);
    if (exp === undefined) throw new OptionError(P.REP_ERR_UNKNOWN, `export '${sanitize(name)}' not present`);
    if (option === P.OPT_GO) this.keepContextsFor(name);
    if (sendName) this.optionReply(option, P.REP_INFO, P.infoString(P.INFO_NAME, name));
    if (exp.description !== '') {
      this.optionReply(
        option,
        P.REP_INFO,
        P.infoString(P.INFO_DESCRIPTION, P.truncateUtf8(exp.description, P.MAX_STRING)),
      );
    }
    // As qemu-nbd: a minimum of 1 for clients that did not promise to honour one; the
    // engine's alignment to those that did (it handles unaligned requests either way).
    const min = option === P.OPT_INFO || blockSize ? exp.requestAlignment : 1;
    this.optionReply(option, P.REP_INFO, P.infoBlockSize(min, Math.max(4096, min), P.MAX_PAYLOAD));
    this.optionReply(option, P.REP_INFO, P.infoExport(exp.size, exp.transmissionFlags(this.structured)));
    this.optionReply(option, P.REP_ACK);
    return option === P.OPT_GO ? exp : undefined;
  }

  /** Contexts selected for another export than the one chosen are dropped (qemu's rule). */
  private keepContextsFor(name: Buffer): void {
    if (this.contexts !== null && !this.contexts.exportName.equals(name)) this.contexts = null;
  }

  /** NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
  private metaContexts(option: number, data: Buffer): void {
    const set = option === P.OPT_SET_META_CONTEXT;
    const invalid = (why: string) => new OptionError(P.REP_ERR_INVALID, why);
    if (set) {
      // SET replaces the selection, even when it fails.
      this.contexts = null;
      if (!this.structured)
        throw invalid(`request option '${P.optionName(option)}' when structured reply is not negotiated`);
    }
    const short = () => invalid(`option '${P.optionName(option)}' has unexpected length`);
    if (data.length < 4) throw short();
    const nameLength = data.readUInt32BE(0);
    if (nameLength > P.MAX_STRING) throw invalid('Invalid name length');
    if (4 + nameLength + 4 > data.length)
      throw invalid(`Inconsistent lengths in option ${P.optionName(option)}`);
    const name = data.subarray(4, 4 + nameLength);
    const count = data.readUInt32BE(4 + nameLength);
    let at = 4 + nameLength + 4;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) throw short();
      const n = data.readUInt32BE(at);
      at += 4;
      if (n > data.length - at) throw short();
      // Queries longer than a string may be are ignored (qemu skips them).
      if (n <= P.MAX_STRING) queries.push(data.toString('utf8', at, at + n));
      at += n;
    }
    if (at !== data.length) throw short();
    const exp = this.host.findExport(name);
    if (exp === undefined) throw new OptionError(P.REP_ERR_UNKNOWN, `export '${sanitize(name)}' not present`);
    let base = false;
    let depth = false;
    const bitmaps = exp.bitmaps.map(() => false);
    const allBitmaps = () => bitmaps.fill(true);
    if (!set && count === 0) {
      base = true;
      depth = exp.allocationDepth;
      allBitmaps();
    }
    for (const q of queries) {
      if (q.startsWith('base:')) {
        const leaf = q.slice(5);
        if (leaf === 'allocation' || (leaf === '' && !set)) base = true;
      } else if (q.startsWith('qemu:')) {
        const leaf = q.slice(5);
        if (leaf === 'allocation-depth' || (leaf === '' && !set)) depth ||= exp.allocationDepth;
        // As qemu 7.2's nbd_meta_qemu_query: 'qemu:' and 'qemu:dirty-bitmap:' list every
        // bitmap (LIST only); a full name selects the first bitmap of that name.
        if (leaf === '' && !set) allBitmaps();
        if (leaf.startsWith('dirty-bitmap:')) {
          const bm = leaf.slice('dirty-bitmap:'.length);
          if (bm === '') {
            if (!set) allBitmaps();
          } else {
            // Only the first of that name: qemu-nbd stops at the first match.
            const i = exp.bitmaps.findIndex((b) => b.name === bm);
            if (i >= 0) bitmaps[i] = true;
          }
        }
      }
    }
    if (base)
      this.optionReply(
        option,
        P.REP_META_CONTEXT,
        P.metaContextEntry(set ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION),
      );
    if (depth)
      this.optionReply(
        option,
        P.REP_META_CONTEXT,
        P.metaContextEntry(set ? ALLOCATION_DEPTH_ID : 0, ALLOCATION_DEPTH),
      );
    exp.bitmaps.forEach((b, i) => {
      if (bitmaps[i] === true) {
        this.optionReply(
          option,
          P.REP_META_CONTEXT,
          P.metaContextEntry(set ? DIRTY_BITMAP_ID + i : 0, DIRTY_BITMAP_PREFIX + b.name),
        );
      }
    });
    this.optionReply(option, P.REP_ACK);
    if (set) this.contexts = { exportName: Buffer.from(name), base, depth, bitmaps };
  }

  // ------------------------------------------------------------------ transmission

  private slotFreed(): Promise<void> {
    return new Promise((resolve) => this.slotWaiters.push(resolve));
  }

  private freeSlot(): void {
    this.inFlight--;
    const waiters = this.slotWaiters;
    this.slotWaiters = [];
    for (const w of waiters) w();
  }

  private async transmission(exp: NbdExport): Promise<void> {
    for (;;) {
      while (this.inFlight >= MAX_IN_FLIGHT) await this.slotFreed();
      let head: Buffer;
      try {
        head = await this.reader.read(P.REQUEST_SIZE);
      } catch (err) {
        if (err instanceof ConnectionClosed && !err.partial) return;
        throw err;
      }
      const req = P.parseRequest(head);
      if (req === null) {
        throw new Error(`invalid magic (got 0x${head.readUInt32BE(0).toString(16)}, expected 0x25609513)`);
      }
      if (req.type === P.CMD_DISC) return;
      let payload: Buffer | null = null;
      let cost = 0;
      if (req.type === P.CMD_WRITE) {
        const refusal = this.check(exp, req);
        if (refusal !== null) {
          // Refused before its data is read: the data is read and dropped, the stream stays in step.
          await this.reader.skip(req.length);
          this.replyError(req, refusal.errno, refusal.message);
          continue;
        }
        cost = req.length;
        await this.acquire(cost);
        payload = this.host.pool.get(req.length);
        try {
          await this.reader.readInto(payload);
        } catch (err) {
          this.release(cost, payload);
          throw err;
        }
      } else if (req.type === P.CMD_READ && this.check(exp, req) === null) {
        cost = req.length;
        await this.acquire(cost);
      }
      this.inFlight++;
      void this.serve(exp, req, payload, cost).finally(() => this.freeSlot());
    }
  }

  private async acquire(n: number): Promise<void> {
    await this.connBudget.acquire(n, this.closing.signal);
    try {
      await this.host.budget.acquire(n, this.closing.signal);
    } catch (err) {
      this.connBudget.release(n);
      throw err;
    }
  }

  private release(n: number, buf: Buffer | null): void {
    if (buf !== null) this.host.pool.put(buf);
    this.host.budget.release(n);
    this.connBudget.release(n);
  }

  /** The spec's checks of a request, in qemu-nbd's order; null when it may be served. */
  private check(exp: NbdExport, req: P.Request): RequestError | null {
    const name = P.commandName(req.type);
    let valid = P.CMD_FLAG_FUA;
    let capped = false;
    let writes = false;
    switch (req.type) {
      case P.CMD_READ:
        if (this.structured) valid |= P.CMD_FLAG_DF;
        capped = true;
        break;
      case P.CMD_WRITE:
        capped = true;
        writes = true;
        break;
      case P.CMD_FLUSH:
        break;
      case P.CMD_TRIM:
        writes = true;
        break;
      case P.CMD_CACHE:
        capped = true;
        break;
      case P.CMD_WRITE_ZEROES:
        valid |= P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO;
        writes = true;
        break;
      case P.CMD_BLOCK_STATUS:
        valid |= P.CMD_FLAG_REQ_ONE;
        break;
      default:
        return new RequestError(P.EINVAL, `invalid request type (${req.type}) received`);
    }
    if (capped && req.length > P.MAX_PAYLOAD) {
      // A read too long for one reply: EOVERFLOW where the spec names it (structured replies).
      const errno = req.type === P.CMD_READ && this.structured ? P.EOVERFLOW : P.EINVAL;
      return new RequestError(errno, `len (${req.length}) is larger than max len (${P.MAX_PAYLOAD})`);
    }
    if (writes && exp.readOnly) return new RequestError(P.EPERM, 'Export is read-only');
    if (
      req.type !== P.CMD_FLUSH &&
      (req.offsetBig > BigInt(exp.size) || req.length > exp.size - req.offset)
    ) {
      const write = req.type === P.CMD_WRITE || req.type === P.CMD_WRITE_ZEROES;
      return new RequestError(
        write ? P.ENOSPC : P.EINVAL,
        `operation past EOF; From: ${req.offsetBig}, Len: ${req.length}, Size: ${exp.size}`,
      );
    }
    if ((req.flags & ~valid) !== 0) {
      return new RequestError(
        P.EINVAL,
        `unsupported flags for command ${name} (got 0x${req.flags.toString(16)})`,
      );
    }
    return null;
  }

  private async serve(exp: NbdExport, req: P.Request, payload: Buffer | null, cost: number): Promise<void> {
    let releaseNow = true;
    try {
      const refusal = req.type === P.CMD_WRITE ? null : this.check(exp, req);
      if (refusal !== null) {
        this.replyError(req, refusal.errno, refusal.message);
        return;
      }
      const fua = (req.flags & P.CMD_FLAG_FUA) !== 0;
      switch (req.type) {
        case P.CMD_READ:
          releaseNow = false;
          await this.serveRead(exp, req, cost);
          return;
        case P.CMD_WRITE:
          await exp.write(payload!, req.offset, fua);
          break;
        case P.CMD_FLUSH:
          await exp.flush();
          break;
        case P.CMD_TRIM:
          await exp.trim(req.offset, req.length, fua);
          break;
        case P.CMD_CACHE:
          break;
        case P.CMD_WRITE_ZEROES:
          await exp.writeZeroes(req.offset, req.length, {
            noHole: (req.flags & P.CMD_FLAG_NO_HOLE) !== 0,
            fast: (req.flags & P.CMD_FLAG_FAST_ZERO) !== 0,
            fua,
          });
          break;
        case P.CMD_BLOCK_STATUS:
          await this.serveBlockStatus(exp, req);
          return;
      }
      this.send([P.simpleReply(0, req.cookie)]);
    } catch (err) {
      const [errno, message] = nbdError(err, req);
      this.replyError(req, errno, message);
    } finally {
      if (releaseNow) this.release(cost, payload);
    }
  }

  /** An error reply: a structured error chunk once structured replies are on, else simple. */
  private replyError(req: P.Request, errno: number, message: string): void {
    if (this.structured) this.send([P.errorChunk(req.cookie, errno, message)]);
    else this.send([P.simpleReply(errno, req.cookie)]);
  }

  /**
   * NBD_CMD_READ. Structured replies without DF: the range as data and hole chunks (holes are
   * not read); otherwise one data chunk, or a simple reply with the data. The buffer goes back
   * to the pool once the reply is in the kernel's hands.
   */
  private async serveRead(exp: NbdExport, req: P.Request, cost: number): Promise<void> {
    let buf: Buffer | null = null;
    let handed = false;
    try {
      if ((req.flags & P.CMD_FLAG_FUA) !== 0) await exp.flush();
      if (req.length === 0) {
        this.send([this.structured ? P.doneChunk(req.cookie) : P.simpleReply(0, req.cookie)]);
        return;
      }
      const sparse = this.structured && (req.flags & P.CMD_FLAG_DF) === 0;
      const direct = sparse && this.sockFd !== null;
      const pieces = sparse
        ? await exp.readPieces(req.offset, req.length, direct)
        : [{ offset: req.offset, length: req.length, zero: false }];
      if (direct) {
        // Wait for the socket's queue to empty rather than queue behind it: a reply that went
        // through the queue would otherwise send the next ones that way too.
        let r = this.sendDirect(req, pieces, cost);
        while (r === 'busy') {
          await this.socketIdle();
          r = this.sendDirect(req, pieces, cost);
        }
        if (r === 'sent') {
          handed = true;
          return;
        }
      }
      const data = pieces.filter((p) => !p.zero);
      if (data.length > 0) {
        const b = this.host.pool.get(req.length);
        buf = b;
        await Promise.all(
          data.map((p) =>
            exp.read(b.subarray(p.offset - req.offset, p.offset - req.offset + p.length), p.offset),
          ),
        );
      }
      const out: Uint8Array[] = [];
      if (!this.structured) {
        out.push(P.simpleReply(0, req.cookie), buf!);
      } else {
        pieces.forEach((p, i) => {
          const done = i === pieces.length - 1;
          if (p.zero) out.push(P.holeChunk(req.cookie, p.offset, p.length, done));
          else {
            const at = p.offset - req.offset;
            out.push(
              P.dataChunkHeader(req.cookie, p.offset, p.length, done),
              buf!.subarray(at, at + p.length),
            );
          }
        });
      }
      handed = true;
      const b = buf;
      this.send(out, () => this.release(cost, b));
    } catch (err) {
      const [errno, message] = nbdError(err, req);
      this.replyError(req, errno, message);
    } finally {
      if (!handed) this.release(cost, buf);
    }
  }

  /**
   * A structured read reply whose data lies as it is in host files, sent from the page cache
   * to the socket by sendfile(2), without copying it through a buffer: when every data piece
   * has a host location and is cached (sendfile would otherwise wait for the disk on the main
   * thread), and nothing is queued on the socket (the bytes of one reply must not mix with
   * another's). Synchronous; when the socket fills up, the rest of the reply is read from the
   * cache into a buffer and queued on the socket in order. 'busy': the socket has a queue (try
   * again once it is empty); 'no': not possible. Nothing is sent unless 'sent'.
   */
  private sendDirect(req: P.Request, pieces: ReadPiece[], cost: number): 'sent' | 'busy' | 'no' {
    const n = native!;
    const fd = this.sockFd!;
    if (this.sock.destroyed || !this.sock.writable) return 'no';
    for (const p of pieces) {
      if (p.zero) continue;
      if (p.direct === undefined || n.cached!(p.direct.fd, p.direct.offset, p.length) !== 1) return 'no';
    }
    if (this.sock.writableLength !== 0) return 'busy';
    const parts: (Uint8Array | FileRange)[] = [];
    pieces.forEach((p, i) => {
      const done = i === pieces.length - 1;
      if (p.zero) parts.push(P.holeChunk(req.cookie, p.offset, p.length, done));
      else {
        parts.push(P.dataChunkHeader(req.cookie, p.offset, p.length, done));
        parts.push({ fd: p.direct!.fd, offset: p.direct!.offset, length: p.length });
      }
    });
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      const more = i + 1 < parts.length ? 1 : 0;
      let sent =
        part instanceof Uint8Array
          ? n.sendBytes!(fd, part, 0, part.length, more)
          : n.sendFile!(fd, part.fd, part.offset, part.length);
      if (sent < 0 && PEER_GONE.has(-sent)) {
        // The peer is gone: the connection ends.
        this.sock.destroy();
        this.release(cost, null);
        return 'sent';
      }
      if (sent < 0 && -sent !== EAGAIN) {
        // sendfile cannot do this file (or failed): this reply and the next go through buffers.
        this.host.log(`sendfile: error ${-sent}; sending through buffers from now on`);
        this.sockFd = null;
      }
      if (sent < 0) sent = 0;
      if (sent < part.length) {
        this.queueRest(parts, i, sent, cost);
        return 'sent';
      }
    }
    this.release(cost, null);
    return 'sent';
  }

  /**
   * Queue parts[i] from byte `skip` on, and the parts after it, as buffers on the socket. The
   * file ranges are read synchronously (sendDirect saw them in the page cache). A read that
   * fails leaves the reply cut short: the connection ends.
   */
  private queueRest(parts: (Uint8Array | FileRange)[], i: number, skip: number, cost: number): void {
    let fileBytes = 0;
    for (let j = i; j < parts.length; j++) {
      const part = parts[j]!;
      if (!(part instanceof Uint8Array)) fileBytes += part.length - (j === i ? skip : 0);
    }
    const buf = this.host.pool.get(fileBytes);
    const out: Uint8Array[] = [];
    let at = 0;
    for (let j = i; j < parts.length; j++) {
      const part = parts[j]!;
      const from = j === i ? skip : 0;
      if (part instanceof Uint8Array) out.push(part.subarray(from));
      else {
        const len = part.length - from;
        try {
          readFully(part.fd, buf, at, len, part.offset + from);
        } catch (err) {
          this.host.log(`Disconnect client, due to: reading from file failed: ${(err as Error).message}`);
          this.sock.destroy();
          this.release(cost, buf);
          return;
        }
        out.push(buf.subarray(at, at + len));
        at += len;
      }
    }
    this.send(out, () => this.release(cost, buf));
  }

  /** NBD_CMD_BLOCK_STATUS: one chunk per selected context, the last one marked done. */
  private async serveBlockStatus(exp: NbdExport, req: P.Request): Promise<void> {
    const c = this.contexts;
    if (!this.structured || c === null || (!c.base && !c.depth && !c.bitmaps.includes(true))) {
      this.replyError(req, P.EINVAL, 'CMD_BLOCK_STATUS not negotiated');
      return;
    }
    if (req.length === 0) {
      this.replyError(req, P.EINVAL, 'need non-zero length');
      return;
    }
    const max = (req.flags & P.CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
    const chunks: { id: number; extents: StatusExtent[] }[] = [];
    if (c.base)
      chunks.push({ id: BASE_ALLOCATION_ID, extents: await exp.baseAllocation(req.offset, req.length, max) });
    if (c.depth)
      chunks.push({
        id: ALLOCATION_DEPTH_ID,
        extents: await exp.allocationDepthExtents(req.offset, req.length, max),
      });
    c.bitmaps.forEach((on, i) => {
      if (on)
        chunks.push({
          id: DIRTY_BITMAP_ID + i,
          extents: exp.dirtyBitmapExtents(i, req.offset, req.length, max),
        });
    });
    this.send(
      chunks.map((ch, i) => P.blockStatusChunk(req.cookie, ch.id, ch.extents, i === chunks.length - 1)),
    );
  }
}

/** pread until `len` bytes are in buf at `at` (zeros past the end of the file). */
function readFully(fd: number, buf: Buffer, at: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const k = readSync(fd, buf, at + done, len - done, pos + done);
    if (k === 0) {
      buf.fill(0, at + done, at + len);
      return;
    }
    done += k;
  }
}

/** An engine error as an NBD error value and a message. */
function nbdError(err: unknown, req: P.Request): [number, string] {
  if (err instanceof NotFast) return [P.ENOTSUP, 'fast zero is not possible here'];
  if (err instanceof RequestError) return [err.errno, err.message];
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof VdiskError) {
    switch (err.code) {
      case 'READ_ONLY':
        return [P.EPERM, message];
      case 'ENOSPC':
      case 'TOO_LARGE':
        return [P.ENOSPC, message];
      case 'OUT_OF_RANGE':
      case 'INVALID_ARGUMENT':
        return [P.EINVAL, message];
    }
  }
  const what =
    req.type === P.CMD_READ
      ? 'reading from file failed'
      : req.type === P.CMD_FLUSH
        ? 'flush failed'
        : 'writing to file failed';
  return [P.EIO, `${what}: ${message}`];
}

/** A name from a client, safe to print (qemu's nbd_sanitize_name: at most 80 characters). */
function sanitize(name: Buffer): string {
  const s = name.toString('utf8').replace(/[\u0000-\u001f\u007f]/g, '?');
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
