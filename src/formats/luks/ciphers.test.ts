/**
 * Known-answer tests of the TypeScript block ciphers, from the published vectors: the Twofish
 * paper's tables, the Serpent AES submission's files and the NESSIE vectors, RFC 2144's CAST-128
 * vectors. Every vector is also decrypted back.
 */
import { describe, expect, it } from 'vitest';
import { Cast5 } from './cast5.js';
import type { BlockCipher } from './crypto.js';
import { Serpent } from './serpent.js';
import { Twofish } from './twofish.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const reversed = (s: string) => hex(s).reverse();

function expectVector(c: BlockCipher, pt: Buffer, ct: Buffer): void {
  const out = Buffer.alloc(pt.length);
  c.encrypt(pt, out);
  expect(out.toString('hex')).toBe(ct.toString('hex'));
  const back = Buffer.alloc(pt.length);
  c.decrypt(out, back);
  expect(back.toString('hex')).toBe(pt.toString('hex'));
  // In place, as the sector modes use it.
  const inPlace = Buffer.from(pt);
  c.encrypt(inPlace, inPlace);
  expect(inPlace.equals(ct)).toBe(true);
}

describe('Twofish (Schneier et al., "Twofish: A 128-Bit Block Cipher", Appendix A)', () => {
  const zero16 = hex('00000000000000000000000000000000');
  it('the paper vectors for 128, 192 and 256-bit keys', () => {
    expectVector(new Twofish(Buffer.alloc(16)), zero16, hex('9F589F5CF6122C32B6BFEC2F2AE8C35A'));
    expectVector(
      new Twofish(hex('0123456789ABCDEFFEDCBA98765432100011223344556677')),
      zero16,
      hex('CFD1D2E5A9BE9CDF501F13B892BD2248'),
    );
    expectVector(
      new Twofish(hex('0123456789ABCDEFFEDCBA987654321000112233445566778899AABBCCDDEEFF')),
      zero16,
      hex('37527BE0052334B89F0CFCCAE87CFA20'),
    );
  });

  // ecb_tbl.txt: from a zero key and block, each ciphertext is the next plaintext and the key
  // is the previous plaintext followed by the previous key (cut to the key length).
  const chains: Array<[number, Record<number, string>]> = [
    [
      16,
      {
        1: '9F589F5CF6122C32B6BFEC2F2AE8C35A',
        2: 'D491DB16E7B1C39E86CB086B789F5419',
        3: '019F9809DE1711858FAAC3A3BA20FBC3',
        49: '5D9D4EEFFA9151575524F115815A12E0',
      },
    ],
    [
      24,
      {
        1: 'EFA71F788965BD4453F860178FC19101',
        2: '88B2B2706B105E36B446BB6D731A1E88',
        3: '39DA69D6BA4997D585B6DC073CA341B2',
        49: 'E75449212BEEF9F4A390BD860A640941',
      },
    ],
    [
      32,
      {
        1: '57FF739D4DC92C1BD7FC01700CC8216F',
        2: 'D43BB7556EA32E46F2A282B7D45B4E0D',
        3: '90AFE91BB288544F2C32DC239B2635E6',
        49: '37FE26FF1CF66175F5DDF4C33B97A205',
      },
    ],
  ];
  for (const [len, want] of chains) {
    it(`ecb_tbl.txt iterations, ${len * 8}-bit key`, () => {
      let key = Buffer.alloc(len);
      let pt = Buffer.alloc(16);
      for (let i = 1; i <= 49; i++) {
        const c = new Twofish(key);
        const ct = Buffer.alloc(16);
        c.encrypt(pt, ct);
        const w = want[i];
        if (w !== undefined) expectVector(c, pt, hex(w));
        key = Buffer.concat([pt, key]).subarray(0, len);
        pt = ct;
      }
    });
  }
});

