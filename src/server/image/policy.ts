/**
 * Who may see and do what, as Glance 25 decides with its default policies and domain proxies:
 * visibility (glance/db/sqlalchemy/api.py is_image_visible and _select_images_query), the
 * owner-only mutations (ImmutableImageProxy), admin-only publicize, and the member rules
 * (only the owner adds or removes members, only the member changes its status).
 */
import type { Selectable } from 'kysely';
import type { AuthContext } from '../context.js';
import type { ImageTable, MemberTable } from '../db/schema.js';

export type ImageRow = Selectable<ImageTable>;
export type MemberRow = Selectable<MemberTable>;

export const isOwner = (ctx: AuthContext, img: ImageRow): boolean =>
  ctx.projectId !== null && img.owner === ctx.projectId;

/**
 * Can the caller see this image at all? Members see a shared image whatever their status
 * (pending and rejected too: Glance's is_image_visible looks for any membership).
 */
export function canSee(ctx: AuthContext, img: ImageRow, membership: MemberRow | undefined): boolean {
  if (ctx.isAdmin) return true;
  if (img.visibility === 'public' || img.visibility === 'community') return true;
  if (isOwner(ctx, img)) return true;
  if (img.visibility === 'shared') return membership !== undefined;
  return false;
}

/** Owner or admin: everything that changes an image or its data. */
export const canModify = (ctx: AuthContext, img: ImageRow): boolean => ctx.isAdmin || isOwner(ctx, img);
