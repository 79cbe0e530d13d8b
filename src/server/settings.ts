/**
 * Every setting of `vdisk serve` in one table: its command-line flag, its environment
 * variable, its config-file key (Glance's name and section where Glance has the setting, so an
 * operator's glance-api.conf knowledge carries over), its default and its help. The table
 * drives the parsing of all three sources, `vdisk serve --help` and the defaults; precedence:
 * flag, then environment, then `--config FILE`, then the default.
 *
 * The config file is INI as glance-api.conf is (`[section]` headers, `key = value`, `#` and `;`
 * comments). Keys are looked up by name: the section is documentation (a key given in another
 * section is still read); keys this table does not know are reported in one line each and
 * ignored, so a copy of a Glance configuration works.
 */
import { readFile } from 'node:fs/promises';
import { VdiskError } from '../core/errors.js';
import { parseSize } from '../core/size.js';
import { defaultSettings, type ServerSettings } from './context.js';
import { CONTAINER_FORMATS, DISK_FORMATS } from './image/schemas.js';
import { parseStoreConfig, type StoreSpec } from './store/stores.js';

/** What `vdisk serve` needs to start: where it listens and keeps its data, and its settings. */
export interface ServeConfig {
  host: string;
  port: number;
  dataDir: string;
  databaseUrl: string | undefined;
  /** Single-store mode: the store (undefined: DIR/images). */
  store: string | undefined;
  /** Multi-store mode (`--store NAME=…` values): the stores and the default. */
  stores: { stores: StoreSpec[]; defaultId: string } | undefined;
  adminPassword: string | undefined;
  /** `text`: messages as lines; `json`: one JSON object per message and per request. */
  logFormat: 'text' | 'json';
  settings: ServerSettings;
}

/**
 * `multi`: a repeatable setting: the flag may be given several times, the config-file key on
 * several lines, the environment variable holds values separated by commas.
 */
type Kind = 'string' | 'port' | 'int' | 'size' | 'bool' | 'list' | 'ports' | 'choice' | 'multi';

interface Spec {
  /** Where the value goes: a ServeConfig field, or `settings.<ServerSettings field>`. */
  target: string;
  /** The long flag, without `--`. Booleans also take `--no-<flag>`. */
  flag: string;
  /** The config-file key and its section (Glance's, where Glance has the setting). */
  key: string;
  section: string;
  kind: Kind;
  /** For `choice`: the allowed values ('' allowed means "none"). */
  choices?: readonly string[];
  /** How help shows the value. */
  metavar?: string;
  help: string;
  /** Shown in help when the default is not plain. */
  defaultText?: string;
  /** Kept out of help lines that print values (passwords). */
  secret?: boolean;
  /** A string setting whose empty value means "none" (null). */
  nullable?: boolean;
}

const S = (f: keyof ServerSettings) => `settings.${f}`;

