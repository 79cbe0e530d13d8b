/**
 * The embedded database's settings (connect.ts): a data directory that the previous release
 * made and filled opens with the current settings and keeps its rows; a new one is made by a
 * child process; and a directory that cannot be made is reported.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { Kysely, sql } from 'kysely';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VdiskError } from '../../core/errors.js';
import { openPglite } from './connect.js';
import { PGliteDialect } from './pglite-dialect.js';
import { type Database, migrate } from './schema.js';

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

  it('makes a new data directory (initdb in a child process) and migrates it', async () => {
    const pgdir = join(dir, 'db');
    const meta = await openPglite(pgdir);
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
    const err = await openPglite(join(dir, 'file', 'db')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).message).toMatch(/Could not create the database/);
  });
});
