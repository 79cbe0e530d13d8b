/**
 * The engine's layering rules, checked on the sources themselves:
 *
 * - the engine (src/core, src/formats, src/chain, src/commands, src/protocols) never imports
 *   from src/cli or src/server (static, re-export or dynamic import), and format drivers never
 *   import src/chain (a driver that needs another image is handed an opener: CreateRequest);
 * - the engine keeps no process-wide mutable state: its module-level `let`s and empty
 *   containers are exactly the allow-list below, each a cache of something immutable. A new
 *   one fails here until it is justified (or, better, moved into an object a command owns).
 *
 * Test files are not the engine: they may drive the CLI (src/test/oracle.ts runs main()).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const ENGINE = ['core', 'formats', 'chain', 'commands', 'protocols'];

/**
 * Module-level state the engine may keep, by `file: name`. Each memoises something that never
 * changes once made, so no command can see another's data through it:
 */
const ALLOWED_STATE: Record<string, string> = {
  // Lazy loads of immutable modules: the promise of a module (or of a WASM instance that holds
  // no data between calls) is the same for every caller; loading it at start-up would cost
  // every command the time only a few need.
  'formats/qcow2/image.ts: compressModule': 'lazy import of ./compress.js',
  'formats/qcow2/image.ts: cryptoModule': 'lazy import of ./crypto.js',
  'formats/qcow2/image.ts: checkModule': 'lazy import of ./check.js',
  'formats/qcow2/compress.ts: zstdReady': 'lazy init of the zstd WASM module',
  'formats/dmg/bzip2.ts: decoder': 'lazy init of the bzip2 WASM module',
  // The registry of the built-in format drivers: code, not data. Registration is idempotent
  // (the same table every time), so it is set once and read by everyone.
  'formats/index.ts: done': 'registerBuiltinFormats ran (idempotent)',
  'core/formats.ts: entries': 'name → driver loader of the registered formats',
};

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The module specifiers a source imports: import/export … from, import '…', import('…'). */
function importsOf(text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)(['"])([^'"]+)\1/gm;
  for (const m of text.matchAll(re)) out.push(m[2]!);
  return out;
}

/** Why `file` (relative to src) may not import `spec`, or null when it may. */
function importViolation(file: string, spec: string): string | null {
  if (!spec.startsWith('.')) return null;
  const target = relative(SRC, resolve(SRC, dirname(file), spec))
    .split(sep)
    .join('/');
  const top = (p: string) => p.split('/')[0];
  const from = top(file);
  if (!ENGINE.includes(from!)) return null;
  const to = top(target);
  if (to === 'cli' || to === 'server') return `${file} imports ${target}: the engine never imports ${to}/`;
  if (from === 'formats' && to === 'chain') return `${file} imports ${target}: drivers never import chain/`;
  return null;
}

/**
 * Module-level mutable state in a source: `let`/`var` declarations at the top level (column
 * 0), and `const` containers made empty at the top level (`new Map()`, `new Set()`, `[]`),
 * which is how state hides behind a const. Constant tables (`new Set([...])`) are not state.
 */
function moduleState(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const v = /^(?:export\s+)?(?:let|var)\s+([A-Za-z_$][\w$]*)/.exec(line);
    if (v) out.push(v[1]!);
    const c =
      /^(?:export\s+)?const\s+([A-Za-z_$][\w$]*)\s*(?::[^;]*?)?=\s*(?:new\s+(?:Map|Set|WeakMap|WeakSet|Array)\s*(?:<.*>)?\(\s*\)|\[\s*\])\s*;/.exec(
        line,
      );
    if (c) out.push(c[1]!);
  }
  return out;
}

describe('layering: the scanners find what they look for', () => {
  it('importsOf sees static, re-export, side-effect and dynamic imports', () => {
    const text = [
      "import { a } from '../cli/json.js';",
      "import type { B } from '../server/x.js';",
      "export { c } from './c.js';",
      "import './side.js';",
      "  const { d } = await import('../../chain/open.js');",
      '// a comment that says import nothing',
    ].join('\n');
    expect(importsOf(text)).toEqual([
      '../cli/json.js',
      '../server/x.js',
      './c.js',
      './side.js',
      '../../chain/open.js',
    ]);
  });

  it('importViolation flags engine → cli/server and formats → chain only', () => {
    expect(importViolation('chain/image-opts.ts', '../cli/json.js')).toMatch(/never imports cli/);
    expect(importViolation('commands/x.ts', '../server/app.js')).toMatch(/never imports server/);
    expect(importViolation('formats/vmdk/create.ts', '../../chain/open.js')).toMatch(/never import chain/);
    expect(importViolation('formats/vmdk/create.ts', '../../core/driver.js')).toBeNull();
    expect(importViolation('commands/create.ts', '../chain/open.js')).toBeNull();
    expect(importViolation('cli/main.ts', '../server/app.js')).toBeNull();
    expect(importViolation('server/image/import.ts', '../../commands/convert.js')).toBeNull();
    expect(importViolation('protocols/http.ts', 'node:http')).toBeNull();
  });

  it('moduleState sees top-level lets and empty containers, not locals or constant tables', () => {
    const text = [
      'let imageOptsMode = false;',
      'export let counter = 0;',
      'const secrets = new Map<string, Uint8Array>();',
      'const waiters: Array<() => void> = [];',
      "const KEYS = new Set(['a', 'b']);",
      'const LIMIT = 8;',
      'function f() {',
      '  let local = 0;',
      '  const m = new Map();',
      '}',
    ].join('\n');
    expect(moduleState(text)).toEqual(['imageOptsMode', 'counter', 'secrets', 'waiters']);
  });
});

describe('layering: the engine', () => {
  const files = ENGINE.flatMap((d) => sourceFiles(join(SRC, d)));

  it('has its sources where the rules look', () => {
    // A moved tree must not make the checks below vacuous.
    for (const d of ENGINE) expect(files.some((f) => f.startsWith(join(SRC, d, '')))).toBe(true);
    expect(files.length).toBeGreaterThan(100);
  });

  it('never imports src/cli or src/server, and drivers never import src/chain', () => {
    const problems: string[] = [];
    for (const f of files) {
      const rel = relative(SRC, f).split(sep).join('/');
      for (const spec of importsOf(readFileSync(f, 'utf8'))) {
        const v = importViolation(rel, spec);
        if (v !== null) problems.push(v);
      }
    }
    expect(problems).toEqual([]);
  });

  it('keeps no module-level state but the allow-listed caches', () => {
    const found: string[] = [];
    for (const f of files) {
      const rel = relative(SRC, f).split(sep).join('/');
      for (const name of moduleState(readFileSync(f, 'utf8'))) found.push(`${rel}: ${name}`);
    }
    expect(found.sort()).toEqual(Object.keys(ALLOWED_STATE).sort());
  });
});
