#!/usr/bin/env node
// Builds the dashboard (web/) into dist/web/: one ES module and one stylesheet, content-hashed
// (served immutable), and index.html naming them (served no-cache). esbuild bundles and minifies
// TypeScript/JSX (Preact); type-checking is `npm run typecheck` (tsc -p web/tsconfig.json).
// Usage: node scripts/build-web.mjs [--outdir DIR] [--quiet]
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const at = args.indexOf('--outdir');
const outdir = at >= 0 ? args[at + 1] : join(root, 'dist', 'web');
const quiet = args.includes('--quiet');

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
const result = await build({
  entryPoints: [join(root, 'web', 'src', 'main.tsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022', 'chrome111', 'firefox115', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir,
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  sourcemap: 'linked',
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
});

const outputs = Object.keys(result.metafile.outputs).filter((f) => !f.endsWith('.map'));
const js = outputs.filter((f) => f.endsWith('.js')).map((f) => basename(f));
const css = outputs.filter((f) => f.endsWith('.css')).map((f) => basename(f));
let html = await readFile(join(root, 'web', 'index.html'), 'utf8');
html = html
  .replace('<!--styles-->', css.map((f) => `<link rel="stylesheet" href="${f}" />`).join('\n    '))
  .replace('<!--scripts-->', js.map((f) => `<script type="module" src="${f}"></script>`).join('\n    '));
await writeFile(join(outdir, 'index.html'), html);

if (!quiet) {
  for (const f of [...js, ...css, 'index.html']) {
    const bytes = await readFile(join(outdir, f));
    const gz = gzipSync(bytes, { level: 9 }).length;
    console.log(
      `${relative(root, join(outdir, f)).padEnd(40)} ${String(bytes.length).padStart(7)} bytes, ${String(gz).padStart(6)} gzipped`,
    );
  }
}