export const SETTINGS: readonly Spec[] = [
  {
    target: 'host',
    flag: 'host',
    key: 'bind_host',
    section: 'DEFAULT',
    kind: 'string',
    metavar: 'HOST',
    help: 'address to listen on',
    defaultText: '127.0.0.1',
  },
  {
    target: 'port',
    flag: 'port',
    key: 'bind_port',
    section: 'DEFAULT',
    kind: 'port',
    metavar: 'PORT',
    help: 'port (0: any free port)',
    defaultText: '9292',
  },
  {
    target: 'logFormat',
    flag: 'log-format',
    key: 'log_format',
    section: 'vdisk',
    kind: 'choice',
    choices: ['text', 'json'],
    metavar: 'text|json',
    help: 'json: one JSON object per line for each message and each request (time, node, request id as clients see it in x-openstack-request-id, route, status, duration, bytes), for log collectors',
    defaultText: 'text',
  },
  {
    target: 'dataDir',
    flag: 'data-dir',
    key: 'data_dir',
    section: 'vdisk',
    kind: 'string',
    metavar: 'DIR',
    help: 'where the embedded database, image data, temporary files and lock live',
    defaultText: './vdisk-data',
  },
  {
    target: 'databaseUrl',
    flag: 'database-url',
    key: 'connection',
    section: 'database',
    kind: 'string',
    metavar: 'URL',
    help: 'postgres://… to keep metadata in PostgreSQL instead of PGlite in DIR/db',
  },
  {
    target: 'store',
    flag: 'store',
    key: 'store',
    section: 'vdisk',
    kind: 'multi',
    metavar: '[NAME=]URL',
    help: "image data in a directory, or s3://ACCESS:SECRET@host:port/bucket[/prefix] (s3+https:// for TLS; without ACCESS:SECRET@, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); repeated as NAME=DIR|s3://…: several named stores (Glance's enabled_backends: /v2/info/stores, import to stores, copy-image)",
    defaultText: 'DIR/images',
  },
  {
    target: 'defaultStore',
    flag: 'default-store',
    key: 'default_backend',
    section: 'glance_store',
    kind: 'string',
    metavar: 'NAME',
    help: 'with named stores: where uploads, imports without stores, and staged data go',
    defaultText: 'the first named store',
  },
  {
    target: 'storeDescriptions',
    flag: 'store-description',
    key: 'store_description',
    section: 'vdisk',
    kind: 'multi',
    metavar: 'NAME=TEXT',
    help: 'with named stores: the description /v2/info/stores gives a store (repeated, one per store)',
    defaultText: 'none',
  },
  {
    target: 'adminPassword',
    flag: 'admin-password',
    key: 'admin_password',
    section: 'vdisk',
    kind: 'string',
    metavar: 'PW',
    help: 'password of user admin; generated and printed once when absent',
    secret: true,
  },
  {
    target: S('publicUrl'),
    flag: 'public-url',
    key: 'public_endpoint',
    section: 'DEFAULT',
    kind: 'string',
    metavar: 'URL',
    help: "base URL announced in the service catalog (default: the request's Host)",
  },
  {
    target: S('imageSizeCap'),
    flag: 'image-size-cap',
    key: 'image_size_cap',
    section: 'DEFAULT',
    kind: 'size',
    metavar: 'N',
    help: 'largest image accepted, bytes (413 beyond)',
    defaultText: '1 TiB',
  },
  {
    target: S('userStorageQuota'),
    flag: 'user-storage-quota',
    key: 'user_storage_quota',
    section: 'DEFAULT',
    kind: 'size',
    metavar: 'N',
    help: 'bytes of image data one project may hold (0 or less: unlimited)',
    defaultText: 'unlimited',
  },
  {
    target: S('imageMemberQuota'),
    flag: 'image-member-quota',
    key: 'image_member_quota',
    section: 'DEFAULT',
    kind: 'int',
    metavar: 'N',
    help: 'members per image',
  },
  {
    target: S('imageTagQuota'),
    flag: 'image-tag-quota',
    key: 'image_tag_quota',
    section: 'DEFAULT',
    kind: 'int',
    metavar: 'N',
    help: 'tags per image',
  },
  {
    target: S('imagePropertyQuota'),
    flag: 'image-property-quota',
    key: 'image_property_quota',
    section: 'DEFAULT',
    kind: 'int',
    metavar: 'N',
    help: 'properties per image',
  },
  {
    target: S('requireImageFormatMatch'),
    flag: 'require-format-match',
    key: 'require_image_format_match',
    section: 'image_format',
    kind: 'bool',
    help: 'an upload must be in the format its disk_format names (415 otherwise); hostile images are refused either way. Glance 25 does not check; older test suites and clients that upload arbitrary bytes as qcow2 need --no-require-format-match',
  },
  {
    target: S('diskFormats'),
    flag: 'disk-formats',
    key: 'disk_formats',
    section: 'image_format',
    kind: 'list',
    metavar: 'F,…',
    help: 'the disk_format values images may have',
  },
  {
    target: S('containerFormats'),
    flag: 'container-formats',
    key: 'container_formats',
    section: 'image_format',
    kind: 'list',
    metavar: 'F,…',
    help: 'the container_format values images may have',
  },
  {
    target: S('importMethods'),
    flag: 'import-methods',
    key: 'enabled_import_methods',
    section: 'DEFAULT',
    kind: 'list',
    metavar: 'M,…',
    help: 'the interoperable import methods offered (glance-direct, web-download, copy-image; empty: none)',
  },
  {
    target: S('importAllowedHosts'),
    flag: 'import-allowed-hosts',
    key: 'allowed_hosts',
    section: 'import_filtering_opts',
    kind: 'list',
    metavar: 'H,…',
    help: 'web-download only from these hosts (they may then be internal addresses)',
  },
  {
    target: S('importDisallowedHosts'),
    flag: 'import-disallowed-hosts',
    key: 'disallowed_hosts',
    section: 'import_filtering_opts',
    kind: 'list',
    metavar: 'H,…',
    help: 'web-download never from these hosts (ignored with an allowed list)',
  },
  {
    target: S('importAllowedSchemes'),
    flag: 'import-allowed-schemes',
    key: 'allowed_schemes',
    section: 'import_filtering_opts',
    kind: 'list',
    metavar: 'S,…',
    help: 'web-download schemes',
  },
  {
    target: S('importDisallowedSchemes'),
    flag: 'import-disallowed-schemes',
    key: 'disallowed_schemes',
    section: 'import_filtering_opts',
    kind: 'list',
    metavar: 'S,…',
    help: '(ignored with an allowed list)',
  },
  {
    target: S('importAllowedPorts'),
    flag: 'import-allowed-ports',
    key: 'allowed_ports',
    section: 'import_filtering_opts',
    kind: 'ports',
    metavar: 'P,…',
    help: 'ports a web-download URL may name (empty: any)',
  },
  {
    target: S('importDisallowedPorts'),
    flag: 'import-disallowed-ports',
    key: 'disallowed_ports',
    section: 'import_filtering_opts',
    kind: 'ports',
    metavar: 'P,…',
    help: '(ignored with an allowed list)',
  },
  {
    target: S('importConvertTo'),
    flag: 'import-convert-to',
    key: 'output_format',
    section: 'image_conversion',
    kind: 'choice',
    choices: ['raw', 'qcow2', ''],
    metavar: 'raw|qcow2',
    help: "convert imported images with the engine (Glance's image_conversion plugin)",
    defaultText: 'none',
  },
  {
    target: S('imageCacheDir'),
    flag: 'image-cache-dir',
    key: 'image_cache_dir',
    section: 'DEFAULT',
    kind: 'string',
    nullable: true,
    metavar: 'DIR',
    help: 'cache whole images on this node: downloads served locally, the /v2/cache API',
    defaultText: 'no cache',
  },
  {
    target: S('imageCacheMaxSize'),
    flag: 'image-cache-max-size',
    key: 'image_cache_max_size',
    section: 'DEFAULT',
    kind: 'size',
    metavar: 'N',
    help: 'bytes the image cache holds at most (least recently used images go first)',
    defaultText: '10 GiB',
  },
  {
    target: S('metadefsDir'),
    flag: 'metadefs-dir',
    key: 'metadata_source_path',
    section: 'DEFAULT',
    kind: 'string',
    nullable: true,
    metavar: 'DIR',
    help: 'metadata definition files loaded into an empty database on start, as glance-manage db_load_metadefs does (empty: none)',
    defaultText: '/etc/glance/metadefs, else /usr/share/glance-common/metadefs, when present',
  },
  {
    target: S('maxChainDepth'),
    flag: 'max-chain-depth',
    key: 'max_chain_depth',
    section: 'vdisk',
    kind: 'int',
    metavar: 'N',
    help: 'masters below an overlay at most (backing_image_id chains)',
  },
  {
    target: S('nodeLeaseSeconds'),
    flag: 'node-lease',
    key: 'node_lease_seconds',
    section: 'vdisk',
    kind: 'int',
    metavar: 'SECONDS',
    help: "a node's lease on what it writes; renewed every third of it (several nodes: see docs/registry.md)",
  },
  {
    target: S('s3TimeoutSeconds'),
    flag: 's3-timeout',
    key: 's3_store_timeout',
    section: 'vdisk',
    kind: 'int',
    metavar: 'SECONDS',
    help: 'an S3 store request fails after this long without a byte sent or received (each of its three attempts)',
  },
];

