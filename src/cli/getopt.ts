/**
 * GNU getopt_long as qemu-img uses it: grouped short flags (-pq), attached or separate
 * values (-fqcow2, -f qcow2), --long=value and --long value, unambiguous prefixes of long
 * names, permutation (options may follow operands), and `--` to end options.
 *
 * Errors are worded as qemu-img words them. qemu-img passes an optstring starting with ':'
 * so glibc stays silent, and reports `unrecognized option '<argv[optind-1]>'` or
 * `missing argument for option '<argv[optind-1]>'`. argv[optind-1] is glibc's index after the
 * failing option: the element itself, except for an unknown letter in the middle of a group
 * (-xq), where glibc has not advanced yet and qemu-img names the previous element (the command
 * name for the first one). We reproduce that quirk. A few commands (measure) omit the ':'; glibc
 * then prints its own message (`measure: invalid option -- 'x'`): `glibcErrors` selects that.
 */
import { VdiskError } from '../core/errors.js';
import { Secrets } from '../core/secrets.js';

export interface OptSpec {
  /** Short options as in getopt: "f:O:pq" (a colon after a letter takes a value). */
  short: string;
  /** Long options: name → takes a value. A long option may alias a short letter. */
  long?: Record<string, { value: boolean; short?: string }>;
  /** The command name (qemu-img's argv[0] while parsing a command's options). */
  command?: string;
  /** Word errors as glibc does when the optstring has no leading ':' (see above). */
  glibcErrors?: boolean;
}

export interface ParsedOpts {
  /** Options in command-line order, keyed by short letter or long name. */
  opts: Array<[string, string]>;
  args: string[];
  /** This command's --object secrets (a new store per parse: nothing is process-wide). */
  secrets: Secrets;
  /** --image-opts was given: the names the command opens are image options. */
  imageOpts: boolean;
  /** convert's --target-image-opts. */
  targetImageOpts: boolean;
}

/** A usage error from getopt; `op` is 'usage' so callers can tell it apart. */
export function isUsageError(err: unknown): err is VdiskError {
  return err instanceof VdiskError && err.op === 'usage';
}

export function getopt(argv: string[], spec: OptSpec): ParsedOpts {
  const shortTakes = new Map<string, boolean>();
  for (let i = 0; i < spec.short.length; i++) {
    const c = spec.short[i]!;
    if (c === ':') continue;
    shortTakes.set(c, spec.short[i + 1] === ':');
  }
  const long = spec.long ?? {};
  const cmd = spec.command ?? '';
  const glibc = spec.glibcErrors === true;
  const prev = (i: number) => (i > 0 ? argv[i - 1]! : cmd);
  const opts: Array<[string, string]> = [];
  const args: string[] = [];
  const secrets = new Secrets();
  let imageOpts = false;
  let targetImageOpts = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      // getopt_long accepts unambiguous prefixes.
      let def = long[name];
      let key = name;
      if (def === undefined) {
        const matches = Object.keys(long).filter((k) => k.startsWith(name));
        if (matches.length === 1) {
          key = matches[0]!;
          def = long[key];
        } else if (matches.length > 1) {
          throw usage(glibc ? `${cmd}: option '${a}' is ambiguous` : `unrecognized option '${a}'`, glibc);
        }
      }
      if (def === undefined)
        throw usage(glibc ? `${cmd}: unrecognized option '${a}'` : `unrecognized option '${a}'`, glibc);
      let value = '';
      if (def.value) {
        if (eq >= 0) value = a.slice(eq + 1);
        else if (i + 1 < argv.length) value = argv[++i]!;
        else
          throw usage(
            glibc ? `${cmd}: option '--${key}' requires an argument` : `missing argument for option '${a}'`,
            glibc,
          );
      } else if (eq >= 0) {
        throw usage(
          glibc ? `${cmd}: option '--${key}' doesn't allow an argument` : `unrecognized option '${a}'`,
          glibc,
        );
      }
      opts.push([def.short ?? key, value]);
      // qemu-img creates --object objects while it parses options
      // (user_creatable_process_cmdline), and notes --image-opts for the names it opens.
      if (key === 'object') secrets.defineObject(value);
      else if (key === 'image-opts') imageOpts = true;
      else if (key === 'target-image-opts') targetImageOpts = true;
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        const takes = shortTakes.get(c);
        if (takes === undefined) {
          const last = j === a.length - 1;
          throw usage(
            glibc ? `${cmd}: invalid option -- '${c}'` : `unrecognized option '${last ? a : prev(i)}'`,
            glibc,
          );
        }
        if (!takes) {
          opts.push([c, '']);
          continue;
        }
        if (j + 1 < a.length) opts.push([c, a.slice(j + 1)]);
        else if (i + 1 < argv.length) opts.push([c, argv[++i]!]);
        else
          throw usage(
            glibc ? `${cmd}: option requires an argument -- '${c}'` : `missing argument for option '${a}'`,
            glibc,
          );
        break;
      }
      continue;
    }
    args.push(a);
  }
  return { opts, args, secrets, imageOpts, targetImageOpts };
}

/** qemu-img's error_exit(): the message, then the line pointing to --help. */
export function usageError(message: string): VdiskError {
  return usage(message, false);
}

function usage(message: string, glibc: boolean): VdiskError {
  return new VdiskError(
    'INVALID_ARGUMENT',
    glibc ? message : `${message}\nTry 'vdisk --help' for more information`,
    { op: 'usage' },
  );
}
