/**
 * The native zero scan (native/vdisk_native.c allocatedSectorsMin) gives what the JavaScript one
 * gives, run by run, on buffers of data and zero runs of every length around the alignment and
 * `min` boundaries; convert's byte-for-byte agreement with qemu-img rests on the JavaScript one
 * (convert and map tests against qemu-img).
 */
import { describe, expect, it } from 'vitest';
import { native } from '../native/index.js';
import { rng } from '../test/rng.js';
import { allocatedSectorsMin, allocatedSectorsMinJs, SECTOR } from './buffers.js';

describe('allocatedSectorsMin', () => {
  it('native and JavaScript agree on every run', () => {
    expect(native?.allocatedSectorsMin, 'the native addon is built').toBeTypeOf('function');
    const r = rng(0x5eed);
    let runs = 0;
    for (let round = 0; round < 600; round++) {
      const sectors = 1 + Math.floor(r() * 600);
      const buf = Buffer.alloc(sectors * SECTOR);
      // Runs of data and zero sectors; data sectors sometimes zero but for one inner byte.
      for (let s = 0; s < sectors; ) {
        const len = 1 + Math.floor(r() * (r() < 0.5 ? 4 : 40));
        if (r() < 0.5) {
          for (let i = s; i < Math.min(sectors, s + len); i++) {
            const at = r() < 0.3 ? Math.floor(r() * SECTOR) : 0;
            buf[i * SECTOR + at] = 1 + Math.floor(r() * 255);
          }
        }
        s += len;
      }
      const min = [1, 8, 16, 128][Math.floor(r() * 4)]!;
      const alignment = [1, 8, 128][Math.floor(r() * 3)]!;
      const base = Math.floor(r() * 1000);
      for (let pos = 0; pos < sectors; ) {
        const sub = buf.subarray(pos * SECTOR);
        const n = sectors - pos;
        const want = allocatedSectorsMinJs(sub, n, min, base + pos, alignment);
        expect(allocatedSectorsMin(sub, n, min, base + pos, alignment), `round ${round} at ${pos}`).toEqual(
          want,
        );
        expect(want[1]).toBeGreaterThan(0);
        pos += want[1];
        runs++;
      }
    }
    expect(runs).toBeGreaterThan(2500);
  });

  it('refuses a count past the buffer', () => {
    expect(() => native!.allocatedSectorsMin!(Buffer.alloc(1024), 3, 8, 0, 8)).toThrow();
  });
});
