/**
 * A Kysely dialect over PGlite (PostgreSQL compiled to WASM, embedded). PGlite has one
 * connection, so the driver hands it out to one holder at a time (a mutex): a transaction
 * holds it from BEGIN to COMMIT and every other query waits, as on a one-connection pool.
 * The SQL compiler, adapter and introspector are Kysely's PostgreSQL ones: the same queries
 * run on PGlite and on a real PostgreSQL through `pg`.
 */
import type { PGlite } from '@electric-sql/pglite';
import {
  type CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  type Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  type QueryResult,
} from 'kysely';
import { Mutex } from '../../core/lock.js';

class PGliteConnection implements DatabaseConnection {
  constructor(private readonly pg: PGlite) {}

  async executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
    const r = await this.pg.query<R>(q.sql, q.parameters as unknown[]);
    const kind = q.query.kind;
    const mutates = kind === 'InsertQueryNode' || kind === 'UpdateQueryNode' || kind === 'DeleteQueryNode';
    return mutates ? { rows: r.rows, numAffectedRows: BigInt(r.affectedRows ?? 0) } : { rows: r.rows };
  }

  // biome-ignore lint/correctness/useYield: streaming is not used; Kysely requires the method.
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('PGlite dialect: streaming queries are not supported');
  }
}

class PGliteDriver implements Driver {
  private readonly mutex = new Mutex();
  private release: (() => void) | undefined;
  private readonly conn: PGliteConnection;

  constructor(private readonly pg: PGlite) {
    this.conn = new PGliteConnection(pg);
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    this.release = await this.mutex.lock();
    return this.conn;
  }

  async beginTransaction(c: DatabaseConnection): Promise<void> {
    await this.pg.exec('BEGIN');
    void c;
  }

  async commitTransaction(): Promise<void> {
    await this.pg.exec('COMMIT');
  }

  async rollbackTransaction(): Promise<void> {
    await this.pg.exec('ROLLBACK');
  }

  async releaseConnection(): Promise<void> {
    const r = this.release;
    this.release = undefined;
    r?.();
  }

  async destroy(): Promise<void> {}
}

export class PGliteDialect implements Dialect {
  constructor(private readonly pg: PGlite) {}
  createAdapter() {
    return new PostgresAdapter();
  }
  createDriver(): Driver {
    return new PGliteDriver(this.pg);
  }
  createQueryCompiler() {
    return new PostgresQueryCompiler();
  }
  // biome-ignore lint/suspicious/noExplicitAny: Kysely's introspector takes any database.
  createIntrospector(db: Kysely<any>) {
    return new PostgresIntrospector(db);
  }
}
