"""Time and memory of the TransNeXt backbone: fast path vs the reference (official computation).

Every case (arch x input x bias mode x task x implementation) runs in a fresh subprocess, so
peak memory is that case's alone: the growth of the process's peak RSS over its RSS before the
measured call (model and input already built). Time is the median of ``--runs`` calls after a
warm-up. Ratios compare each implementation with the reference of the same case, measured in
the same run. Achieved GFLOP/s uses the FLOPs counted by ``torch.utils.flop_counter`` and is
set against this machine's fp32 matmul speed, measured at the start.

    python tools/analysis/benchmark_backbone.py                        # default table
    python tools/analysis/benchmark_backbone.py --sizes 512x512 --tasks train --runs 2
    python tools/analysis/benchmark_backbone.py --out results.json     # also writes .csv
"""
import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

IMPLS = {
    'reference': dict(attention_mode='reference', attn_impl='torch'),
    'fast': dict(attention_mode='fast', attn_impl='auto'),
    'fast-torch': dict(attention_mode='fast', attn_impl='torch'),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--archs', nargs='+', default=['tiny'])
    p.add_argument('--sizes', nargs='+', default=['800x1216', '512x512'],
                   help='HxW inputs; img_size is 800 for inputs with a side >= 800, else 512')
    p.add_argument('--modes', nargs='+', default=['interpolation', 'extrapolation'])
    p.add_argument('--tasks', nargs='+', default=['infer', 'train'],
                   help='infer: forward, batch 1, no grad; train: forward+backward, batch 2')
    p.add_argument('--train-sizes', nargs='+', default=['512x512'],
                   help='sizes at which the train task runs')
    p.add_argument('--impls', nargs='+', default=['reference', 'fast'], choices=sorted(IMPLS))
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='benchmark_backbone.json',
                   help='JSON results (a CSV is written next to it)')
    p.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return p.parse_args()


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(threads: int) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9


def run_case(spec: dict) -> dict:
    """Run one case in this process; returns its measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from mmtransnext.models import TransNeXt
    torch.set_num_threads(spec['threads'])
    torch.manual_seed(0)
    h, w = spec['size']
    train = spec['task'] == 'train'
    before_build = rss_mb()
    model = TransNeXt(spec['arch'], img_size=800 if max(h, w) >= 800 else 512,
                      pretrain_size=224, is_extrapolation=spec['mode'] == 'extrapolation',
                      **IMPLS[spec['impl']])
    model.train(train)
    build_mb = peak_rss_mb() - before_build
    x = torch.randn(2 if train else 1, 3, h, w)

    def step():
        if train:
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    base = rss_mb()
    start = time.perf_counter()
    step()  # warm-up: also builds tables; its peak is this case's peak
    first = time.perf_counter() - start
    peak = peak_rss_mb() - base
    times = []
    for _ in range(spec['runs']):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    flops = 0.0
    if spec.get('count_flops'):
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
    return dict(time_s=statistics.median(times), first_s=first, peak_mb=peak,
                build_mb=build_mb, flops=flops)


def main() -> None:
    args = parse_args()
    if args.case:
        print('RESULT ' + json.dumps(run_case(json.loads(args.case))))
        return
    machine = matmul_gflops(args.threads)
    print(f'fp32 matmul on {args.threads} threads: {machine:.0f} GFLOP/s', flush=True)
    cases = []
    for arch in args.archs:
        for size in args.sizes:
            hw = tuple(int(v) for v in size.lower().split('x'))
            for task in args.tasks:
                if task == 'train' and size not in args.train_sizes:
                    continue
                for mode in args.modes:
                    for impl in args.impls:
                        cases.append(dict(arch=arch, size=hw, task=task, mode=mode, impl=impl,
                                          runs=args.runs, threads=args.threads))
    results: List[Dict] = []
    for i, spec in enumerate(cases, 1):
        label = (f"{spec['arch']} {spec['size'][0]}x{spec['size'][1]} {spec['task']} "
                 f"{spec['mode']} {spec['impl']}")
        print(f'[{i}/{len(cases)}] {label} ...', end=' ', flush=True)
        # FLOPs are counted once per shape, on the reference case (all aten ops).
        spec = dict(spec, count_flops=spec['impl'] == 'reference')
        proc = subprocess.run([sys.executable, __file__, '--case', json.dumps(spec)],
                              capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
        if proc.returncode or not line:
            print('failed\n' + proc.stderr[-2000:])
            continue
        result = dict(spec, **json.loads(line[0][len('RESULT '):]))
        print(f"{result['time_s']:.2f} s, peak +{result['peak_mb']:.0f} MB", flush=True)
        results.append(result)

    def key(r):
        return (r['arch'], tuple(r['size']), r['task'], r['mode'])

    refs = {key(r): r for r in results if r['impl'] == 'reference'}
    header = (f"{'arch':<6}{'input':>10}{'task':>7}{'mode':>15}{'impl':>12}{'time s':>9}"
              f"{'speed-up':>10}{'peak MB':>9}{'mem ratio':>11}{'build MB':>10}{'GFLOP/s':>9}"
              f"{'% matmul':>10}")
    print('\n' + header + '\n' + '-' * len(header))
    for r in results:
        ref = refs.get(key(r))
        flops = ref['flops'] if ref else 0
        r['speedup'] = ref['time_s'] / r['time_s'] if ref else float('nan')
        r['memory_ratio'] = ref['peak_mb'] / max(r['peak_mb'], 1) if ref else float('nan')
        r['gflops'] = flops / r['time_s'] / 1e9 if flops else float('nan')
        r['matmul_fraction'] = r['gflops'] / machine
        print(f"{r['arch']:<6}{r['size'][0]:>5}x{r['size'][1]:<4}{r['task']:>7}{r['mode']:>15}"
              f"{r['impl']:>12}{r['time_s']:>9.2f}{r['speedup']:>9.2f}x{r['peak_mb']:>9.0f}"
              f"{r['memory_ratio']:>10.2f}x{r['build_mb']:>10.0f}{r['gflops']:>9.1f}"
              f"{100 * r['matmul_fraction']:>9.0f}%")
    with open(args.out, 'w') as f:
        json.dump(dict(matmul_gflops=machine, results=results), f, indent=1)
    csv_path = os.path.splitext(args.out)[0] + '.csv'
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]) if results else [])
        writer.writeheader()
        writer.writerows(results)
    print(f'\nwritten: {args.out}, {csv_path}')


if __name__ == '__main__':
    main()
