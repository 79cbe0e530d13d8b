/**
 * Download tickets (beyond Glance), for browsers: a link cannot carry `X-Auth-Token`, and a
 * download that goes through the page's memory cannot hold a 4 GiB image. The dashboard asks
 * `POST /v2/images/{id}/download-ticket` (with its token) for a URL it can navigate to; the
 * browser then streams `GET /v2/download/{ticket}` straight to disk.
 *
 * A ticket is `base64url(payload).base64url(HMAC-SHA256(secret, payload))`, the payload naming
 * the image, the export asked (or none: the original bytes), the caller's token by its stored id
 * (never the token itself) and an expiry 60 s ahead. Nothing is stored per ticket, so any node
 * sharing the database honours it: the secret lives in `vdisk_meta`, made on first use. On use,
 * the token must still be valid (a revoked token revokes its tickets) and every authorization
 * check of `/file` or `/export` runs again with the caller's identity.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { AuthContext, Services } from '../context.js';
import { HttpError } from '../http.js';

export const TICKET_TTL_S = 60;
const SECRET_KEY = 'download_ticket_secret';

export interface TicketPayload {
  /** Image id. */
  i: string;
  /** The export's query string ('' for the original bytes). */
  q: string;
  /** The caller's token, by its stored id. */
  t: string;
  /** Expiry, seconds since the epoch. */
  e: number;
}

const b64 = (b: Buffer) => b.toString('base64url');

export class Tickets {
  private secret: Buffer | null = null;

  constructor(private readonly svc: Services) {}

  private async key(): Promise<Buffer> {
    if (this.secret !== null) return this.secret;
    await this.svc.db
      .insertInto('vdisk_meta')
      .values({ key: SECRET_KEY, value: randomBytes(32).toString('hex') })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const row = await this.svc.db
      .selectFrom('vdisk_meta')
      .select('value')
      .where('key', '=', SECRET_KEY)
      .executeTakeFirstOrThrow();
    this.secret = Buffer.from(row.value, 'hex');
    return this.secret;
  }

  async issue(
    ctx: AuthContext,
    imageId: string,
    query: string,
  ): Promise<{ ticket: string; expiresAt: Date }> {
    const e = Math.floor(Date.now() / 1000) + TICKET_TTL_S;
    const payload = Buffer.from(
      JSON.stringify({ i: imageId, q: query, t: ctx.tokenId, e } satisfies TicketPayload),
    );
    const mac = createHmac('sha256', await this.key())
      .update(payload)
      .digest();
    return { ticket: `${b64(payload)}.${b64(mac)}`, expiresAt: new Date(e * 1000) };
  }

  /** The payload of a valid, unexpired ticket; 401 otherwise (one message: nothing to probe). */
  async open(ticket: string): Promise<TicketPayload> {
    const bad = () =>
      new HttpError(401, 'This download link is invalid or has expired: start the download again.');
    const [p, m] = ticket.split('.');
    if (p === undefined || m === undefined || p.length > 4096) throw bad();
    const payload = Buffer.from(p, 'base64url');
    const mac = Buffer.from(m, 'base64url');
    const want = createHmac('sha256', await this.key())
      .update(payload)
      .digest();
    if (mac.length !== want.length || !timingSafeEqual(mac, want)) throw bad();
    let t: TicketPayload;
    try {
      t = JSON.parse(payload.toString('utf8')) as TicketPayload;
    } catch {
      throw bad();
    }
    if (typeof t.e !== 'number' || t.e * 1000 < Date.now()) throw bad();
    return t;
  }
}
