#!/usr/bin/env node
// Builds the CLI (src/cli/engine.ts) into one script, dist/cli/vdisk.cjs, and V8's code cache
// for it, dist/cli/vdisk.cjs.cache; bin/vdisk compiles the script with that cache, so that a
// command starts without parsing and compiling vdisk's code (docs/decisions.md, "The CLI script
// and its code cache"). Node 20 caches code for vm.Script only (not for ES modules), hence a
// function expression in CommonJS form that bin/vdisk calls with its module variables:
//   (function (exports, require, module, __filename, __dirname, __vdiskImport, __vdiskMetaUrl) {…})
// - import.meta.url is __vdiskMetaUrl, the script's own URL (modules that find files relative
//   to themselves see dist/cli/, src/core/bundle.ts);
// - npm packages and the native addon stay external: static imports become require() (the
//   packages vdisk imports statically all have CommonJS builds), dynamic imports of packages
//   and built-ins become __vdiskImport(), bin/vdisk's own import();
// - the first line names the build (a hash of the script) and the cache starts with that line:
//   bin/vdisk takes a cache only for the script it was made for (V8 itself checks the source's
//   length, not its text).
// The cache is made by running bin/vdisk on a warm-up of common commands in one process
// (VDISK_BUILD_CODE_CACHE) with the V8 flags bin/vdisk runs with (none), then asking V8 for the
// code of every function compiled so far.
// Usage: node scripts/build-cli.mjs
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'dist', 'cli');
const script = join(outdir, 'vdisk.cjs');

// Earlier outputs: the ES module bundle this script replaced (vdisk.mjs and its chunks) and the
// last script, map and cache. tsc's dist/cli/*.js stay.
for (const f of readdirSync(outdir)) {
  if (/\.mjs(\.map)?$/.test(f) || f.startsWith('vdisk.cjs')) rmSync(join(outdir, f));
}

const result = await build({
  entryPoints: [join(root, 'src', 'cli', 'engine.ts')],
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  outfile: script,
  write: false,
  metafile: true,
  sourcemap: 'external',
  packages: 'external',
  define: { 'import.meta.url': '__vdiskMetaUrl' },
  legalComments: 'none',
  // Whitespace and syntax only (names stay): a 1.06 MB script instead of 1.56 MB, which start-up
  // reads, decodes and hashes before V8 takes its code cache: `info` 2.3-2.9 ms sooner
  // (docs/decisions.md, "The CLI script and its code cache"). The map still leads to the sources.
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
const text = result.outputFiles.find((f) => f.path === script)?.text;
const map = result.outputFiles.find((f) => f.path === `${script}.map`)?.text;
if (text === undefined || map === undefined) throw new Error('esbuild gave no script or map');
// bin/vdisk reads the script as latin1, a byte a character (no UTF-8 decoding at start-up).
// esbuild escapes non-ASCII characters in strings, regular expressions and names, but not in
// the comments it keeps; a \uXXXX escape means the same character in the first three and is
// harmless in a comment.
const code = text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

// Every dynamic import of an external module, as esbuild lists them, and nothing else.
const dynamic = Object.values(result.metafile.outputs)
  .flatMap((o) => o.imports)
  .filter((i) => i.external && i.kind === 'dynamic-import')
  .map((i) => i.path);
const quoted = [...new Set(dynamic)].map((p) => JSON.stringify(p).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));
let replaced = 0;
const body =
  quoted.length === 0
    ? code
    : code.replace(new RegExp(`(?<![\\w$.])import\\((?=(?:${quoted.join('|')})\\))`, 'g'), () => {
        replaced++;
        return '__vdiskImport(';
      });
if (replaced !== dynamic.length) {
  throw new Error(
    `found ${replaced} dynamic imports of external modules where esbuild lists ${dynamic.length}`,
  );
}
// (An import() of a computed name would stay, and fail when run: vdisk's sources have none.)

const wrapped =
  '(function (exports, require, module, __filename, __dirname, __vdiskImport, __vdiskMetaUrl) {\n' +
  `${body.replace(/\n\/\/# sourceMappingURL=.*\n?$/, '\n')}})\n`;
const id = createHash('sha256').update(wrapped).digest('hex').slice(0, 16);
writeFileSync(script, `// vdisk ${id}\n${wrapped}//# sourceMappingURL=vdisk.cjs.map\n`);
// Two lines come before esbuild's first: the map's lines move down by two.
const m = JSON.parse(map);
m.mappings = `;;${m.mappings}`;
writeFileSync(`${script}.map`, JSON.stringify(m));

// The warm-up: small images made here, the commands people run most.
const dir = mkdtempSync(join(tmpdir(), 'vdisk-build-'));
try {
  const raw = join(dir, 'a.raw');
  const img = Buffer.alloc(4 << 20);
  for (let i = 0; i < img.length; i += 192 << 10) img.fill((i >> 16) & 0xff || 1, i, i + (64 << 10));
  writeFileSync(raw, img);
  const p = (f) => join(dir, f);
  const warmup = [
    ['--version'],
    ['info', raw],
    ['create', '-q', '-f', 'qcow2', p('b.qcow2'), '4M'],
    ['convert', '-O', 'qcow2', raw, p('c.qcow2')],
    ['info', p('c.qcow2')],
    ['info', '--output=json', p('c.qcow2')],
    ['map', p('c.qcow2')],
    ['map', '--output=json', p('c.qcow2')],
    ['check', p('c.qcow2')],
    ['compare', raw, p('c.qcow2')],
    ['convert', '-O', 'raw', p('c.qcow2'), p('d.raw')],
    ['measure', '-O', 'qcow2', raw],
    ['create', '-q', '-f', 'qcow2', '-b', p('c.qcow2'), '-F', 'qcow2', p('e.qcow2')],
    ['info', '--backing-chain', p('e.qcow2')],
  ];
  writeFileSync(p('warmup.json'), JSON.stringify(warmup));
  const env = { ...process.env, VDISK_BUILD_CODE_CACHE: p('warmup.json') };
  delete env.NODE_OPTIONS;
  const r = spawnSync(process.execPath, [join(root, 'bin', 'vdisk')], { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`making the code cache failed (${r.status ?? r.signal}): ${r.stderr}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
