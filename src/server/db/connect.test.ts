/**
 * The embedded database's settings (connect.ts): a data directory that the previous release
 * made and filled opens with the current settings and keeps its rows; a new one is made by a
 * child process or, as `vdisk serve` does, unpacked from the template that `npm run build` makes,
 * safely against a process killed mid-way; and a directory that cannot be made is reported.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, sql } from 'kysely';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VdiskError } from '../../core/errors.js';
import { compilePglite, openPglite, PGLITE_PARAMS } from './connect.js';
import { PGliteDialect } from './pglite-dialect.js';
import { type Database, migrate } from './schema.js';
import { makeTemplate, unpackTemplate } from './template.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vdisk-connect-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const showSharedBuffers = async (db: Kysely<Database>) =>
  (await sql<{ shared_buffers: string }>`SHOW shared_buffers`.execute(db)).rows[0]!.shared_buffers;

describe('openPglite', () => {
  it('opens a data directory made by the previous release (shared_buffers=16MB, tier-up) and reads its rows', async () => {
    const pgdir = join(dir, 'db');
    // The previous release's openPglite: PGlite made the directory in-process (initdb in a
    // second instance), started with shared_buffers=16MB, and migrated the schema.
    const old = await PGlite.create(pgdir, {
      startParams: [...PGlite.defaultStartParams, '-c', 'shared_buffers=16MB'],
    });
    const oldDb = new Kysely<Database>({ dialect: new PGliteDialect(old) });
    await migrate(oldDb);
    expect(await showSharedBuffers(oldDb)).toBe('16MB');
    const now = new Date('2024-05-01T12:00:00Z');
    for (let i = 0; i < 50; i++)
      await oldDb
        .insertInto('images')
        .values({
          id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
          name: `image-${i}`,
          status: i % 2 === 0 ? 'active' : 'queued',
          visibility: 'shared',
          protected: false,
          os_hidden: false,
          owner: 'p1',
          disk_format: 'qcow2',
          container_format: 'bare',
          size: i * 1024,
          virtual_size: null,
          checksum: null,
          os_hash_algo: null,
          os_hash_value: null,
          min_disk: 0,
          min_ram: 0,
          created_at: now,
          updated_at: now,
          properties: { os_distro: 'ubuntu', n: String(i) },
          tags: ['a', `t${i}`],
          blob: i % 2 === 0 ? `blob-${i}` : null,
          writer: null,
        })
        .execute();
    await oldDb.destroy();
    await old.close();

    // The current settings on the same directory: no initdb (PG_VERSION is there), every row
    // back, the jsonb operators as before, and writes go on.
    const meta = await openPglite(pgdir);
    try {
      expect(await showSharedBuffers(meta.db)).toBe('4MB');
      const rows = await meta.db.selectFrom('images').selectAll().orderBy('name').execute();
      expect(rows).toHaveLength(50);
      const r7 = rows.find((r) => r.name === 'image-7')!;
      expect(r7).toMatchObject({ status: 'queued', size: 7 * 1024, tags: ['a', 't7'], blob: null });
      expect(r7.properties).toEqual({ os_distro: 'ubuntu', n: '7' });
      expect(r7.created_at.toISOString()).toBe(now.toISOString());
      const tagged = await meta.db
        .selectFrom('images')
        .select('id')
        .where(sql<boolean>`tags @> '["t3"]'::jsonb`)
        .execute();
      expect(tagged).toHaveLength(1);
      await meta.db
        .updateTable('images')
        .set({ status: 'deactivated' })
        .where('name', '=', 'image-0')
        .execute();
    } finally {
      await meta.close();
    }
    // and again (a second start of the new release)
    const again = await openPglite(pgdir);
    try {
      const r0 = await again.db
        .selectFrom('images')
        .select('status')
        .where('name', '=', 'image-0')
        .executeTakeFirstOrThrow();
      expect(r0.status).toBe('deactivated');
      expect(
        Number(
          (
            await again.db
              .selectFrom('images')
              .select((eb) => eb.fn.countAll().as('n'))
              .executeTakeFirstOrThrow()
          ).n,
        ),
      ).toBe(50);
    } finally {
      await again.close();
    }
  });

  it('makes a new data directory (initdb in a child process, without a template) and migrates it', async () => {
    const pgdir = join(dir, 'db');
    const meta = await openPglite(pgdir, { template: null });
    try {
      const v = await sql<{ version: number }>`SELECT version FROM vdisk_schema`.execute(meta.db);
      expect(v.rows[0]!.version).toBeGreaterThan(0);
      expect(await showSharedBuffers(meta.db)).toBe('4MB');
    } finally {
      await meta.close();
    }
  });

  it('reports a data directory that cannot be made', async () => {
    await writeFile(join(dir, 'file'), 'x');
    const err = await openPglite(join(dir, 'file', 'db'), { template: null }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).message).toMatch(/Could not create the database/);
  });

  it('reports a data directory that cannot be made from the template', async () => {
    await writeFile(join(dir, 'file'), 'x');
    const err = await openPglite(join(dir, 'file', 'db'), { template: await template() }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).message).toMatch(/Could not create the database/);
  });
});

/** One template for the cases below, made as `npm run build` makes it (scripts/pglite-template.mjs). */
let templateDir: string | undefined;
let templatePath: Promise<string> | undefined;
const template = () => {
  templatePath ??= (async () => {
    templateDir = await mkdtemp(join(tmpdir(), 'vdisk-template-'));
    const out = join(templateDir, 'pgdata.tar.gz');
    await makeTemplate(join(templateDir, 'work'), out, PGLITE_PARAMS);
    return out;
  })();
  return templatePath;
};
afterAll(async () => {
  if (templateDir !== undefined) await rm(templateDir, { recursive: true, force: true });
});

