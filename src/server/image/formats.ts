/**
 * The registry's disk formats and the engine's: one table. `disk_format` values are Glance's
 * (plus `qed`, which vdisk accepts as it accepts qcow2: the master/differential workflow of
 * the seed notes uses it); the engine names vhd `vpc`. Formats not listed hold raw-like data
 * (iso, ami…) that the engine reads as raw.
 */
export const ENGINE_FORMAT: Readonly<Record<string, string>> = {
  raw: 'raw',
  qcow2: 'qcow2',
  qed: 'qed',
  vmdk: 'vmdk',
  vdi: 'vdi',
  vhd: 'vpc',
  vhdx: 'vhdx',
};

/** The engine format that reads an image of this disk_format (raw-like formats read as raw). */
export const engineFormatOf = (diskFormat: string | null): string =>
  (diskFormat !== null ? ENGINE_FORMAT[diskFormat] : undefined) ?? 'raw';

/** The disk_format of an engine format, for messages ('vpc' → 'vhd'). */
export const diskFormatOf = (engine: string): string =>
  Object.entries(ENGINE_FORMAT).find(([, e]) => e === engine)?.[0] ?? engine;

/** disk_formats that may name a master (backing_image_id): the formats with backing files. */
export const LAYERED_FORMATS: readonly string[] = ['qcow2', 'qed'];
