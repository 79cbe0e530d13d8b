import { VdiskError } from '../../core/errors.js';
import { getopt } from '../getopt.js';
import type { CliCommand } from '../main.js';

const command: CliCommand = {
  syntax:
    'serve [--host HOST] [--port PORT] [--data-dir DIR] [--database-url URL] [--store URL] [--admin-password PW]',
  help: [
    'Run the image registry: an OpenStack Image API v2 (Glance) service with an embedded',
    'Keystone v3 subset, so that `openstack image …` and `glance …` work against it.',
    '  --host HOST          address to listen on (default 127.0.0.1)',
    '  --port PORT          port (default 9292)',
    '  --data-dir DIR       where the embedded database, image data and lock live (default ./vdisk-data)',
    '  --database-url URL   postgres://… to keep metadata in PostgreSQL instead of PGlite',
    '  --store URL          a directory, or s3://ACCESS:SECRET@host:port/bucket[/prefix] (s3+https:// for TLS;',
    '                       without ACCESS:SECRET@, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) for image data',
    '                       instead of DIR/images',
    '  --admin-password PW  password of user admin (also VDISK_ADMIN_PASSWORD); generated when absent',
    '  --image-size-cap N   largest image in bytes (default 1 TiB)',
    '  --public-url URL     base URL announced in the service catalog',
    '  --import-allowed-hosts H,…     web-download: only these hosts (they may be internal addresses)',
    '  --import-disallowed-hosts H,…  web-download: never these hosts (when no allowed list)',
    '  --import-allowed-schemes S,…   web-download schemes (default http,https)',
    '  --import-disallowed-schemes S,…',
    '  --import-allowed-ports P,…     web-download ports named in URLs (default 80,443; empty: any)',
    '  --import-disallowed-ports P,…',
    '  --import-convert-to raw|qcow2  convert imported images (glance-direct, web-download)',
  ].join('\n'),
  async run(argv, io) {
    const { opts, args } = getopt(argv, {
      short: 'h',
      long: {
        host: { value: true },
        port: { value: true },
        'data-dir': { value: true },
        'database-url': { value: true },
        store: { value: true },
        'admin-password': { value: true },
        'image-size-cap': { value: true },
        'user-storage-quota': { value: true },
        'public-url': { value: true },
        'import-allowed-hosts': { value: true },
        'import-disallowed-hosts': { value: true },
        'import-allowed-schemes': { value: true },
        'import-disallowed-schemes': { value: true },
        'import-allowed-ports': { value: true },
        'import-disallowed-ports': { value: true },
        'import-convert-to': { value: true },
        help: { value: false, short: 'h' },
      },
    });
    if (args.length > 0) throw new VdiskError('INVALID_ARGUMENT', `Unexpected argument: ${args[0]}`);
    const o = Object.fromEntries(opts);
    const port = Number(o['port'] ?? '9292');
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new VdiskError('INVALID_ARGUMENT', `Invalid port: ${o['port']}`);
    const num = (name: string): number | undefined => {
      const v = o[name];
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isSafeInteger(n))
        throw new VdiskError('INVALID_ARGUMENT', `Invalid value for --${name}: ${v}`);
      return n;
    };
    const settings: Record<string, unknown> = {};
    const cap = num('image-size-cap');
    if (cap !== undefined) settings['imageSizeCap'] = cap;
    const quota = num('user-storage-quota');
    if (quota !== undefined) settings['userStorageQuota'] = quota;
    if (o['public-url'] !== undefined) settings['publicUrl'] = o['public-url'];
    const list = (name: string) =>
      o[name] === undefined
        ? undefined
        : o[name]
            .split(',')
            .map((h) => h.trim())
            .filter((h) => h !== '');
    const ports = (name: string) =>
      list(name)?.map((p) => {
        const n = Number(p);
        if (!Number.isInteger(n) || n < 1 || n > 65535)
          throw new VdiskError('INVALID_ARGUMENT', `Invalid value for --${name}: ${p}`);
        return n;
      });
    for (const [opt, key, parse] of [
      ['import-allowed-hosts', 'importAllowedHosts', list],
      ['import-disallowed-hosts', 'importDisallowedHosts', list],
      ['import-allowed-schemes', 'importAllowedSchemes', list],
      ['import-disallowed-schemes', 'importDisallowedSchemes', list],
      ['import-allowed-ports', 'importAllowedPorts', ports],
      ['import-disallowed-ports', 'importDisallowedPorts', ports],
    ] as const) {
      const v = parse(opt);
      if (v !== undefined) settings[key] = v;
    }
    const convertTo = o['import-convert-to'];
    if (convertTo !== undefined) {
      if (convertTo !== 'raw' && convertTo !== 'qcow2')
        throw new VdiskError('INVALID_ARGUMENT', `Invalid value for --import-convert-to: ${convertTo}`);
      settings['importConvertTo'] = convertTo;
    }
    const { startServer } = await import('../../server/server.js');
    const dataDir = o['data-dir'] ?? 'vdisk-data';
    const server = await startServer({
      host: o['host'] ?? '127.0.0.1',
      port,
      dataDir,
      ...(o['database-url'] !== undefined ? { databaseUrl: o['database-url'] } : {}),
      ...(o['store'] !== undefined ? { store: o['store'] } : {}),
      ...((o['admin-password'] ?? process.env['VDISK_ADMIN_PASSWORD']) !== undefined
        ? { adminPassword: (o['admin-password'] ?? process.env['VDISK_ADMIN_PASSWORD'])! }
        : {}),
      settings,
      log: (line) => io.err(`vdisk serve: ${line}\n`),
    });
    if (server.generatedPassword !== null)
      io.err(`vdisk serve: created user admin in project admin with password: ${server.generatedPassword}\n`);
    io.err(`vdisk serve: listening on ${server.url} (identity: ${server.url}/v3, data: ${dataDir})\n`);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGTERM', stop);
        process.off('SIGINT', stop);
        io.err('vdisk serve: shutting down\n');
        server.close().then(resolve, resolve);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    return 0;
  },
};

export default command;
