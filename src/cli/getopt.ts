/**
 * GNU getopt_long as qemu-img uses it: grouped short flags (-pq), attached or separate
 * values (-fqcow2, -f qcow2), --long=value and --long value, permutation (options may
 * follow operands), and `--` to end options. Errors are worded as glibc words them.
 */
import { VdiskError } from '../core/errors.js';

export interface OptSpec {
  /** Short options as in getopt: "f:O:pq" (a colon after a letter takes a value). */
  short: string;
  /** Long options: name → takes a value. A long option may alias a short letter. */
  long?: Record<string, { value: boolean; short?: string }>;
}

export interface ParsedOpts {
  /** Options in command-line order, keyed by short letter or long name. */
  opts: Array<[string, string]>;
  args: string[];
}

export function getopt(argv: string[], spec: OptSpec): ParsedOpts {
  const shortTakes = new Map<string, boolean>();
  for (let i = 0; i < spec.short.length; i++) {
    const c = spec.short[i]!;
    if (c === ':') continue;
    shortTakes.set(c, spec.short[i + 1] === ':');
  }
  const long = spec.long ?? {};
  const opts: Array<[string, string]> = [];
  const args: string[] = [];
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
          throw usage(`option '${a}' is ambiguous`);
        }
      }
      if (def === undefined) throw usage(`unrecognized option '${a}'`);
      let value = '';
      if (def.value) {
        if (eq >= 0) value = a.slice(eq + 1);
        else if (i + 1 < argv.length) value = argv[++i]!;
        else throw usage(`option '--${key}' requires an argument`);
      } else if (eq >= 0) {
        throw usage(`option '--${key}' doesn't allow an argument`);
      }
      opts.push([def.short ?? key, value]);
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        const takes = shortTakes.get(c);
        if (takes === undefined) throw usage(`invalid option -- '${c}'`);
        if (!takes) {
          opts.push([c, '']);
          continue;
        }
        if (j + 1 < a.length) opts.push([c, a.slice(j + 1)]);
        else if (i + 1 < argv.length) opts.push([c, argv[++i]!]);
        else throw usage(`option requires an argument -- '${c}'`);
        break;
      }
      continue;
    }
    args.push(a);
  }
  return { opts, args };
}

function usage(message: string): VdiskError {
  return new VdiskError('INVALID_ARGUMENT', `${message}\nTry 'vdisk --help' for more information`, {
    op: 'usage',
  });
}
