# Prints the round code of src/formats/luks/serpent.ts (encrypt or decrypt: eight rounds S0..S7
# inline), each S-box as its output bits' algebraic normal form (XOR of ANDs of the input bits),
# computed from the S-box tables of the Serpent AES submission by the binary Moebius transform.
# Usage: python3 scripts/serpent-sboxes.py encrypt|decrypt
# The S-boxes S0..S7 of the Serpent AES submission.
S = [
 [3,8,15,1,10,6,5,11,14,13,4,2,7,0,9,12],
 [15,12,2,7,9,0,5,10,1,11,14,8,6,13,3,4],
 [8,6,7,9,3,12,10,15,13,1,14,4,0,11,5,2],
 [0,15,11,8,12,9,6,3,13,1,2,4,10,7,5,14],
 [1,15,8,3,12,0,11,6,2,5,4,10,9,14,7,13],
 [15,5,2,11,4,10,9,12,0,3,14,8,13,6,7,1],
 [7,2,12,5,8,4,6,11,14,9,1,15,13,3,10,0],
 [1,13,15,0,14,8,2,11,7,4,12,10,9,3,5,6],
]


def inv(t):
    r = [0] * 16
    for i, v in enumerate(t):
        r[v] = i
    return r


V = 'abcd'  # the input words: bit i of a, b, c, d are bits 0..3 of nibble i


def anf(f):
    """Algebraic normal form of a 4-input boolean function (truth table f): coefficient per monomial."""
    c = list(f)
    for i in range(4):
        for m in range(16):
            if m >> i & 1:
                c[m] ^= c[m ^ (1 << i)]
    return c


def name(m):
    return ''.join(V[i] for i in range(4) if m >> i & 1)


def inline(t, src, dst):
    """The S-box as a block of statements: reads the words named in src, writes those in dst."""
    outs = []
    need = set()
    for bit in range(4):
        c = anf([(t[x] >> bit) & 1 for x in range(16)])
        mons = [m for m in range(16) if c[m]]
        outs.append(mons)
        need.update(m for m in mons if bin(m).count('1') >= 2)
    allm = set()
    for m in need:
        x = m
        while bin(x).count('1') >= 2:
            allm.add(x)
            x &= ~(1 << (x.bit_length() - 1))
    lines = [f'const {V[i]} = {src[i]};' for i in range(4)]
    for m in sorted(allm, key=lambda m: (bin(m).count('1'), m)):
        hi = m.bit_length() - 1
        lines.append(f'const {name(m)} = {name(m & ~(1 << hi))} & {V[hi]};')
    for bit, mons in enumerate(outs):
        terms = [name(m) for m in mons if m]
        e = ' ^ '.join(terms)
        if 0 in mons:
            e = f'~({e})' if len(terms) > 1 else f'~{e}'
        lines.append(f'{dst[bit]} = {e};')
    return lines


LT = [
    'x0 = (x0 << 13) | (x0 >>> 19);',
    'x2 = (x2 << 3) | (x2 >>> 29);',
    'x1 ^= x0 ^ x2;',
    'x3 ^= x2 ^ (x0 << 3);',
    'x1 = (x1 << 1) | (x1 >>> 31);',
    'x3 = (x3 << 7) | (x3 >>> 25);',
    'x0 ^= x1 ^ x3;',
    'x2 ^= x3 ^ (x1 << 7);',
    'x0 = (x0 << 5) | (x0 >>> 27);',
    'x2 = (x2 << 22) | (x2 >>> 10);',
]
ILT = [
    'x2 = (x2 >>> 22) | (x2 << 10);',
    'x0 = (x0 >>> 5) | (x0 << 27);',
    'x2 ^= x3 ^ (x1 << 7);',
    'x0 ^= x1 ^ x3;',
    'x3 = (x3 >>> 7) | (x3 << 25);',
    'x1 = (x1 >>> 1) | (x1 << 31);',
    'x3 ^= x2 ^ (x0 << 3);',
    'x1 ^= x0 ^ x2;',
    'x2 = (x2 >>> 3) | (x2 << 29);',
    'x0 = (x0 >>> 13) | (x0 << 19);',
]
X = ['x0', 'x1', 'x2', 'x3']


def block(lines, indent):
    pad = ' ' * indent
    return [pad + '{'] + [pad + '  ' + l for l in lines] + [pad + '}']


def encrypt_rounds(indent):
    """Eight rounds (S0..S7) of a loop over kr = 0, 32, 64, 96 (the words of K_(kr/4))."""
    out = []
    for i in range(8):
        keyed = [f'x{j} ^ k[kr + {4 * i + j}]!'.replace('kr + 0]', 'kr]') for j in range(4)]
        out += [' ' * indent + f'// Round kr/4 + {i}: K, S{i}, then the linear transformation.']
        out += block(inline(S[i], keyed, X), indent)
        if i == 7:
            out.append(' ' * indent + 'if (kr === 96) break; // the last round has K32 instead')
        out += [' ' * indent + l for l in LT]
    return out


def decrypt_rounds(indent):
    out = []
    for i in reversed(range(8)):
        if i == 7:
            out.append(' ' * indent + 'if (kr !== 96) {')
            out += [' ' * (indent + 2) + l for l in ILT]
            out.append(' ' * indent + '}')
        else:
            out += [' ' * indent + l for l in ILT]
        out.append(' ' * indent + f'// Inverse S{i}, then K of round kr/4 + {i}.')
        body = inline(inv(S[i]), X, X)
        body += [f'x{j} ^= k[kr + {4 * i + j}]!;'.replace('kr + 0]', 'kr]') for j in range(4)]
        out += block(body, indent)
    return out


if __name__ == '__main__':
    import sys
    which = sys.argv[1] if len(sys.argv) > 1 else 'encrypt'
    print('\n'.join(encrypt_rounds(8) if which == 'encrypt' else decrypt_rounds(8)))
