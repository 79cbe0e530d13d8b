/**
 * Nodes and their leases: several `vdisk serve` nodes on one PostgreSQL and one blob store.
 *
 * Every node registers in the `nodes` table under its instance id (new at each start: the id
 * an image's `writer` names while the node writes it) with a lease, `expires_at`, that it
 * renews every third of the lease. All times are the database's (`now()`), so the nodes'
 * clocks do not matter. A node is live while its lease has not expired; what a node that is
 * not live was writing (an upload in `saving`, an import, a flatten, a copy to other stores)
 * is recovered by whichever live node claims it first: a conditional UPDATE moves the row's
 * `writer` to the claimer, which then removes the dead writer's temporary objects and puts
 * the image back as Glance would (recovery.ts). Nothing is recovered at another node's start.
 *
 * The node key (DATA_DIR/node-id, kept across restarts) names the data directory a node runs
 * on; the directory's lock (server.ts) proves that earlier instances on it are gone, so a node
 * restarted after a crash ends their leases at once instead of waiting for them to expire.
 *
 * A node that cannot renew its lease (the database unreachable) keeps serving what it can; if
 * its lease was taken away meanwhile, its uploads find their rows claimed when they finish and
 * drop their data (data.ts finishUpload: the conditional update on status fails), so a late
 * writer never overwrites a recovered image.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { type Kysely, sql } from 'kysely';
import type { Database } from './db/schema.js';

/** The ids of the live nodes, as a subquery. */
export const liveNodeIds = (db: Kysely<Database>) =>
  db.selectFrom('nodes').select('id').where(sql<boolean>`expires_at > now()`);

/** The data directory's node key, created on its first start. */
export async function nodeKey(dataDir: string): Promise<string> {
  const path = join(dataDir, 'node-id');
  const text = await readFile(path, 'utf8').catch(() => '');
  if (/^[0-9a-f]{16}$/.test(text.trim())) return text.trim();
  const key = randomBytes(8).toString('hex');
  await writeFile(path, `${key}\n`, { mode: 0o644 });
  return key;
}

export interface LeaseState {
  id: string;
  key: string;
  leaseSeconds: number;
  /** The last renewal succeeded and the lease has not been taken away. */
  held: boolean;
  renewals: number;
  failures: number;
}

export class NodeLease {
  private timer: NodeJS.Timeout | null = null;
  private url = '';
  private ticking: Promise<void> | null = null;
  readonly state: LeaseState;

  constructor(
    private readonly db: Kysely<Database>,
    id: string,
    key: string,
    leaseSeconds: number,
    private readonly log: (line: string) => void,
  ) {
    this.state = { id, key, leaseSeconds, held: false, renewals: 0, failures: 0 };
  }

  /** Register (ending the leases of this data directory's earlier instances). */
  async start(): Promise<void> {
    const ended = await this.db.deleteFrom('nodes').where('node', '=', this.state.key).executeTakeFirst();
    if (ended.numDeletedRows > 0n)
      this.log(`ended the lease of ${ended.numDeletedRows} earlier instance(s) of this node`);
    await this.insert();
    this.state.held = true;
  }

  private async insert(): Promise<void> {
    await this.db
      .insertInto('nodes')
      .values({
        id: this.state.id,
        node: this.state.key,
        host: hostname(),
        pid: process.pid,
        url: this.url,
        started_at: sql`now()`,
        heartbeat_at: sql`now()`,
        expires_at: sql`now() + make_interval(secs => ${this.state.leaseSeconds})`,
      })
      .execute();
  }

  /** Where the node answers (shown in the nodes table), once it listens. */
  async setUrl(url: string): Promise<void> {
    this.url = url;
    await this.db.updateTable('nodes').set({ url }).where('id', '=', this.state.id).execute();
  }

  /** Renew now; true when the lease is held. */
  async renew(): Promise<boolean> {
    try {
      const r = await this.db
        .updateTable('nodes')
        .set({
          heartbeat_at: sql`now()`,
          expires_at: sql`now() + make_interval(secs => ${this.state.leaseSeconds})`,
        })
        .where('id', '=', this.state.id)
        .where(sql<boolean>`expires_at > now()`)
        .executeTakeFirst();
      if (r.numUpdatedRows === 0n) {
        // Expired (the database was out of reach longer than the lease): other nodes may have
        // recovered this node's work already. Register again; what was taken stays taken.
        this.log('warning: this node lost its lease; registering again');
        await this.db.deleteFrom('nodes').where('id', '=', this.state.id).execute();
        await this.insert();
      }
      this.state.held = true;
      this.state.renewals++;
      return true;
    } catch (err) {
      this.state.held = false;
      this.state.failures++;
      this.log(`warning: could not renew this node's lease: ${(err as Error).message}`);
      return false;
    }
  }

  /** Renew, then run `work` (the reaper), every third of the lease; one tick at a time. */
  every(work: () => Promise<void>): void {
    const tick = async () => {
      if (await this.renew()) await work().catch((err) => this.log(`warning: recovery: ${String(err)}`));
    };
    this.timer = setInterval(
      () => {
        if (this.ticking !== null) return;
        this.ticking = tick().finally(() => {
          this.ticking = null;
        });
      },
      Math.max(100, (this.state.leaseSeconds * 1000) / 3),
    );
    this.timer.unref();
  }

  /** Stop renewing and end the lease (the node has drained: nothing of it needs recovery). */
  async release(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
    this.state.held = false;
    await this.db
      .deleteFrom('nodes')
      .where('id', '=', this.state.id)
      .execute()
      .catch(() => {});
  }
}
