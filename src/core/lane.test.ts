/**
 * A file's write lane (native/vdisk_lane.c, HostFile's writes off the main thread): writes in
 * the order they were queued, every byte of them, errors as -errno, the event loop kept alive
 * while a write is outstanding and not after. The same writes through libuv's pool
 * (VDISK_NO_NATIVE=1, no lane) give the same file.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../native/index.js';
import { tempDir } from '../test/oracle.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => {
  ({ dir, cleanup } = tempDir('vdisk-lane-'));
});
afterAll(() => cleanup());

const lane = native?.laneOpen !== undefined ? describe : describe.skip;

lane('the write lane', () => {
  const { laneOpen, laneWrite, laneClose } = native as Required<NonNullable<typeof native>>;

  it('writes queued together land in their order, every byte', async () => {
    const p = join(dir, 'order.bin');
    writeFileSync(p, Buffer.alloc(0));
    const fd = openSync(p, 'r+');
    const l = laneOpen();
    try {
      // 64 writes over the same 1 MiB, each its own byte: the last one queued is what remains.
      const jobs: Promise<number>[] = [];
      for (let i = 1; i <= 64; i++) jobs.push(laneWrite(l, fd, [Buffer.alloc(1 << 20, i)], 0));
      // Vectored, and buffers of every size down to empty.
      const parts = [randomBytes(3), Buffer.alloc(0), randomBytes(70_000), randomBytes(2 << 20)];
      jobs.push(laneWrite(l, fd, parts, 5 << 20));
      const done = await Promise.all(jobs);
      expect(done.slice(0, 64)).toEqual(new Array(64).fill(1 << 20));
      expect(done[64]).toBe(3 + 70_000 + (2 << 20));
      const file = readFileSync(p);
      expect(file.subarray(0, 1 << 20).equals(Buffer.alloc(1 << 20, 64))).toBe(true);
      expect(file.subarray(5 << 20).equals(Buffer.concat(parts))).toBe(true);
    } finally {
      laneClose(l);
      closeSync(fd);
    }
  });

  it('a failing write resolves to -errno; the writes after it still run', async () => {
    const p = join(dir, 'ro.bin');
    writeFileSync(p, Buffer.alloc(10));
    const ro = openSync(p, 'r');
    const rw = openSync(p, 'r+');
    const l = laneOpen();
    try {
      const [bad, good] = await Promise.all([
        laneWrite(l, ro, [Buffer.from('x')], 0),
        laneWrite(l, rw, [Buffer.from('ok')], 0),
      ]);
      expect(bad).toBe(-9); // EBADF: not open for writing
      expect(good).toBe(2);
      expect(readFileSync(p).subarray(0, 2).toString()).toBe('ok');
    } finally {
      laneClose(l);
      closeSync(ro);
      closeSync(rw);
    }
    expect(() => laneWrite(laneOpen(), rw, [], 0)).toThrow(/laneWrite/);
    expect(() => laneWrite({} as never, rw, [Buffer.alloc(1)], 0)).toThrow(/laneWrite/);
  });

  it('keeps the process alive while a write is outstanding, and not once it is idle', () => {
    const p = join(dir, 'alive.bin');
    const script = `
const { native } = await import(${JSON.stringify(join(import.meta.dirname, '..', 'native', 'index.ts'))});
const { openSync } = await import('node:fs');
const fd = openSync(${JSON.stringify(p)}, 'w');
const l = native.laneOpen();
// Not awaited: the process must still write all of it before it exits.
for (let i = 0; i < 32; i++) native.laneWrite(l, fd, [Buffer.alloc(1 << 20, i + 1)], i << 20);
// An idle lane (this one, once its writes are done; a second one never used) holds nothing.
native.laneOpen();
`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const file = readFileSync(p);
    expect(file.length).toBe(32 << 20);
    for (let i = 0; i < 32; i++) expect(file[(i << 20) + 12345]).toBe(i + 1);
  });
});

describe('HostFile writes with and without the lane', () => {
  it('the same file either way, large writes and vectored ones side by side', () => {
    const files: Buffer[] = [];
    for (const noNative of ['0', '1']) {
      const p = join(dir, `host-${noNative}.bin`);
      const script = `
const { HostFile } = await import(${JSON.stringify(join(import.meta.dirname, 'host-file.ts'))});
const f = await HostFile.open(${JSON.stringify(p)}, { writable: true, create: true, lock: 'none', inlineSmallWrites: true });
const jobs = [];
let seed = 7;
const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
for (let i = 0; i < 48; i++) {
  const b = Buffer.alloc(4096 + (rnd() % (3 << 20)), i + 1);
  jobs.push(i % 3 === 0 ? f.writev([b.subarray(0, 100), b.subarray(100)], i << 22) : f.write(b, i << 22));
  if (i % 5 === 0) jobs.push(f.write(Buffer.alloc(512, 0xa5), (i << 22) + (4 << 20) - 512));
}
await Promise.all(jobs);
await f.close();
`;
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        encoding: 'utf8',
        env: { ...process.env, VDISK_NO_NATIVE: noNative },
        timeout: 60_000,
      });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      files.push(readFileSync(p));
    }
    expect(files[0]!.length).toBeGreaterThan(47 << 22);
    expect(files[0]!.equals(files[1]!)).toBe(true);
  });
});