/** `--flag` → VDISK_FLAG (dashes as underscores). */
export const envName = (s: Spec): string => `VDISK_${s.flag.toUpperCase().replaceAll('-', '_')}`;

function defaultsOf(): Record<string, unknown> {
  const d = defaultSettings();
  return {
    host: '127.0.0.1',
    port: 9292,
    dataDir: 'vdisk-data',
    logFormat: 'text',
    databaseUrl: undefined,
    store: [],
    defaultStore: undefined,
    storeDescriptions: [],
    adminPassword: undefined,
    ...Object.fromEntries(Object.entries(d).map(([k, v]) => [`settings.${k}`, v])),
  };
}

function shown(v: unknown): string {
  if (v === undefined || v === null) return 'none';
  if (Array.isArray(v)) return v.length === 0 ? '(empty)' : v.join(',');
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return String(v);
}

/** `vdisk serve --help`'s option lines, from the table. */
export function settingsHelp(): string[] {
  const d = defaultsOf();
  const lines: string[] = [];
  for (const s of SETTINGS) {
    const flag = s.kind === 'bool' ? `--[no-]${s.flag}` : `--${s.flag} ${s.metavar ?? 'V'}`;
    const def = s.secret ? '' : ` (default ${s.defaultText ?? shown(d[s.target])})`;
    lines.push(`  ${flag}`);
    lines.push(`      ${s.help}${def}; ${envName(s)}; [${s.section}] ${s.key}`);
  }
  lines.push('  --config FILE');
  lines.push('      read the keys above from an INI file (as glance-api.conf); flags and environment win');
  return lines;
}

