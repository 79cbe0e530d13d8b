/** Number and size formatting as qemu-img prints it. */

/** C printf's %.<p>g. */
export function cFormatG(x: number, precision: number): string {
  if (x === 0) return '0';
  let s = x.toPrecision(precision);
  // An exact tie (192.5 to 3 digits): C's printf rounds it to even (192), toPrecision up (193).
  const scale = 10 ** (precision - 1 - Math.floor(Math.log10(Math.abs(x))));
  const y = x * scale;
  if (scale >= 1 && Number.isSafeInteger(y * 2) && !Number.isInteger(y)) {
    const even = Math.floor(y) % 2 === 0 ? Math.floor(y) : Math.ceil(y);
    s = (even / scale).toPrecision(precision);
  }
  const m = /^(-?[\d.]+)e([+-])(\d+)$/.exec(s);
  if (m !== null) {
    let mant = m[1]!;
    if (mant.includes('.')) mant = mant.replace(/0+$/, '').replace(/\.$/, '');
    return `${mant}e${m[2]}${m[3]!.padStart(2, '0')}`;
  }
  if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
  return s;
}

const SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** QEMU's size_to_str(): "196 KiB", "1 GiB", "0.977 KiB". */
export function sizeToStr(val: number): string {
  // frexp(val / (1000.0 / 1024.0)) gives the exponent e with m in [0.5, 1).
  const scaled = val / (1000 / 1024);
  const e = scaled === 0 ? 0 : Math.floor(Math.log2(scaled)) + 1;
  const i = Math.max(0, Math.min(SUFFIXES.length - 1, Math.trunc((e - 1) / 10)));
  const div = 2 ** (i * 10);
  return `${cFormatG(val / div, 3)} ${SUFFIXES[i]}B`;
}
