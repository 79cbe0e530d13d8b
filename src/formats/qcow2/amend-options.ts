/**
 * The options `qemu-img amend` accepts for qcow2 (QEMU 7.2's qcow2_amend_opts), in QEMU's
 * declaration order: qcow2_amend_options checks them in this order, so that with several bad
 * options the first error is the one qemu-img reports. `-o help` lists them sorted.
 */
import type { CreateOptionSpec } from '../../core/driver.js';

/** The options qemu-img create and amend declare alike (qcow2_create_opts, qcow2_amend_opts). */
export const QCOW2_IMAGE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
];

export const QCOW2_AMEND_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'encrypt.state', type: 'string', help: 'Select new state of affected keyslots (active/inactive)' },
  { name: 'encrypt.keyslot', type: 'number', help: 'Select a single keyslot to modify explicitly' },
  { name: 'encrypt.old-secret', type: 'string', help: 'Select all keyslots that match this password' },
  {
    name: 'encrypt.new-secret',
    type: 'string',
    help: 'New secret to set in the matching keyslots. Empty string to erase',
  },
  { name: 'encrypt.iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
  ...QCOW2_IMAGE_OPTIONS,
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits' },
];