function parseValue(s: Spec, raw: string, where: string): unknown {
  const bad = (why = '') =>
    new VdiskError(
      'INVALID_ARGUMENT',
      `Invalid value for ${where}: '${raw}'${why === '' ? '' : ` (${why})`}`,
    );
  const v = raw.trim();
  const list = () =>
    v
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
  switch (s.kind) {
    case 'string':
      return v === '' && s.nullable === true ? null : v;
    case 'port': {
      const n = Number(v);
      if (!/^\d+$/.test(v) || n > 65535) throw bad('a port number');
      return n;
    }
    case 'int': {
      if (!/^-?\d+$/.test(v)) throw bad('an integer');
      return Number(v);
    }
    case 'size': {
      if (/^-\d+$/.test(v)) return Number(v);
      const n = parseSize(v);
      if (n === null) throw bad('a size: bytes, or with K, M, G, T');
      return n;
    }
    case 'bool': {
      const l = v.toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(l)) return true;
      if (['0', 'false', 'no', 'off'].includes(l)) return false;
      throw bad('true or false');
    }
    case 'list':
      return list();
    case 'ports':
      return list().map((p) => {
        const n = Number(p);
        if (!/^\d+$/.test(p) || n < 1 || n > 65535) throw bad(`'${p}' is not a port`);
        return n;
      });
    case 'choice':
      if (!s.choices!.includes(v)) throw bad(`one of ${s.choices!.filter((c) => c !== '').join(', ')}`);
      return v === '' ? null : v;
    case 'multi':
      if (v === '') throw bad('empty');
      return [v];
  }
}

/**
 * A repeatable setting's environment variable: values separated by commas (`NAME=…,NAME=…`);
 * a value that does not start with `NAME=` is one value (a single store's directory or URL).
 */
function splitMulti(raw: string): string[] {
  if (!/^\s*[A-Za-z][A-Za-z0-9_-]*=/.test(raw)) return raw.trim() === '' ? [] : [raw.trim()];
  return raw
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== '');
}

/** An INI file's keys (sections ignored for lookup, kept for messages). */
export function parseIni(
  text: string,
  file: string,
): Map<string, { value: string; line: number; section: string; all: string[] }> {
  const out = new Map<string, { value: string; line: number; section: string; all: string[] }>();
  let section = 'DEFAULT';
  for (const [i, rawLine] of text.split(/\r?\n/).entries()) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[([^\]]+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!.trim();
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0)
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `${file}:${i + 1}: expected 'key = value' or '[section]', got '${line}'`,
      );
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    // A repeated key keeps every value (repeatable settings), the last one for the others.
    const all = [...(out.get(key)?.all ?? []), value];
    out.set(key, { value, line: i + 1, section, all });
  }
  return out;
}

/**
 * The configuration of `vdisk serve` from its flags (already split by getopt: long name →
 * value, `no-x` for negated booleans), the environment and `--config FILE`. `warn` receives one
 * line per config-file key that is not ours.
 */
