# Prints the Serpent S-box functions of src/formats/luks/serpent.ts: each output bit in algebraic
# normal form (XOR of ANDs of the input bits), computed from the S-box tables of the Serpent
# AES submission by the binary Moebius transform. Usage: python3 scripts/serpent-sboxes.py
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
    r=[0]*16
    for i,v in enumerate(t): r[v]=i
    return r
V='abcd'
def anf(f):
    c=list(f)
    for i in range(4):
        for m in range(16):
            if m>>i&1: c[m]^=c[m^(1<<i)]
    return c
def name(m): return ''.join(V[i] for i in range(4) if m>>i&1)
def gen(fn, t):
    outs=[]; need=set()
    for bit in range(4):
        c=anf([(t[x]>>bit)&1 for x in range(16)])
        mons=[m for m in range(16) if c[m]]
        outs.append(mons)
        for m in mons:
            if bin(m).count('1')>=2: need.add(m)
    # closure: each needed monomial built from its prefix without the highest var
    allm=set()
    for m in need:
        x=m
        while bin(x).count('1')>=2:
            allm.add(x); x&=~(1<<(x.bit_length()-1))
    lines=[f'function {fn}(a: number, b: number, c: number, d: number, o: Int32Array): void {{']
    for m in sorted(allm,key=lambda m:(bin(m).count('1'),m)):
        hi=m.bit_length()-1; rest=m&~(1<<hi)
        lines.append(f'  const {name(m)} = {name(rest)} & {V[hi]};')
    for bit,mons in enumerate(outs):
        terms=[name(m) for m in mons if m]
        e=' ^ '.join(terms) if terms else '0'
        if 0 in mons: e=f'~({e})' if len(terms)>1 else f'~{e}'
        lines.append(f'  o[{bit}] = {e};')
    lines.append('}')
    return '\n'.join(lines)
out=[]
for i,t in enumerate(S): out.append(gen(f's{i}',t))
for i,t in enumerate(S): out.append(gen(f'si{i}',inv(t)))
print('\n\n'.join(out))
