/**
 * The certificate authorities of NODE_EXTRA_CA_CERTS, read when vdisk first makes a TLS
 * connection rather than at every start.
 *
 * Node reads and parses that file while it starts, before any of our code runs, whether or not
 * the process ever connects anywhere: with Debian's bundle (/etc/ssl/certs/ca-certificates.crt,
 * ~140 certificates) that is ~55 ms on this machine, more than the rest of Node's start-up
 * (`node -e 0` 78 ms with it, 24 ms without; docs/benchmarks.md). So bin/vdisk starts node
 * without the variable and hands its value over as VDISK_EXTRA_CA_CERTS, and every TLS client
 * vdisk makes (https sources, S3, the `vdisk image` commands) takes its `ca` from here:
 * Node's own roots and the extra ones, as Node would have trusted them (`ca` replaces the
 * default list, so both go in). Run without bin/vdisk, Node has read the file itself and this
 * adds nothing.
 */
import { readFileSync } from 'node:fs';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';

/** `{ ca }` for an https agent or request: Node's roots plus the extra file's; `{}` without one. */
export function tlsCa(env: NodeJS.ProcessEnv = process.env): { ca?: string[] } {
  const file = env['VDISK_EXTRA_CA_CERTS'];
  if (file === undefined || file === '') return {};
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    // Node's words when it cannot load the file at start-up; it goes on without it.
    process.emitWarning(`Ignoring extra certs from \`${file}\`, load failed: ${(err as Error).message}`);
    return {};
  }
  const extra = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return { ca: [...rootCertificates, ...extra] };
}

/**
 * For the AWS SDK's requestHandler options: an https agent trusting tlsCa()'s list (keep-alive
 * and 50 sockets, the SDK's own defaults), or nothing when there are no extra certificates.
 */
export function tlsAgentOption(env: NodeJS.ProcessEnv = process.env): { httpsAgent?: HttpsAgent } {
  const o = tlsCa(env);
  return o.ca === undefined
    ? {}
    : { httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: 50, ca: o.ca }) };
}