const schemaVersion = async (db: Kysely<Database>) =>
  (await sql<{ version: number }>`SELECT version FROM vdisk_schema`.execute(db)).rows[0]!.version;

describe('openPglite from the template', () => {
  it('unpacks a migrated data directory, opens it with the current settings, and opens it again', async () => {
    const pgdir = join(dir, 'db');
    const meta = await openPglite(pgdir, { template: await template() });
    let version: number;
    try {
      version = await schemaVersion(meta.db);
      expect(version).toBeGreaterThan(0);
      expect(await showSharedBuffers(meta.db)).toBe('4MB');
      // Without the template databases (600 files fewer to make): `postgres` only.
      const dbs = await sql<{ datname: string }>`SELECT datname FROM pg_database`.execute(meta.db);
      expect(dbs.rows.map((r) => r.datname)).toEqual(['postgres']);
      expect(await readdir(join(pgdir, 'base'))).toHaveLength(1);
      await meta.db
        .insertInto('images')
        .values({
          id: '00000000-0000-4000-8000-000000000001',
          name: 'one',
          status: 'queued',
          visibility: 'shared',
          protected: false,
          os_hidden: false,
          owner: 'p1',
          disk_format: 'raw',
          container_format: 'bare',
          size: null,
          virtual_size: null,
          checksum: null,
          os_hash_algo: null,
          os_hash_value: null,
          min_disk: 0,
          min_ram: 0,
          created_at: new Date(),
          updated_at: new Date(),
          properties: {},
          tags: [],
          blob: null,
          writer: null,
        })
        .execute();
    } finally {
      await meta.close();
    }
    expect(existsSync(`${pgdir}.new`)).toBe(false);
    // The same as a template-less first start: the same PostgreSQL files at the top.
    const ref = join(dir, 'ref');
    await (await openPglite(ref, { template: null })).close();
    expect((await readdir(pgdir)).sort()).toEqual((await readdir(ref)).sort());
    // A second start: the directory is there, not unpacked again; PGlite's WebAssembly
    // compiled beforehand, as the server does.
    const again = await openPglite(pgdir, { template: await template(), wasmModule: compilePglite() });
    try {
      expect(await schemaVersion(again.db)).toBe(version);
      const n = await again.db.selectFrom('images').select('name').execute();
      expect(n).toEqual([{ name: 'one' }]);
    } finally {
      await again.close();
    }
  });

  it('redoes what a start killed mid-way left: a half-unpacked <dir>.new, a <dir> without PG_VERSION', async () => {
    const tgz = await template();
    const pgdir = join(dir, 'db');
    // A half-unpacked directory: some of the template's files, PG_VERSION among them.
    await unpackTemplate(tgz, join(dir, 'full'));
    await mkdir(`${pgdir}.new/base`, { recursive: true });
    await cp(join(dir, 'full', 'PG_VERSION'), `${pgdir}.new/PG_VERSION`);
    await writeFile(`${pgdir}.new/base/junk`, 'x');
    // What an older release's initdb, killed, could leave: a directory without PG_VERSION.
    await mkdir(join(pgdir, 'global'), { recursive: true });
    await writeFile(join(pgdir, 'global', 'junk'), 'x');
    const meta = await openPglite(pgdir, { template: tgz });
    try {
      expect(await schemaVersion(meta.db)).toBeGreaterThan(0);
    } finally {
      await meta.close();
    }
    expect(existsSync(`${pgdir}.new`)).toBe(false);
    expect(existsSync(join(pgdir, 'global', 'junk'))).toBe(false);
  });

  it('a process killed (SIGKILL) while it unpacks leaves no half-made directory', async () => {
    const tgz = await template();
    const script = `const { unpackTemplate } = await import(${JSON.stringify(new URL('./template.ts', import.meta.url).href)});
process.stdout.write('go\\n');
await unpackTemplate(process.argv[1], process.argv[2]);`;
    let sawNew = 0;
    // Killed before it starts writing, and 0, 20 and 80 ms after `<dir>.new` appears.
    for (const delayMs of [-1, 0, 20, 80]) {
      const pgdir = join(dir, `db-${delayMs}`);
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', '--input-type=module', '-e', script, tgz, pgdir],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      // Listened for from the start: a child that finishes before the kill has already sent
      // 'exit' by then (waiting for it afterwards hung until the test's timeout).
      const exited = new Promise((r) => child.once('exit', r));
      await new Promise<void>((res) => child.stdout.once('data', () => res()));
      if (delayMs >= 0) {
        while (!existsSync(`${pgdir}.new`) && child.exitCode === null)
          await new Promise((r) => setTimeout(r, 2));
        await new Promise((r) => setTimeout(r, delayMs));
      }
      child.kill('SIGKILL');
      await exited;
      if (existsSync(`${pgdir}.new`)) sawNew++;
      // Either nothing, or all of it: the directory opens and has the schema.
      const meta = await openPglite(pgdir, { template: tgz });
      try {
        expect(await schemaVersion(meta.db)).toBeGreaterThan(0);
      } finally {
        await meta.close();
      }
      expect(existsSync(`${pgdir}.new`)).toBe(false);
    }
    // At least one kill landed mid-way (else this test would test nothing).
    expect(sawNew).toBeGreaterThan(0);
  });
});