describe('Serpent (AES submission; NESSIE)', () => {
  // NESSIE's vectors are in the byte order of nettle, Linux and QEMU: bytes load as
  // little-endian words.
  const nessie: Array<[string, string, string, string]> = [
    [
      '128 set 1 #0',
      '80000000000000000000000000000000',
      '00000000000000000000000000000000',
      '264E5481EFF42A4606ABDA06C0BFDA3D',
    ],
    [
      '128 set 4 #0',
      '000102030405060708090A0B0C0D0E0F',
      '00112233445566778899AABBCCDDEEFF',
      '563E2CF8740A27C164804560391E9B27',
    ],
    [
      '128 set 4 #1',
      '2BD6459F82C5B300952C49104881FF48',
      'EA024714AD5C4D84EA024714AD5C4D84',
      '92D7F8EF2C36C53409F275902F06539F',
    ],
    [
      '192 set 4 #0',
      '000102030405060708090A0B0C0D0E0F1011121314151617',
      '00112233445566778899AABBCCDDEEFF',
      '6AB816C82DE53B93005008AFA2246A02',
    ],
    [
      '192 set 4 #1',
      '2BD6459F82C5B300952C49104881FF482BD6459F82C5B300',
      'EA024714AD5C4D84EA024714AD5C4D84',
      '827B18C2678A239DFC5512842000E204',
    ],
    [
      '256 set 4 #0',
      '000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F',
      '00112233445566778899AABBCCDDEEFF',
      '2868B7A2D28ECD5E4FDEFAC3C4330074',
    ],
    [
      '256 set 4 #1',
      '2BD6459F82C5B300952C49104881FF482BD6459F82C5B300952C49104881FF48',
      'EA024714AD5C4D84EA024714AD5C4D84',
      '3E507730776B93FDEA661235E1DD99F0',
    ],
  ];
  for (const [name, key, pt, ct] of nessie) {
    it(`NESSIE Serpent-${name}`, () => expectVector(new Serpent(hex(key)), hex(pt), hex(ct)));
  }

  // The submission's ecb_vk.txt / ecb_vt.txt (I=1) print keys and blocks as numbers, most
  // significant digit first: the bytes are the other way round.
  const submission: Array<[string, number, 'vk' | 'vt', string]> = [
    ['128', 16, 'vk', '49AFBFAD9D5A34052CD8FFA5986BD2DD'],
    ['128', 16, 'vt', '10B5FFB720B8CB9002A1142B0BA2E94A'],
    ['192', 24, 'vk', 'E78E5402C7195568AC3678F7A3F60C66'],
    ['192', 24, 'vt', 'B10B271BA25257E1294F2B51F076D0D9'],
    ['256', 32, 'vk', 'ABED96E766BF28CBC0EBD21A82EF0819'],
    ['256', 32, 'vt', 'DA5A7992B1B4AE6F8C004BC8A7DE5520'],
  ];
  for (const [bits, len, file, ct] of submission) {
    it(`submission ecb_${file}.txt I=1, ${bits}-bit key (reversed byte order)`, () => {
      const one = `80${'00'.repeat(len - 1)}`;
      const key = file === 'vk' ? reversed(one) : Buffer.alloc(len);
      const pt = file === 'vt' ? reversed(`80${'00'.repeat(15)}`) : Buffer.alloc(16);
      expectVector(new Serpent(key), pt, reversed(ct));
    });
  }
});

describe('CAST5 (RFC 2144)', () => {
  it('Appendix B.1, 128-bit key', () => {
    expectVector(
      new Cast5(hex('01 23 45 67 12 34 56 78 23 45 67 89 34 56 78 9A')),
      hex('01 23 45 67 89 AB CD EF'),
      hex('23 8B 4F E5 84 7E 44 B2'),
    );
  });

  // A million key schedules: about ten seconds here, so only on request.
  it.skipIf(process.env['VDISK_SLOW_TESTS'] !== '1')(
    'Appendix B.2, full maintenance test',
    () => {
      const a = hex('01 23 45 67 12 34 56 78 23 45 67 89 34 56 78 9A');
      const b = Buffer.from(a);
      for (let i = 0; i < 1000000; i++) {
        new Cast5(b).encrypt(a, a);
        new Cast5(a).encrypt(b, b);
      }
      expect(a.toString('hex')).toBe('eea9d0a249fd3ba6b3436fb89d6dca92');
      expect(b.toString('hex')).toBe('b2c95eb00c31ad7180ac05b8e83d696e');
    },
    120000,
  );
});

describe('block cipher bounds', () => {
  it('encrypts the blocks of [start, end) only', () => {
    for (const c of [
      new Twofish(Buffer.alloc(32, 1)),
      new Serpent(Buffer.alloc(16, 2)),
      new Cast5(Buffer.alloc(16, 3)),
    ]) {
      const b = c.blockSize;
      const data = Buffer.alloc(4 * b, 0x42);
      const whole = Buffer.from(data);
      c.encrypt(whole, whole);
      const part = Buffer.from(data);
      c.encrypt(part, part, b, 3 * b);
      expect(part.subarray(0, b).equals(data.subarray(0, b))).toBe(true);
      expect(part.subarray(b, 3 * b).equals(whole.subarray(b, 3 * b))).toBe(true);
      expect(part.subarray(3 * b).equals(data.subarray(3 * b))).toBe(true);
      c.decrypt(part, part, b, 3 * b);
      expect(part.equals(data)).toBe(true);
    }
  });

  it('refuses key sizes QEMU does not use', () => {
    expect(() => new Twofish(Buffer.alloc(20))).toThrow(RangeError);
    expect(() => new Serpent(Buffer.alloc(8))).toThrow(RangeError);
    expect(() => new Cast5(Buffer.alloc(10))).toThrow(RangeError);
  });
});
