#!/usr/bin/env python3
"""Interleaved A/B timing of whole commands, as docs/benchmarks.md's stop figures are taken.

Usage: python3 scripts/ab-bench.py ROUNDS DIR label='command' [label='command' ...]

Each round runs every command once, in the order given, from DIR: before each command the
files DIR/o.* (the outputs, by convention) are removed and `sync` runs, so that one command's
dirty pages are not written back during the next. /usr/bin/time gives user and system seconds
and the peak RSS; the wall time is taken here, to the millisecond (time's own has 10 ms steps;
this one includes time and sh, ~1 ms). NODE_EXTRA_CA_CERTS is left out of the environment, as
bin/vdisk leaves it out of Node's. Prints, per label, the medians, the peak RSS and every wall time (on a
shared two-core machine a command sometimes takes twice its usual time; the list shows it).
"""
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, where = int(sys.argv[1]), sys.argv[2]
    cases = [a.split('=', 1) for a in sys.argv[3:]]
    env = dict(os.environ)
    env.pop('NODE_EXTRA_CA_CERTS', None)
    results = {label: [] for label, _ in cases}
    for _ in range(rounds):
        for label, cmd in cases:
            for f in glob.glob(os.path.join(where, 'o.*')):
                os.remove(f)
            subprocess.run(['sync'], check=True)
            fd, out = tempfile.mkstemp()
            os.close(fd)
            t0 = time.perf_counter()
            r = subprocess.run(['/usr/bin/time', '-o', out, '-f', '%U %S %M', 'sh', '-c', cmd],
                               env=env, cwd=where, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(f'{label}: exit {r.returncode}', file=sys.stderr)
            with open(out) as f:
                u, s, m = f.read().split()[-3:]
            os.remove(out)
            results[label].append((wall, float(u), float(s), int(m)))
    for label, rs in results.items():
        def med(k: int) -> float:
            return statistics.median(x[k] for x in rs)
        walls = ' '.join(f'{x[0]:.3f}' for x in rs)
        print(f'{label:12s} wall {med(0):.3f} user {med(1):.3f} sys {med(2):.3f} '
              f'rss {max(x[3] for x in rs) / 1024:.0f} MiB  all {walls}')


if __name__ == '__main__':
    main()