export async function resolveConfig(
  flags: ReadonlyMap<string, string | readonly string[]>,
  env: Readonly<Record<string, string | undefined>>,
  warn: (line: string) => void,
): Promise<ServeConfig> {
  const values = defaultsOf();
  const cf = flags.get('config');
  const configFile = (typeof cf === 'string' ? cf : cf?.[cf.length - 1]) ?? env['VDISK_CONFIG'];
  if (configFile !== undefined) {
    let text: string;
    try {
      text = await readFile(configFile, 'utf8');
    } catch (err) {
      throw new VdiskError(
        'ENOENT',
        `Could not read the configuration file '${configFile}': ${(err as Error).message}`,
      );
    }
    const keys = parseIni(text, configFile);
    const known = new Map(SETTINGS.map((s) => [s.key, s]));
    for (const [k, { value, line, all }] of keys) {
      const s = known.get(k);
      if (s === undefined) {
        warn(`${configFile}:${line}: '${k}' is not a vdisk serve setting; ignored`);
        continue;
      }
      values[s.target] =
        s.kind === 'multi'
          ? all.flatMap((v) => parseValue(s, v, `${k} in ${configFile}`) as string[])
          : parseValue(s, value, `${k} in ${configFile}:${line}`);
    }
  }
  for (const s of SETTINGS) {
    const e = env[envName(s)];
    if (e === undefined) continue;
    values[s.target] = s.kind === 'multi' ? splitMulti(e) : parseValue(s, e, envName(s));
  }
  // The historical name of the admin password's variable.
  if (env['VDISK_ADMIN_PASSWORD'] !== undefined) values['adminPassword'] = env['VDISK_ADMIN_PASSWORD'];
  for (const s of SETTINGS) {
    const given = flags.get(s.flag);
    if (given !== undefined) {
      const list = typeof given === 'string' ? [given] : [...given];
      const f = list[list.length - 1]!;
      values[s.target] =
        s.kind === 'multi'
          ? list.flatMap((v) => parseValue(s, v, `--${s.flag}`) as string[])
          : s.kind === 'bool'
            ? true
            : parseValue(s, f, `--${s.flag}`);
    }
    if (s.kind === 'bool' && flags.has(`no-${s.flag}`)) values[s.target] = false;
  }
  const settings: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) if (k.startsWith('settings.')) settings[k.slice(9)] = v;
  const st = settings as unknown as ServerSettings;
  if (st.userStorageQuota <= 0) st.userStorageQuota = -1;
  checkFormats(st);
  const stores = parseStoreConfig(
    values['store'] as string[],
    values['storeDescriptions'] as string[],
    (values['defaultStore'] as string | undefined) ?? null,
  );
  return {
    host: values['host'] as string,
    port: values['port'] as number,
    dataDir: values['dataDir'] as string,
    databaseUrl: values['databaseUrl'] as string | undefined,
    store: stores.mode === 'single' ? stores.location : undefined,
    stores: stores.mode === 'multi' ? { stores: stores.stores, defaultId: stores.defaultId } : undefined,
    adminPassword: values['adminPassword'] as string | undefined,
    logFormat: values['logFormat'] as 'text' | 'json',
    settings: st,
  };
}

/** The formats and import methods an operator names must be ones vdisk knows. */
export function checkFormats(s: ServerSettings): void {
  const unknown = (what: string, got: string[], known: readonly string[]) => {
    const bad = got.filter((x) => !known.includes(x));
    if (bad.length > 0)
      throw new VdiskError(
        'INVALID_ARGUMENT',
        `Unknown ${what}: ${bad.join(', ')} (known: ${known.join(', ')})`,
      );
  };
  unknown('disk format', s.diskFormats, DISK_FORMATS);
  unknown('container format', s.containerFormats, CONTAINER_FORMATS);
  unknown('import method', s.importMethods, ['glance-direct', 'web-download', 'copy-image']);
}

/** getopt's long-option table for the settings (and --config). */
export function settingsOptions(): Record<string, { value: boolean }> {
  const out: Record<string, { value: boolean }> = { config: { value: true } };
  for (const s of SETTINGS) {
    out[s.flag] = { value: s.kind !== 'bool' };
    if (s.kind === 'bool') out[`no-${s.flag}`] = { value: false };
  }
  return out;
}
