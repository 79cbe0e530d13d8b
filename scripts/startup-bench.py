#!/usr/bin/env python3
"""Start-up of commands, interleaved (docs/benchmarks.md, "Start-up: built-ins, chunks…").

usage: scripts/startup-bench.py N 'label=command' ...

Runs N rounds; each round runs every command once (through /bin/sh -c 'exec …', in the
current directory, stdout and stderr pipes, as tests and scripts run vdisk). Prints the
load average and, per command, the median wall time and the median CPU (user + sys) of the
child. Compare with `node -e 0` in the same run.
"""
import os
import resource
import statistics
import subprocess
import sys
import time

n = int(sys.argv[1])
cmds = [a.split('=', 1) for a in sys.argv[2:]]
res = {label: [] for label, _ in cmds}
for _ in range(n):
    for label, cmd in cmds:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(['/bin/sh', '-c', 'exec ' + cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            print(label, 'exit', p.returncode, p.stderr[:200], file=sys.stderr)
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        res[label].append(((t1 - t0) * 1000, cpu * 1000))
print('load average', ' '.join(f'{x:.2f}' for x in os.getloadavg()))
for label, _ in cmds:
    wall = statistics.median(x[0] for x in res[label])
    cpu = statistics.median(x[1] for x in res[label])
    print(f'{label:32s} wall {wall:6.1f} ms  cpu {cpu:6.1f} ms  (n={n})')
