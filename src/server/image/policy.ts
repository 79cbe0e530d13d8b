/**
 * Who may see and do what: Glance 25's default policies (glance/policies/*.py, as
 * glance/api/v2/policy.py enforces them) as one table of named rules, and the visibility rule
 * twice — as a predicate on one image (`canSee`) and as the SQL filter of image lists
 * (`visibleFilter`) — side by side, with a test that both agree on every owner, membership and
 * visibility case (policy.test.ts).
 *
 * A caller with the `admin` role is an admin (Keystone's and Glance's `role:admin`). Writes to
 * an image are its owner's (Glance's `project_id:%(owner)s`) or an admin's; what only admins
 * may do is named here once.
 */
import type { Expression, ExpressionBuilder, Selectable, SqlBool } from 'kysely';
import type { AuthContext } from '../context.js';
import type { Database, ImageTable, MemberTable } from '../db/schema.js';
import { HttpError } from '../http.js';

export type ImageRow = Selectable<ImageTable>;
export type MemberRow = Selectable<MemberTable>;

export const isOwner = (ctx: AuthContext, img: Pick<ImageRow, 'owner'>): boolean =>
  ctx.projectId !== null && img.owner === ctx.projectId;

/**
 * Can the caller see this image at all? Members see a shared image whatever their status
 * (pending and rejected too: Glance's is_image_visible looks for any membership).
 */
export function canSee(
  ctx: AuthContext,
  img: Pick<ImageRow, 'owner' | 'visibility'>,
  membership: Pick<MemberRow, 'status'> | undefined,
): boolean {
  if (ctx.isAdmin) return true;
  if (img.visibility === 'public' || img.visibility === 'community') return true;
  if (isOwner(ctx, img)) return true;
  if (img.visibility === 'shared') return membership !== undefined;
  return false;
}

/**
 * `canSee` as SQL, for lists (Glance's _select_images_query): the same rule, with lists'
 * member_status narrowing (`all`: any membership, as canSee; else only that status).
 */
export function visibleFilter(
  ctx: AuthContext,
  memberStatus: string,
): ((eb: ExpressionBuilder<Database, 'images'>) => Expression<SqlBool>) | null {
  if (ctx.isAdmin) return null;
  const project = ctx.projectId;
  return (eb) => {
    const ors: Expression<SqlBool>[] = [eb('visibility', 'in', ['public', 'community'])];
    if (project !== null) {
      ors.push(eb('owner', '=', project));
      ors.push(
        eb.and([
          eb('visibility', '=', 'shared'),
          eb.exists(
            eb
              .selectFrom('image_members')
              .select('image_members.image_id')
              .whereRef('image_members.image_id', '=', 'images.id')
              .where('image_members.member', '=', project)
              .$if(memberStatus !== 'all', (qb) => qb.where('image_members.status', '=', memberStatus)),
          ),
        ]),
      );
    }
    return eb.or(ors);
  };
}

/** What a rule looks at: the image (when there is one) and the caller's membership of it. */
export interface Target {
  image?: Pick<ImageRow, 'owner' | 'visibility'>;
  /** The project a membership belongs to (member status changes). */
  member?: string;
}

/**
 * Glance 25's defaults (glance/policies/image.py, image_member.py, tasks.py, cache.py,
 * discovery.py, metadef.py), one line each. `owner_or_admin` is Glance's
 * `role:admin or (role:member and project_id:%(owner)s)`.
 */
const admin = (ctx: AuthContext) => ctx.isAdmin;
const ownerOrAdmin = (ctx: AuthContext, t: Target) =>
  ctx.isAdmin || (t.image !== undefined && isOwner(ctx, t.image));

export const RULES = {
  /** Changing an image, its tags and its data. */
  modify_image: ownerOrAdmin,
  upload_image: ownerOrAdmin,
  delete_image: ownerOrAdmin,
  deactivate: ownerOrAdmin,
  reactivate: ownerOrAdmin,
  /** Making an image public. */
  publicize_image: admin,
  /** Creating an image for another project, or giving one away. */
  set_image_owner: admin,
  /** Downloading a deactivated image. */
  download_deactivated: admin,
  add_member: ownerOrAdmin,
  delete_member: ownerOrAdmin,
  /** A membership's status: the member itself, or an admin. */
  modify_member: (ctx: AuthContext, t: Target) =>
    ctx.isAdmin || (t.member !== undefined && t.member === ctx.projectId),
  /** Every member of an image (others see only their own membership). */
  get_members: ownerOrAdmin,
  copy_image: admin,
  /** Where an image's data is (Glance: admin or a reader of the owner's project). */
  get_image_location: ownerOrAdmin,
  /** Removing an image's data from one store (DELETE /v2/stores/{store}/{image}). */
  delete_image_location: admin,
  /** Each store's type and properties (GET /v2/info/stores/detail). */
  stores_info_detail: admin,
  tasks_api_access: admin,
  manage_image_cache: admin,
  /** Metadata definitions: writes are admin-only by default (Glance's metadef_admin). */
  metadef_write: admin,
} satisfies Record<string, (ctx: AuthContext, t: Target) => boolean>;

export type Rule = keyof typeof RULES;

export function allowed(rule: Rule, ctx: AuthContext, target: Target = {}): boolean {
  return RULES[rule](ctx, target);
}

/** 403 with `message` (Glance's words at that call site) unless the rule allows it. */
export function enforce(rule: Rule, ctx: AuthContext, target: Target, message?: string): void {
  if (!allowed(rule, ctx, target))
    throw new HttpError(403, message ?? `You are not authorized to complete ${rule} action.`);
}

/** Owner or admin: everything that changes an image or its data (RULES.modify_image). */
export const canModify = (ctx: AuthContext, img: Pick<ImageRow, 'owner'>): boolean =>
  allowed('modify_image', ctx, { image: { owner: img.owner, visibility: '' } });
