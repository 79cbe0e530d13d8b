/**
 * The settings table of `vdisk serve`: every setting from its flag, its environment variable
 * and its config-file key, with flags winning over the environment over the file over the
 * default; bad values and unknown keys in one line; `--help` generated from the table.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vdisk } from '../test/oracle.js';
import { defaultSettings } from './context.js';
import { envName, resolveConfig, SETTINGS } from './settings.js';

const dir = mkdtempSync(join(tmpdir(), 'vdisk-settings-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const resolve = (flags: Record<string, string>, env: Record<string, string> = {}) => {
  const warnings: string[] = [];
  return resolveConfig(new Map(Object.entries(flags)), env, (w) => warnings.push(w)).then((c) => ({
    c,
    warnings,
  }));
};

describe('vdisk serve settings', () => {
  it('defaults are the server defaults', async () => {
    const { c } = await resolve({});
    expect(c.settings).toEqual(defaultSettings());
    expect([c.host, c.port, c.dataDir]).toEqual(['127.0.0.1', 9292, 'vdisk-data']);
  });

  it('a flag wins over the environment, which wins over the file', async () => {
    const file = join(dir, 'a.conf');
    writeFileSync(
      file,
      [
        "# an operator's file, Glance's names",
        '[DEFAULT]',
        'bind_port = 9300',
        'image_size_cap = 2G',
        'user_storage_quota = 0',
        'enabled_import_methods = glance-direct',
        'workers = 4',
        '[image_format]',
        'require_image_format_match = false',
        'disk_formats = raw,qcow2',
        '[import_filtering_opts]',
        'allowed_ports = 80,8080',
        '[image_conversion]',
        'output_format = qcow2',
      ].join('\n'),
    );
    const { c, warnings } = await resolve({ config: file }, {});
    expect(c.port).toBe(9300);
    expect(c.settings.imageSizeCap).toBe(2 * 2 ** 30);
    expect(c.settings.userStorageQuota).toBe(-1);
    expect(c.settings.importMethods).toEqual(['glance-direct']);
    expect(c.settings.requireImageFormatMatch).toBe(false);
    expect(c.settings.diskFormats).toEqual(['raw', 'qcow2']);
    expect(c.settings.importAllowedPorts).toEqual([80, 8080]);
    expect(c.settings.importConvertTo).toBe('qcow2');
    expect(warnings).toEqual([`${file}:7: 'workers' is not a vdisk serve setting; ignored`]);
    const env = { VDISK_PORT: '9400', VDISK_REQUIRE_FORMAT_MATCH: 'true' };
    const e = (await resolve({ config: file }, env)).c;
    expect([e.port, e.settings.requireImageFormatMatch]).toEqual([9400, true]);
    const f = (await resolve({ config: file, port: '9500', 'no-require-format-match': '' }, env)).c;
    expect([f.port, f.settings.requireImageFormatMatch]).toEqual([9500, false]);
  });

  it('bad values and unknown formats are one-line errors that name where they came from', async () => {
    await expect(resolve({ port: 'x' })).rejects.toThrow("Invalid value for --port: 'x' (a port number)");
    await expect(resolve({}, { VDISK_IMAGE_SIZE_CAP: '12Q' })).rejects.toThrow(
      "Invalid value for VDISK_IMAGE_SIZE_CAP: '12Q'",
    );
    await expect(resolve({ 'disk-formats': 'raw,floppy' })).rejects.toThrow('Unknown disk format: floppy');
    await expect(resolve({ 'import-methods': 'glance-direct,ftp' })).rejects.toThrow(
      'Unknown import method: ftp',
    );
    await expect(resolve({ 'import-convert-to': 'vmdk' })).rejects.toThrow('one of raw, qcow2');
    const bad = join(dir, 'bad.conf');
    writeFileSync(bad, '[DEFAULT]\nthis is not ini\n');
    await expect(resolve({ config: bad })).rejects.toThrow(`${bad}:2: expected 'key = value'`);
    await expect(resolve({ config: join(dir, 'missing.conf') })).rejects.toThrow(
      'Could not read the configuration file',
    );
  });

  it('every setting has a flag, a variable, a key and help; --help shows them all', async () => {
    const r = await vdisk(['serve', '--help']);
    expect(r.code).toBe(0);
    for (const s of SETTINGS) {
      expect(r.stdout).toContain(s.kind === 'bool' ? `--[no-]${s.flag}` : `--${s.flag} `);
      expect(r.stdout).toContain(envName(s));
      expect(r.stdout).toContain(`[${s.section}] ${s.key}`);
    }
    expect(new Set(SETTINGS.map((s) => s.flag)).size).toBe(SETTINGS.length);
    expect(new Set(SETTINGS.map((s) => s.key)).size).toBe(SETTINGS.length);
  });
});
