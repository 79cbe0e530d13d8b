/**
 * The embedded database's template: a new, migrated PGlite data directory as a gzipped tar,
 * made at build time (scripts/pglite-template.mjs → dist/server/db/pgdata.tar.gz) so that a
 * first `vdisk serve` unpacks it (~0.1–0.2 s) instead of running initdb (4–8 s).
 *
 * The tarball is PGlite's own dumpDataDir() of a directory made, migrated and checkpointed by
 * the same PGlite as the one that opens it; it is not committed (4.7 MB of binary data with
 * timestamps, not reproducible byte for byte) but rebuilt by `npm run build`.
 *
 * unpackTemplate() writes into a sibling `<dir>.new` and renames it to `<dir>`: a
 * process killed half-way leaves `<dir>.new`, never a half-made `<dir>`; the next start
 * removes it and unpacks again.
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join, normalize, sep } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { VdiskError } from '../../core/errors.js';

const gunzipAsync = promisify(gunzip);

/** Make the template: a new data directory in `work`, migrated, written to `out` (gzip). */
export async function makeTemplate(work: string, out: string, startParams: string[]): Promise<void> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { Kysely } = await import('kysely');
  const { PGliteDialect } = await import('./pglite-dialect.js');
  const { migrate } = await import('./schema.js');
  await rm(work, { recursive: true, force: true });
  const pg = await PGlite.create(work, { startParams: [...PGlite.defaultStartParams, ...startParams] });
  try {
    const db = new Kysely<import('./schema.js').Database>({ dialect: new PGliteDialect(pg) });
    await migrate(db);
    // Without the template databases: vdisk uses `postgres` only (PGlite's default), and they
    // are 600 of the template's 1090 files (300 each), which a first start would create.
    // PostgreSQL needs them only for CREATE DATABASE, which vdisk never runs.
    for (const t of ['template0', 'template1']) {
      await pg.query(`ALTER DATABASE ${t} IS_TEMPLATE false`);
      await pg.query(`DROP DATABASE ${t}`);
    }
    await pg.exec('CHECKPOINT');
    const blob = await pg.dumpDataDir('gzip');
    const fh = await open(out, 'w');
    try {
      await fh.writeFile(Buffer.from(await blob.arrayBuffer()));
    } finally {
      await fh.close();
    }
  } finally {
    await pg.close();
    await rm(work, { recursive: true, force: true });
  }
}

const field = (h: Buffer, at: number, len: number): string => {
  const s = h.subarray(at, at + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? len : nul).toString('utf8');
};

const ZEROS = Buffer.alloc(64 * 1024);

/**
 * The length of `data` without its trailing zeros. The 16 MiB WAL segment is nearly all
 * zeros: compared 64 KiB at a time (memcmp), not byte by byte in JavaScript (60–75 ms of a
 * first start, as much as creating the 488 files).
 */
export function dataEnd(data: Buffer): number {
  let end = data.length;
  while (end >= ZEROS.length && data.subarray(end - ZEROS.length, end).equals(ZEROS)) end -= ZEROS.length;
  while (end > 0 && data[end - 1] === 0) end--;
  return end;
}

/**
 * Unpack the template (ustar: regular files and directories only) into `dir`, atomically
 * (see above). `dir` must not exist.
 */
export async function unpackTemplate(tgz: string, dir: string): Promise<void> {
  const tmp = `${dir}.new`;
  await rm(tmp, { recursive: true, force: true });
  let tar: Buffer;
  try {
    const fh = await open(tgz, 'r');
    try {
      tar = await gunzipAsync(await fh.readFile());
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw new VdiskError('EIO', `Could not read the database template ${tgz}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const bad = (why: string) => new VdiskError('EIO', `The database template ${tgz} is damaged: ${why}`);
  // Synchronous calls: ~1100 small files, each a round trip to the thread pool otherwise.
  mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const made = new Set<string>([tmp]);
  const mkdirs = (d: string) => {
    if (made.has(d)) return;
    mkdirSync(d, { recursive: true, mode: 0o700 });
    made.add(d);
  };
  let files = 0;
  for (let off = 0; off + 512 <= tar.length; ) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break; // end of archive
    const prefix = field(h, 345, 155);
    const name = prefix === '' ? field(h, 0, 100) : `${prefix}/${field(h, 0, 100)}`;
    const size = Number.parseInt(field(h, 124, 12).trim() || '0', 8);
    const type = String.fromCharCode(h[156] ?? 0);
    if (!Number.isSafeInteger(size) || size < 0 || off + 512 + size > tar.length) throw bad(`entry ${name}`);
    const rel = normalize(name.replace(/^\/+/, ''));
    if (rel === '..' || rel.startsWith(`..${sep}`)) throw bad(`entry ${name}`);
    const path = join(tmp, rel);
    if (type === '5') mkdirs(path);
    else if (type === '0' || type === '\0') {
      mkdirs(dirname(path));
      const data = tar.subarray(off + 512, off + 512 + size);
      // Trailing zeros as a hole (the 16 MiB WAL segment is mostly zeros): PostgreSQL reads
      // zeros from it as from written ones.
      const end = dataEnd(data);
      const fd = openSync(path, 'w', 0o600);
      try {
        writeSync(fd, data, 0, end, 0);
        if (end < size) ftruncateSync(fd, size);
      } finally {
        closeSync(fd);
      }
      files++;
    } else throw bad(`entry ${name} of type ${JSON.stringify(type)}`);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  if (files === 0) throw bad('no files');
  // Not synced to disk: PGlite runs PostgreSQL with fsync off (-F in its start parameters), so
  // the database is not safe from a power loss anyway; the rename makes it safe from a killed
  // process (the page cache outlives it).
  await rename(tmp, dir);
}
