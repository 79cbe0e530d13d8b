/**
 * Where a module runs from: tsc's output (dist/<dir>/<module>.js, beside its neighbours) or the
 * CLI script dist/cli/vdisk.cjs (scripts/build-cli.mjs), where every bundled module's
 * import.meta.url is the script's. Modules that find files relative to themselves (the zstd
 * worker, the database template, bin/vdisk) choose their relative path by it.
 */
export function inCliScript(moduleUrl: string): boolean {
  return moduleUrl.endsWith('.cjs');
}
