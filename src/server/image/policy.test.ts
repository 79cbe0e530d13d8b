/**
 * The visibility rule twice, checked against itself: `canSee` (one image) and `visibleFilter`
 * (the SQL of lists) give the same answer on every combination of visibility, owner,
 * membership status and caller; and the named rules answer as Glance's defaults.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuthContext } from '../context.js';
import { startTestServer, type TestServer } from '../test/harness.js';
import { allowed, canSee, type ImageRow, RULES, visibleFilter } from './policy.js';

let ts: TestServer;
const VISIBILITIES = ['public', 'community', 'shared', 'private'];
const MEMBERSHIPS = [undefined, 'pending', 'accepted', 'rejected'] as const;
const ME = 'project-me';
const OTHER = 'project-other';

const ctxOf = (projectId: string | null, isAdmin = false): AuthContext => ({
  tokenId: '',
  userId: 'u',
  userName: 'u',
  projectId,
  projectName: null,
  roles: [],
  isAdmin,
  auditId: '',
  issuedAt: new Date(),
  expiresAt: new Date(),
});

interface Case {
  id: string;
  image: Pick<ImageRow, 'owner' | 'visibility'>;
  membership: (typeof MEMBERSHIPS)[number];
}
const cases: Case[] = [];

beforeAll(async () => {
  ts = await startTestServer();
  const db = ts.server.services.db;
  let n = 0;
  for (const visibility of VISIBILITIES)
    for (const owner of [ME, OTHER, null])
      for (const membership of MEMBERSHIPS) {
        const id = `00000000-0000-0000-0000-${String(++n).padStart(12, '0')}`;
        const now = new Date();
        await db
          .insertInto('images')
          .values({
            id,
            name: id,
            status: 'active',
            visibility,
            protected: false,
            os_hidden: false,
            owner,
            disk_format: null,
            container_format: null,
            size: null,
            virtual_size: null,
            checksum: null,
            os_hash_algo: null,
            os_hash_value: null,
            min_disk: 0,
            min_ram: 0,
            created_at: now,
            updated_at: now,
            properties: '{}' as never,
            tags: '[]' as never,
            blob: null,
            writer: null,
            stores: '[]' as never,
          })
          .execute();
        if (membership !== undefined)
          await db
            .insertInto('image_members')
            .values({ image_id: id, member: ME, status: membership, created_at: now, updated_at: now })
            .execute();
        cases.push({ id, image: { owner, visibility }, membership });
      }
});
afterAll(async () => {
  await ts?.stop();
});

describe('visibility: the predicate and the SQL filter agree', () => {
  for (const [label, ctx] of [
    ['a member of the owner project', ctxOf(ME)],
    ['an unscoped token', ctxOf(null)],
    ['an admin', ctxOf(OTHER, true)],
  ] as const) {
    for (const status of ['all', 'pending', 'accepted', 'rejected']) {
      it(`${label}, member_status=${status}`, async () => {
        const db = ts.server.services.db;
        const filter = visibleFilter(ctx, status);
        let q = db.selectFrom('images').select('id');
        if (filter !== null) q = q.where(filter);
        const sql = new Set((await q.execute()).map((r) => r.id));
        for (const c of cases) {
          const membership =
            ctx.projectId === ME && c.membership !== undefined ? { status: c.membership } : undefined;
          let want = canSee(ctx, c.image, membership);
          // member_status narrows what a shared image's membership must be (not the owner's view).
          const byMembership =
            !ctx.isAdmin && c.image.visibility === 'shared' && c.image.owner !== ctx.projectId;
          if (want && byMembership && status !== 'all') want = membership?.status === status;
          expect(sql.has(c.id), `${JSON.stringify(c)}`).toBe(want);
        }
      });
    }
  }
});

describe('named rules, as Glance 25 defaults', () => {
  it('owner or admin changes an image; only admins publicize, give away, copy, see tasks, the cache, store details and remove data from a store', () => {
    const image = { owner: ME, visibility: 'shared' };
    const owner = ctxOf(ME);
    const other = ctxOf(OTHER);
    const admin = ctxOf(OTHER, true);
    for (const rule of [
      'modify_image',
      'upload_image',
      'delete_image',
      'deactivate',
      'reactivate',
      'add_member',
      'delete_member',
      'get_members',
      'get_image_location',
    ] as const) {
      expect(
        [allowed(rule, owner, { image }), allowed(rule, other, { image }), allowed(rule, admin, { image })],
        rule,
      ).toEqual([true, false, true]);
    }
    for (const rule of [
      'publicize_image',
      'set_image_owner',
      'download_deactivated',
      'copy_image',
      'tasks_api_access',
      'manage_image_cache',
      'metadef_write',
      'delete_image_location',
      'stores_info_detail',
    ] as const) {
      expect([allowed(rule, owner, { image }), allowed(rule, admin, { image })], rule).toEqual([false, true]);
    }
    expect(allowed('modify_member', owner, { member: OTHER })).toBe(false);
    expect(allowed('modify_member', other, { member: OTHER })).toBe(true);
    expect(allowed('modify_member', admin, { member: ME })).toBe(true);
    expect(Object.keys(RULES).length).toBe(19);
  });
});
