/** -o option strings as QEMU parses them: "a=1,b=2", with ",," standing for a literal comma. */
import { VdiskError } from './errors.js';

export function parseOptionString(text: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let i = 0;
  while (i < text.length) {
    let item = '';
    while (i < text.length) {
      const c = text[i]!;
      if (c === ',') {
        if (text[i + 1] === ',') {
          item += ',';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      item += c;
      i++;
    }
    if (item === '') continue;
    const eq = item.indexOf('=');
    if (eq < 0) {
      // A bare "help" or "?" asks for the option list; a bare name means "on" (QEMU's implied-yes).
      out.push([item, item === 'help' || item === '?' ? '' : 'on']);
    } else {
      out.push([item.slice(0, eq), item.slice(eq + 1)]);
    }
  }
  return out;
}

/** Merge several -o strings (later ones win, as qemu-img's repeated -o). */
export function mergeOptionStrings(texts: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of texts) for (const [k, v] of parseOptionString(t)) out[k] = v;
  return out;
}

export function parseBoolOption(name: string, value: string): boolean {
  if (value === 'on' || value === 'yes' || value === 'true') return true;
  if (value === 'off' || value === 'no' || value === 'false') return false;
  throw new VdiskError('INVALID_ARGUMENT', `Parameter '${name}' expects 'on' or 'off'`);
}
