import { describe, expect, it } from 'vitest';
import { VdiskError } from '../core/errors.js';
import { reportError } from './errors.js';
import { bufferIo } from './io.js';

describe('reportError', () => {
  const report = (err: unknown) => {
    const io = bufferIo();
    const code = reportError(io, err);
    return { code, err: io.stderr };
  };

  it('prints a VdiskError as one line', () => {
    expect(report(new VdiskError('INVALID_ARGUMENT', 'Invalid image size specified.'))).toEqual({
      code: 1,
      err: 'vdisk: Invalid image size specified.\n',
    });
  });

  it('words a refused allocation as strerror(ENOMEM), not as an internal error', () => {
    for (const message of [
      'Array buffer allocation failed',
      'WebAssembly.instantiate(): Out of memory: Cannot allocate Wasm memory for new instance',
    ]) {
      const r = report(new RangeError(message));
      expect(r.code).toBe(1);
      expect(r.err).toBe(
        `vdisk: Cannot allocate memory (${message}): raise the process's memory limit or use smaller buffers\n`,
      );
    }
  });

  it('keeps other errors as internal errors, on one line', () => {
    expect(report(new RangeError('Offset is outside the bounds of the DataView')).err).toBe(
      'vdisk: internal error: Offset is outside the bounds of the DataView\n',
    );
  });
});
