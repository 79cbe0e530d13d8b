/**
 * A strict, bounded reader for the XML property list of a UDIF (dmg) image: well-formed XML
 * (elements, text, entities, comments, an XML declaration and a DOCTYPE without internal
 * subset), at most MAX_DEPTH deep, with plist's value types only. It returns the `Data` blobs
 * of resource-fork → blkx, in document order: the mish blocks that map the disk.
 */
import { VdiskError } from '../../core/errors.js';

const MAX_DEPTH = 32;

interface XmlNode {
  tag: string;
  children: XmlNode[];
  text: string;
}

const malformed = (why: string, at: number) =>
  new VdiskError('INVALID_IMAGE', `dmg: malformed XML property list (${why} at byte ${at})`);

const NAME = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;
/** XML white space; false past the end of the text (`' \t'.includes('')` would be true). */
const isSpace = (c: string | undefined) => c !== undefined && c !== '' && ' \t\r\n'.includes(c);
const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeText(raw: string, at: number): string {
  return raw.replace(/&([^;]{0,10});/g, (_m, name: string) => {
    if (name.startsWith('#')) {
      const digits = name.startsWith('#x') ? name.slice(2) : name.slice(1);
      const cp = Number.parseInt(digits, name.startsWith('#x') ? 16 : 10);
      // String.fromCodePoint throws a RangeError on NaN and on what is not a code point.
      if (!(cp >= 0 && cp <= 0x10ffff) || !/^[0-9A-Fa-f]+$/.test(digits))
        throw malformed(`bad character reference &${name};`, at);
      return String.fromCodePoint(cp);
    }
    const v = ENTITIES[name];
    if (v === undefined) throw malformed(`unknown entity &${name};`, at);
    return v;
  });
}

/** Parse the document into element nodes (attributes are checked and dropped). */
export function parseXml(text: string): XmlNode {
  let pos = 0;
  const skipMisc = (allowDoctype: boolean) => {
    for (;;) {
      while (pos < text.length && ' \t\r\n'.includes(text[pos]!)) pos++;
      if (text.startsWith('<?', pos)) {
        const end = text.indexOf('?>', pos + 2);
        if (end < 0) throw malformed('unterminated processing instruction', pos);
        pos = end + 2;
      } else if (text.startsWith('<!--', pos)) {
        const end = text.indexOf('-->', pos + 4);
        if (end < 0) throw malformed('unterminated comment', pos);
        pos = end + 3;
      } else if (allowDoctype && text.startsWith('<!DOCTYPE', pos)) {
        const end = text.indexOf('>', pos);
        if (end < 0 || text.slice(pos, end).includes('[')) throw malformed('unsupported DOCTYPE', pos);
        pos = end + 1;
      } else return;
    }
  };
  const element = (depth: number): XmlNode => {
    if (depth > MAX_DEPTH) throw malformed('elements nested too deep', pos);
    if (text[pos] !== '<') throw malformed('expected an element', pos);
    NAME.lastIndex = pos + 1;
    const m = NAME.exec(text);
    if (m === null) throw malformed('bad element name', pos);
    const tag = m[0];
    pos = NAME.lastIndex;
    // Attributes: name="value" pairs.
    for (;;) {
      while (isSpace(text[pos])) pos++;
      if (text.startsWith('/>', pos)) {
        pos += 2;
        return { tag, children: [], text: '' };
      }
      if (text[pos] === '>') {
        pos++;
        break;
      }
      NAME.lastIndex = pos;
      if (NAME.exec(text) === null) throw malformed('bad attribute', pos);
      pos = NAME.lastIndex;
      if (text[pos] !== '=') throw malformed('bad attribute', pos);
      const q = text[pos + 1];
      if (q !== '"' && q !== "'") throw malformed('bad attribute value', pos);
      const end = text.indexOf(q, pos + 2);
      if (end < 0) throw malformed('unterminated attribute value', pos);
      pos = end + 1;
    }
    const node: XmlNode = { tag, children: [], text: '' };
    const parts: string[] = [];
    for (;;) {
      const lt = text.indexOf('<', pos);
      if (lt < 0) throw malformed(`unterminated <${tag}>`, pos);
      if (lt > pos) parts.push(decodeText(text.slice(pos, lt), pos));
      pos = lt;
      if (text.startsWith('</', pos)) {
        const close = `</${tag}`;
        if (!text.startsWith(close, pos)) throw malformed(`mismatched end tag for <${tag}>`, pos);
        pos += close.length;
        while (isSpace(text[pos])) pos++;
        if (text[pos] !== '>') throw malformed('bad end tag', pos);
        pos++;
        node.text = parts.join('');
        return node;
      }
      if (text.startsWith('<!--', pos)) {
        const end = text.indexOf('-->', pos + 4);
        if (end < 0) throw malformed('unterminated comment', pos);
        pos = end + 3;
        continue;
      }
      if (text.startsWith('<![CDATA[', pos)) {
        const end = text.indexOf(']]>', pos);
        if (end < 0) throw malformed('unterminated CDATA', pos);
        parts.push(text.slice(pos + 9, end));
        pos = end + 3;
        continue;
      }
      if (text.startsWith('<?', pos)) {
        const end = text.indexOf('?>', pos + 2);
        if (end < 0) throw malformed('unterminated processing instruction', pos);
        pos = end + 2;
        continue;
      }
      node.children.push(element(depth + 1));
    }
  };
  skipMisc(true);
  const root = element(0);
  skipMisc(false);
  if (pos !== text.length) throw malformed('content after the root element', pos);
  return root;
}

