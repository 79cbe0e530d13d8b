/** The benches' one Keystone call: a password login as admin, scoped to the admin project. */
export async function adminToken(url: string, password: string): Promise<string> {
  const r = await fetch(`${url}/v3/auth/tokens`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      auth: {
        identity: {
          methods: ['password'],
          password: { user: { name: 'admin', domain: { name: 'Default' }, password } },
        },
        scope: { project: { name: 'admin', domain: { name: 'Default' } } },
      },
    }),
  });
  const text = await r.text();
  if (r.status !== 201) throw new Error(`login to ${url}: ${r.status} ${text}`);
  return r.headers.get('x-subject-token')!;
}
