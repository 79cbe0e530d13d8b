/**
 * Open the metadata database: PGlite in a directory (the embedded default) or a PostgreSQL
 * server by URL. Both give the same Kysely<Database>; the schema is migrated on open.
 */
import { Kysely, PostgresDialect } from 'kysely';
import { VdiskError } from '../../core/errors.js';
import { type Database, migrate } from './schema.js';

export interface MetaDb {
  db: Kysely<Database>;
  kind: 'pglite' | 'postgres';
  close(): Promise<void>;
}

export async function openPglite(dir: string | undefined): Promise<MetaDb> {
  const { PGlite } = await import('@electric-sql/pglite');
  const { PGliteDialect } = await import('./pglite-dialect.js');
  // PostgreSQL's default shared_buffers (128 MB) is memory the WebAssembly instance keeps
  // resident; the registry's tables are small and read through indexes: 16 MB takes ~100 MiB
  // off `vdisk serve`'s RSS (802 → 698 MiB for a PGlite with 20,000 rows, measured here).
  const startParams = [...PGlite.defaultStartParams, '-c', 'shared_buffers=16MB'];
  // No directory: in memory (tests of the database code only).
  const pg =
    dir === undefined ? await PGlite.create({ startParams }) : await PGlite.create(dir, { startParams });
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pg) });
  await migrate(db);
  return {
    db,
    kind: 'pglite',
    async close() {
      await db.destroy();
      await pg.close();
    },
  };
}

export async function openPostgres(url: string, onLost: (err: Error) => void = () => {}): Promise<MetaDb> {
  const pgmod = await import('pg');
  const pg = pgmod.default;
  // int8 (sizes) as numbers: image sizes stay far below 2^53.
  pg.types.setTypeParser(20, (v: string) => Number.parseInt(v, 10));
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  // An idle connection the server dropped (a restart, pg_terminate_backend, a network cut)
  // is an 'error' event on the pool: without a listener it would end the process. The pool
  // has already discarded the connection and opens a new one for the next query.
  pool.on('error', onLost);
  try {
    const c = await pool.connect();
    c.release();
  } catch (err) {
    await pool.end();
    throw new VdiskError('EIO', `Could not connect to the database: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  await migrate(db);
  return {
    db,
    kind: 'postgres',
    async close() {
      await db.destroy();
    },
  };
}
