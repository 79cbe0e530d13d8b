/**
 * The admin password's start marker (admin-marker.ts) through real server starts on one data
 * directory: the stored scrypt hash is kept when the configured password is unchanged (no
 * re-hash), replaced when it changes or when the hash was changed through the API, and the
 * marker holds no plain password.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer } from '../server.js';
import { Api } from '../test/harness.js';
import { readAdminMarker } from './admin-marker.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vdisk-admin-marker-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Start, read the admin's stored hash, try logins, stop. */
async function start(password: string | undefined, logins: Record<string, boolean>) {
  const s = await startServer({
    port: 0,
    dataDir: dir,
    ...(password === undefined ? {} : { adminPassword: password }),
  });
  try {
    const row = await s.services.db
      .selectFrom('users')
      .select('password_hash')
      .where('name', '=', 'admin')
      .executeTakeFirstOrThrow();
    for (const [pw, ok] of Object.entries(logins)) {
      const r = Api.login(s.url, 'admin', pw, 'admin');
      if (ok) await r;
      else await expect(r).rejects.toThrow(/401/);
    }
    return { s, hash: row.password_hash! };
  } finally {
    await s.close();
  }
}

describe('the admin password on restart', () => {
  it('is hashed once while it stays the same, again when it changes or the stored hash did', async () => {
    const marker = join(dir, 'admin-password.mark');
    const first = await start('first-secret', { 'first-secret': true });
    const text = await readFile(marker, 'utf8');
    expect(text).not.toContain('first-secret');
    expect((await stat(marker)).mode & 0o777).toBe(0o600);
    expect(await readAdminMarker(dir, 'first-secret')).toBe(first.hash);
    expect(await readAdminMarker(dir, 'other')).toBeNull();

    // Same password: the row keeps its hash (a re-hash has a new salt) and the login works.
    const same = await start('first-secret', { 'first-secret': true });
    expect(same.hash).toBe(first.hash);

    // Another password: a new hash; the old password no longer logs in.
    const changed = await start('second-secret', { 'second-secret': true, 'first-secret': false });
    expect(changed.hash).not.toBe(first.hash);
    expect(await readAdminMarker(dir, 'second-secret')).toBe(changed.hash);

    // The hash changed behind the marker (the API, another node): the configured one wins again.
    {
      const s = await startServer({ port: 0, dataDir: dir, adminPassword: 'second-secret' });
      const a = await Api.login(s.url, 'admin', 'second-secret', 'admin');
      const me = (await a.req('GET', '/v3/users?name=admin')).json.users[0];
      expect((await a.req('PATCH', `/v3/users/${me.id}`, { user: { password: 'via-api' } })).status).toBe(
        200,
      );
      await s.close();
    }
    const back = await start('second-secret', { 'second-secret': true, 'via-api': false });
    expect(back.hash).not.toBe(changed.hash);

    // A damaged marker, or none: hashed again, and the marker is written anew.
    await writeFile(marker, '{"v":1,"key":"AA==","mac":"AA==","hash":"x"}');
    const damaged = await start('second-secret', { 'second-secret': true });
    expect(damaged.hash).not.toBe(back.hash);
    expect(await readAdminMarker(dir, 'second-secret')).toBe(damaged.hash);

    // No password configured: the stored one stays, and so does the marker.
    const none = await start(undefined, { 'second-secret': true });
    expect(none.hash).toBe(damaged.hash);
  });
});
