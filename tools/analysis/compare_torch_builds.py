"""CPU speed of the same backbone under two (or more) Python environments, e.g. two builds of
torch, measured side by side in one run.

Each round runs every environment once, in an order rotating per round, each in a fresh
subprocess of ``benchmark_backbone.py``'s timing mode (same case, same seed, one warm-up call,
then ``--calls`` timed calls). A machine whose speed drifts over minutes (shared machines do)
moves all environments of a round alike, so the figure to read is the median over rounds of
each environment's time over the first environment's time in the same round. The fp32 matmul
speed of each environment is measured the same way.

    python tools/analysis/compare_torch_builds.py --python /path/to/env_a/bin/python \
        .venv/bin/python --sizes 512x512 800x1216 --tasks infer train --rounds 3

Set ``MMTRANSNEXT_JIT_BUILD=0`` and run from a checkout without a compiled ``_ext`` to compare
the torch builds alone (an extension built against one torch does not load in the other).
"""
import argparse
import json
import os
import statistics
import subprocess
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARK = os.path.join(HERE, 'benchmark_backbone.py')
#: Run in this folder: ``python -c`` finds benchmark_backbone there.
MATMUL = ('import json, torch; '
          'from benchmark_backbone import matmul_gflops; '
          'print("RESULT " + json.dumps([torch.__version__, matmul_gflops({threads})]))')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--python', nargs='+', required=True, metavar='EXE',
                   help='interpreters to compare; ratios are over the first')
    p.add_argument('--backbone', default='transnext')
    p.add_argument('--arch', default='tiny')
    p.add_argument('--impl', default='fast', help="implementation name (benchmark_backbone's)")
    p.add_argument('--mode', default='interpolation')
    p.add_argument('--sizes', nargs='+', default=['512x512'])
    p.add_argument('--tasks', nargs='+', default=['infer'], choices=['infer', 'train'])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--calls', type=int, default=1, help='timed calls per subprocess')
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    for exe in args.python:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            p.error(f'--python: {exe} is not an executable file')
    if args.rounds < 1 or args.calls < 1 or args.threads < 1:
        p.error('--rounds, --calls and --threads must be at least 1')
    return args


def _result(cmd: List[str], cwd: Optional[str] = None):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    if proc.returncode or not lines:
        raise SystemExit(f'error: {cmd[0]} failed:\n{proc.stderr[-2000:]}')
    return json.loads(lines[-1][len('RESULT '):])


def main(argv=None) -> None:
    args = parse_args(argv)
    exes = args.python
    cases = [(size, task) for size in args.sizes for task in args.tasks]
    # rows: label -> exe -> list of per-round figures (seconds, or GFLOP/s for the matmul)
    rows: Dict[str, Dict[str, List[float]]] = {}
    versions: Dict[str, str] = {}
    for r in range(args.rounds):
        order = exes[r % len(exes):] + exes[:r % len(exes)]
        for exe in order:
            version, gflops = _result([exe, '-c', MATMUL.format(threads=args.threads)], cwd=HERE)
            versions[exe] = version
            rows.setdefault('matmul GFLOP/s', {}).setdefault(exe, []).append(gflops)
        for size, task in cases:
            spec = dict(backbone=args.backbone, arch=args.arch,
                        size=[int(v) for v in size.lower().split('x')], task=task,
                        mode=args.mode, impls=[args.impl], runs=args.calls,
                        threads=args.threads)
            label = f'{args.arch} {size} {task} s'
            for exe in order:
                times = _result([exe, BENCHMARK, '--timing', json.dumps(spec)])[args.impl]
                rows.setdefault(label, {}).setdefault(exe, []).append(statistics.median(times))
            print(f'round {r + 1}/{args.rounds}: ' + ', '.join(
                f'{versions[e]} {rows[label][e][-1]:.2f} s' for e in exes) + f' ({label})',
                flush=True)
    names = [versions[e] for e in exes]
    print(f'\n{args.backbone} {args.impl} {args.mode}, {args.threads} threads, '
          f'{args.rounds} rounds (median; ratio = median over rounds of first / this)')
    print('| case | ' + ' | '.join(names) + ' | ' +
          ' | '.join(f'{n} vs {names[0]}' for n in names[1:]) + ' |')
    print('|---' * (1 + 2 * len(names) - 1) + '|')
    for label, per in rows.items():
        base = per[exes[0]]
        higher_better = label.startswith('matmul')
        ratios = []
        for e in exes[1:]:
            pairs = zip(per[e], base) if higher_better else zip(base, per[e])
            ratios.append(statistics.median(a / b for a, b in pairs))
        print(f'| {label} | ' + ' | '.join(f'{statistics.median(per[e]):.2f}' for e in exes) +
              ' | ' + ' | '.join(f'{x:.3f}x' for x in ratios) + ' |')


if __name__ == '__main__':
    main()