/** A plist <dict> as key → value node, checking that keys and values alternate. */
function dictEntries(node: XmlNode): Map<string, XmlNode> {
  const out = new Map<string, XmlNode>();
  const c = node.children;
  if (c.length % 2 !== 0) throw malformed('a <dict> with a key and no value', 0);
  for (let i = 0; i < c.length; i += 2) {
    if (c[i]!.tag !== 'key') throw malformed(`<${c[i]!.tag}> where a <key> belongs`, 0);
    out.set(c[i]!.text, c[i + 1]!);
  }
  return out;
}

const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;

function decodeData(node: XmlNode): Uint8Array {
  if (node.tag !== 'data') throw malformed(`<${node.tag}> where <data> belongs`, 0);
  if (!BASE64.test(node.text)) throw malformed('<data> that is not base64', 0);
  const compact = node.text.replace(/\s+/g, '');
  if (compact.length % 4 !== 0) throw malformed('<data> of a length that is not base64', 0);
  return new Uint8Array(Buffer.from(compact, 'base64'));
}

/**
 * The blkx Data blobs of a UDIF property list. A list without resource-fork/blkx maps
 * nothing (QEMU then opens the image and fails every read).
 */
export function blkxBlobs(xml: string): Uint8Array[] {
  const root = parseXml(xml);
  if (root.tag !== 'plist' || root.children.length !== 1 || root.children[0]!.tag !== 'dict') {
    throw malformed('the root is not <plist><dict>', 0);
  }
  const top = dictEntries(root.children[0]!);
  const fork = top.get('resource-fork');
  if (fork === undefined) return [];
  if (fork.tag !== 'dict') throw malformed('resource-fork is not a <dict>', 0);
  const blkx = dictEntries(fork).get('blkx');
  if (blkx === undefined) return [];
  if (blkx.tag !== 'array') throw malformed('blkx is not an <array>', 0);
  const out: Uint8Array[] = [];
  for (const item of blkx.children) {
    if (item.tag !== 'dict') throw malformed('a blkx entry that is not a <dict>', 0);
    const data = dictEntries(item).get('Data');
    if (data === undefined) throw malformed('a blkx entry without Data', 0);
    out.push(decodeData(data));
  }
  return out;
}
