/**
 * Python's text forms of JSON values, as Glance prints them in its messages: repr() (the
 * instance in a jsonschema error's first line), pprint.pformat(width=72) (the schema and the
 * instance in its "Failed validating … On instance …" paragraphs) and
 * urllib.parse.urlencode (the `first`/`next` links of the namespace list).
 *
 * A JSON number is an int for Python when it is integral (JSON.parse cannot tell `1.0` from
 * `1`; Python would print `1.0`).
 */

type Json = unknown;

const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** repr() of a str. */
export function reprStr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\\\';
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === '\t') out += '\\t';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch !== ' ' && NOT_PRINTABLE.test(ch)) {
      if (cp <= 0xff) out += `\\x${cp.toString(16).padStart(2, '0')}`;
      else if (cp <= 0xffff) out += `\\u${cp.toString(16).padStart(4, '0')}`;
      else out += `\\U${cp.toString(16).padStart(8, '0')}`;
    } else out += ch;
  }
  return out + quote;
}

/** repr() of a float, from the shortest round-trip digits (the same in JS and Python). */
function reprFloat(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  const sign = x < 0 || Object.is(x, -0) ? '-' : '';
  const [mant, expPart] = Math.abs(x).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const exp = Number(expPart);
  if (exp >= -4 && exp < 16) {
    if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
    const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
    const frac = digits.slice(exp + 1);
    return `${sign}${intPart}.${frac === '' ? '0' : frac}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
}

function reprNumber(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 2 ** 63) return BigInt(x).toString();
  return reprFloat(x);
}

const isDict = (v: Json): v is Record<string, Json> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

const byKey = (a: [string, Json], b: [string, Json]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/** repr(); dicts in insertion order, or sorted by key (pprint's _safe_repr). */
export function pyRepr(v: Json, sortDicts = false): string {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'number') return reprNumber(v);
  if (typeof v === 'string') return reprStr(v);
  if (Array.isArray(v)) return `[${v.map((x) => pyRepr(x, sortDicts)).join(', ')}]`;
  if (isDict(v)) {
    let items = Object.entries(v);
    if (sortDicts) items = items.sort(byKey);
    return `{${items.map(([k, x]) => `${reprStr(k)}: ${pyRepr(x, sortDicts)}`).join(', ')}}`;
  }
  return reprStr(String(v));
}

const cpLen = (s: string): number => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/** Python's str.splitlines(True). */
function splitLines(s: string): string[] {
  const out: string[] = [];
  const re = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;
  let start = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    out.push(s.slice(start, m.index + m[0].length));
    start = m.index + m[0].length;
  }
  if (start < s.length) out.push(s.slice(start));
  return out;
}

/** pprint.PrettyPrinter(width) with indent=1, sort_dicts=True: pformat(). */
export function pformat(v: Json, width = 72): string {
  const out: string[] = [];
  const write = (s: string) => out.push(s);

  const format = (obj: Json, indent: number, allowance: number, level: number): void => {
    const rep = pyRepr(obj, true);
    const maxWidth = width - indent - allowance;
    if (cpLen(rep) > maxWidth) {
      if (isDict(obj)) {
        pprintDict(obj, indent, allowance, level + 1);
        return;
      }
      if (Array.isArray(obj)) {
        pprintList(obj, indent, allowance, level + 1);
        return;
      }
      if (typeof obj === 'string') {
        pprintStr(obj, indent, allowance, level + 1);
        return;
      }
    }
    write(rep);
  };

  const pprintDict = (obj: Record<string, Json>, indent: number, allowance: number, level: number) => {
    write('{');
    const items = Object.entries(obj).sort(byKey);
    if (items.length > 0) {
      const ind = indent + 1;
      const delimnl = `,\n${' '.repeat(ind)}`;
      items.forEach(([key, ent], i) => {
        const last = i === items.length - 1;
        const rep = reprStr(key);
        write(rep);
        write(': ');
        format(ent, ind + cpLen(rep) + 2, last ? allowance + 1 : 1, level);
        if (!last) write(delimnl);
      });
    }
    write('}');
  };

  const pprintList = (obj: Json[], indent: number, allowance: number, level: number) => {
    write('[');
    const ind = indent + 1;
    const delimnl = `,\n${' '.repeat(ind)}`;
    obj.forEach((ent, i) => {
      const last = i === obj.length - 1;
      if (i > 0) write(delimnl);
      format(ent, ind, last ? allowance + 1 : 1, level);
    });
    write(']');
  };

  const pprintStr = (s: string, indent0: number, allowance0: number, level: number) => {
    if (s.length === 0) {
      write(reprStr(s));
      return;
    }
    let indent = indent0;
    let allowance = allowance0;
    const chunks: string[] = [];
    const lines = splitLines(s);
    if (level === 1) {
      indent += 1;
      allowance += 1;
    }
    const maxWidth = width - indent;
    let maxWidth1 = maxWidth;
    let rep = '';
    lines.forEach((line, i) => {
      rep = reprStr(line);
      if (i === lines.length - 1) maxWidth1 -= allowance;
      if (cpLen(rep) <= maxWidth1) {
        chunks.push(rep);
        return;
      }
      const parts = line.match(/\S*\s*/gu)?.filter((p) => p !== '') ?? [];
      let maxWidth2 = maxWidth;
      let current = '';
      parts.forEach((part, j) => {
        const candidate = current + part;
        if (j === parts.length - 1 && i === lines.length - 1) maxWidth2 -= allowance;
        if (cpLen(reprStr(candidate)) > maxWidth2) {
          if (current !== '') chunks.push(reprStr(current));
          current = part;
        } else current = candidate;
      });
      if (current !== '') chunks.push(reprStr(current));
    });
    if (chunks.length === 1) {
      write(rep);
      return;
    }
    if (level === 1) write('(');
    chunks.forEach((c, i) => {
      if (i > 0) write(`\n${' '.repeat(indent)}`);
      write(c);
    });
    if (level === 1) write(')');
  };

  format(v, 0, 0, 0);
  return out.join('');
}

/** urllib.parse.quote_plus (safe: letters, digits, `_.-~`). */
export function quotePlus(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9_.\-~]/.test(c)) out += c;
    else if (c === ' ') out += '+';
    else out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** urllib.parse.urlencode of (key, value) pairs. */
export const urlencode = (pairs: [string, string][]): string =>
  pairs.map(([k, v]) => `${quotePlus(k)}=${quotePlus(v)}`).join('&');
