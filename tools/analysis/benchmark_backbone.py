"""Time and memory of a backbone (TransNeXt: fast path vs the reference, i.e. the official
computation; TransXNet: its one implementation), one or several families side by side.

Every case (backbone x arch x input x bias mode x task x implementation) runs in a fresh
subprocess, so its memory figures are its own. Time is measured apart from memory, with all
implementations of a case in one process, same weights, called in turn for ``--runs`` rounds
after a warm-up call each: "time s" is an implementation's median, "speed-up" the median over
rounds of the reference's time over its time in the same round, so that the machine's speed
drifting during the run (shared machines drift by 2x over minutes) cancels out of the ratio.
Memory is given two ways, both for the first call at the case's input size (the one that also
builds the position tables and, without gradients, the CPB grids kept for reuse):

- peak tensor memory: the most bytes held by live tensors during that call, above what was
  held before it (the CPU allocator's running total, read from ``torch.profiler``'s memory
  events); what the implementation itself controls, like ``torch.cuda.max_memory_allocated``;
- peak RSS growth: the process's peak resident memory during that call over its resident
  memory before it (``VmHWM`` reset through ``/proc/self/clear_refs``). This also counts memory
  glibc keeps after tensors are freed, so it is coarser. Before the model is built, one call
  of a throwaway model (same arch and implementation, 64x64 input) initialises the libraries
  (oneDNN, thread pools, the compiled ops: some tens of MB paid once per process, whatever the
  input size); its memory is freed and the heap trimmed (``malloc_trim``) before each
  measurement. ``--cold`` skips that call, so the growth also holds the one-time
  initialisation. The profiled call that gives the tensor figure comes second, with the
  model's size-dependent caches dropped (``TransNeXt.clear_caches``): the profiler's own
  records would otherwise count as RSS.

Kernel launches (``launches.py``, this script's sibling module): the aten ops and Triton
kernels one warm call launches (a forward for infer, a training step for train), counted on CPU
after the memory measurements, with the host syncs (reads of tensor values) apart and the launches of the
first aggregated-attention block's forward. TransNeXt's ``triton`` implementation
(``attn_impl='triton'``, the GPU path) runs as on a GPU of ``--gpu-memory`` GB: its chunked
loops take that GPU's budgets (:func:`mmtransnext.ops.budget.gpu_budgets`; on a GPU they run
whole), and its Triton kernels are counted, not run (Triton's interpreter, the only way to run
them here, is far too slow at 800x1216). It has no time ("n/a"). Its memory figures are those
of this run under the GPU's budgets (whole-map chunks hold more than this machine's); a Triton
kernel allocates nothing, so skipping one changes no tensor figure. ``--interpret`` runs the
kernels in the interpreter for the memory figures (small inputs only; the interpreter's own
copies add a little). The other
implementations are counted with this machine's budgets and CPU ops (lower bounds of their
CUDA counts); ``--also-gpu-budgets`` also gives their launches and peak tensor memory under
the GPU's budgets.

Ratios compare each implementation with the reference of the same case, measured in the same
run (families without a reference implementation have none). Achieved GFLOP/s uses the FLOPs
``torch.utils.flop_counter`` counts on the reference, or on the only implementation
(grouped-convolution gradients counted correctly; the stock formula overcounts depthwise ones
by the group count) and is set against this machine's fp32 matmul speed, measured at the start.

    python tools/analysis/benchmark_backbone.py                        # default table
    python tools/analysis/benchmark_backbone.py --sizes 512x512 --tasks train --runs 2
    python tools/analysis/benchmark_backbone.py --out results.json     # also writes .csv
    python tools/analysis/benchmark_backbone.py --cold                 # RSS incl. library init
    python tools/analysis/benchmark_backbone.py --backbone transxnet transnext --tasks infer \
        --modes interpolation --impls default fast                     # the two families
    python tools/analysis/benchmark_backbone.py --sizes 512x512 800x1216 --train-sizes \
        512x512 800x1216 --modes extrapolation --impls fast triton --runs 0  # GPU-path launches

``--scaling``: TransNeXt's normal mode against its linear inference mode (``fixed_pool_size``,
``--fixed-pool-size``, default 7) at square inputs from 224 to 1280 (``--scaling-sizes``),
inference (batch 1, fast path, extrapolation mode, ``--archs``' first arch) in one process:
backbone time and the time spent inside the attention layers (median of ``--runs``, forward
hooks), peak tensor memory of a warm forward, and the exponent ``a`` of ``cost ~ pixels**a``
fitted (least squares on logs) to the attention time of all stages and of the
aggregated-attention stages 1-3 alone (stage 4's full attention is quadratic in its own tokens
in both modes):

    python tools/analysis/benchmark_backbone.py --scaling --archs micro --runs 3
"""
import argparse
import csv
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Dict, List, Optional, Tuple

from mmtransnext.cli import (ToolError, check_output_file, non_negative_int, positive_float,
                             positive_int, run_main)
from mmtransnext.models.backbones import families, family_named


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--backbone', nargs='+', default=['transnext'],
                   choices=sorted(name.lower() for name in families()),
                   help='families to measure, each with its own modes and implementations')
    p.add_argument('--archs', nargs='+', default=['tiny'])
    p.add_argument('--sizes', nargs='+', default=['800x1216', '512x512'],
                   help='HxW inputs; img_size is 800 for inputs with a side >= 800, else 512')
    p.add_argument('--modes', nargs='+', default=['interpolation', 'extrapolation'],
                   help='position-bias modes (those a family lacks are skipped)')
    p.add_argument('--tasks', nargs='+', default=['infer', 'train'],
                   help='infer: forward, batch 1, no grad; train: forward+backward, batch 2')
    p.add_argument('--train-sizes', nargs='+', default=['512x512'],
                   help='sizes at which the train task runs')
    p.add_argument('--impls', nargs='+', default=['reference', 'fast', 'default'],
                   help='implementations (those a family lacks are skipped): TransNeXt '
                   'reference, fast, fast-torch, triton (GPU path: launches and memory, '
                   'no time); TransXNet default')
    p.add_argument('--runs', type=non_negative_int, default=3, help='timed rounds; 0: no timing')
    p.add_argument('--gpu-memory', type=positive_float, default=80,
                   help='GB of the GPU whose chunk budgets the GPU path runs with')
    p.add_argument('--also-gpu-budgets', action='store_true',
                   help='also measure launches and peak tensor memory of the other '
                   "implementations under the GPU's budgets")
    p.add_argument('--interpret', action='store_true',
                   help='run the Triton kernels in the interpreter for the memory figures '
                   '(slow: small inputs only)')
    p.add_argument('--threads', type=positive_int, default=2)
    p.add_argument('--cold', action='store_true',
                   help='no library warm-up before the RSS measurement (see above)')
    p.add_argument('--out', default='benchmark_backbone.json',
                   help='JSON results (a CSV is written next to it)')
    p.add_argument('--scaling', action='store_true',
                   help='normal vs linear inference mode from 224 to 1280 (see above)')
    p.add_argument('--scaling-sizes', nargs='+', type=positive_int,
                   default=[224, 384, 512, 640, 896, 1280], help='square input sides of --scaling')
    p.add_argument('--fixed-pool-size', type=positive_int, default=7,
                   help='fixed_pool_size of the linear mode in --scaling')
    p.add_argument('--case', help=argparse.SUPPRESS)  # internal: run one case, print JSON
    p.add_argument('--timing', help=argparse.SUPPRESS)  # internal: time one case's impls
    return p.parse_args(argv)


def _status_mb(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def rss_mb() -> float:
    return _status_mb('VmRSS')


def rss_growth_mb(step) -> float:
    """Peak resident memory during ``step()`` over the resident memory before it."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
    base = rss_mb()
    step()
    return _status_mb('VmHWM') - base


def matmul_gflops(threads: int) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward`` (input and weight gradients), each as many as
    the forward convolution; ``w_shape`` already divides the input channels by the groups."""
    transposed, output_mask = args[4], args[7]
    forward = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def peak_tensor_mb(step) -> float:
    """Peak of the CPU allocator's total during ``step()``, over the total before it."""
    import tempfile
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'trace.json')
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)['traceEvents']
    memory = sorted((e for e in events if e.get('name') == '[memory]'
                     and 'Total Allocated' in e.get('args', {})), key=lambda e: e['ts'])
    if not memory:
        return 0.0
    before = memory[0]['args']['Total Allocated'] - memory[0]['args']['Bytes']
    return (max(e['args']['Total Allocated'] for e in memory) - before) / 2**20


def release_memory() -> None:
    """Collect garbage and return the heap's free memory to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run(model, x, train: bool) -> None:
    if train:
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)
    else:
        import torch
        with torch.no_grad():
            model(x)


def _setup(spec: dict) -> Tuple[bool, int]:
    """Threads and seed for a case; returns (train, batch)."""
    import torch
    torch.set_num_threads(spec['threads'])
    torch.manual_seed(0)
    train = spec['task'] == 'train'
    return train, 2 if train else 1


def _build(spec: dict, impl: str, img_size: Optional[int] = None):
    """The case's backbone for ``impl`` (its family's ``for_input_size``)."""
    fam = family_named(spec['backbone'])
    return fam.for_input_size(spec['arch'], tuple(spec['size']), spec['mode'], img_size,
                              **fam.implementations[impl]).train(spec['task'] == 'train')


def _gpu_budgets(spec: dict):
    from mmtransnext.ops.budget import gpu_budgets
    return gpu_budgets(int(spec['gpu_memory_gb'] * 2**30))


def run_case(spec: dict) -> dict:
    """Run one case's memory, launch (and, if asked, FLOP) measurements in this process; a
    GPU implementation's all under the GPU's budgets, with its kernels counted, not run
    (unless ``spec['interpret']``)."""
    with ExitStack() as stack:
        if spec['gpu_impl']:
            from launches import triton_kernel_counters
            stack.enter_context(_gpu_budgets(spec))
            if not spec['interpret']:
                stack.enter_context(triton_kernel_counters())
        return _measure_case(spec)


def _measure_case(spec: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from launches import count_launches, first_aggregated_attention
    train, batch = _setup(spec)
    if not spec.get('cold'):
        # One small call on a throwaway model initialises the libraries; its memory is freed
        # and returned to the system before anything is measured.
        _run(_build(spec, spec['impl'], img_size=64), torch.randn(batch, 3, 64, 64), train)
    release_memory()
    built = []
    build_mb = rss_growth_mb(lambda: built.append(_build(spec, spec['impl'])))
    model = built.pop()
    x = torch.randn(batch, 3, *spec['size'])

    def step():
        _run(model, x, train)

    release_memory()
    peak = rss_growth_mb(step)
    model.clear_caches()
    release_memory()
    tensor_peak = peak_tensor_mb(step)
    flops = 0.0
    if spec.get('count_flops'):
        counter = FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten.convolution_backward: _conv_backward_flops})
        with counter:
            step()
        flops = counter.get_total_flops()
    # The calls above built the size-dependent caches: the counted call is a warm one.
    block = first_aggregated_attention(model)
    launches = count_launches(step, block, warmup=0)
    result = dict(peak_mb=peak, tensor_peak_mb=tensor_peak, build_mb=build_mb, flops=flops,
                  budgets=_budget_label(spec) if spec['gpu_impl'] else 'cpu',
                  **_launch_fields(launches))
    if spec['also_gpu_budgets'] and not spec['gpu_impl']:
        with _gpu_budgets(spec):
            model.clear_caches()
            release_memory()
            gpu_tensor_peak = peak_tensor_mb(step)
            launches = count_launches(step, block, warmup=0)
        result.update(gpu_budgets=_budget_label(spec), gpu_tensor_peak_mb=gpu_tensor_peak,
                      **_launch_fields(launches, 'gpu_'))
    return result


def _budget_label(spec: dict) -> str:
    return f"gpu {spec['gpu_memory_gb']:g} GB"


def _launch_fields(count, prefix: str = '') -> dict:
    """JSON fields of a :class:`launches.LaunchCount`."""
    return {f'{prefix}launches': count.launches, f'{prefix}launches_aten': count.aten,
            f'{prefix}launches_triton': count.triton, f'{prefix}host_syncs': count.syncs,
            f'{prefix}block_launches': count.block}


def run_timing(spec: dict) -> dict:
    """Time every implementation of one (arch, input, task, mode) in this process: models
    with the same weights, called in turn for ``runs`` rounds (the order rotating each round)
    after one warm-up call each. Returns each implementation's times, round by round."""
    import torch
    train, batch = _setup(spec)
    impls = spec['impls']
    models = {impl: _build(spec, impl) for impl in impls}
    for impl in impls[1:]:
        models[impl].load_state_dict(models[impls[0]].state_dict())
    x = torch.randn(batch, 3, *spec['size'])
    for model in models.values():
        _run(model, x, train)
    times = {impl: [] for impl in impls}
    for r in range(spec['runs']):
        for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
            start = time.perf_counter()
            _run(models[impl], x, train)
            times[impl].append(time.perf_counter() - start)
    return times


def print_launches(results: List[dict]) -> None:
    """The launch table: one row per case, and one more under the GPU's budgets if measured."""
    print('\nKernel launches of one warm call (infer: a forward, batch 1; train: a training '
          'step, batch 2):\naten ops + Triton kernels, host syncs apart; 1st AA fwd: the first '
          'aggregated-attention block\'s forward.\nBudgets "gpu N GB": the chunk budgets of a '
          'GPU of N GB, Triton kernels counted, not run; "cpu": this\nmachine\'s budgets and '
          'CPU ops (lower bounds of the CUDA counts). tensor MB: peak tensor memory, as above.')
    header = (f"{'backbone':<10}{'arch':<6}{'input':>10}{'task':>7}{'mode':>15}{'impl':>11}"
              f"{'budgets':>13}{'launches':>9}{'aten':>8}{'triton':>7}{'syncs':>6}"
              f"{'1st AA fwd':>11}{'tensor MB':>10}")
    print(header + '\n' + '-' * len(header))
    for r in results:
        for prefix, budgets in (('', r['budgets']), ('gpu_', r.get('gpu_budgets'))):
            if budgets is None:
                continue
            block = r[prefix + 'block_launches']
            print(f"{r['backbone']:<10}{r['arch']:<6}{r['size'][0]:>5}x{r['size'][1]:<4}"
                  f"{r['task']:>7}{r['mode']:>15}{r['impl']:>11}{budgets:>13}"
                  f"{r[prefix + 'launches']:>9}{r[prefix + 'launches_aten']:>8}"
                  f"{r[prefix + 'launches_triton']:>7}{r[prefix + 'host_syncs']:>6}"
                  f"{'-' if block is None else block:>11}"
                  f"{r[prefix + 'tensor_peak_mb']:>10.0f}")


def fit_exponent(pixels: List[float], costs: List[float]) -> float:
    """Slope ``a`` of the least-squares line through ``(log pixels, log cost)``: the exponent of
    ``cost ~ pixels**a``."""
    xs, ys = [math.log(p) for p in pixels], [math.log(c) for c in costs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def time_attention(model, x, runs: int) -> Dict[str, float]:
    """Median over ``runs`` warm forwards (no grad) of the backbone's seconds and of the seconds
    spent inside its attention layers (all, and the aggregated-attention ones)."""
    import torch
    from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention
    spent = {'all': 0.0, 'aggregated': 0.0}
    starts = {}

    def before(module, inputs):
        starts[module] = time.perf_counter()

    def after(module, inputs, output):
        elapsed = time.perf_counter() - starts.pop(module)
        spent['all'] += elapsed
        if isinstance(module, AggregatedAttention):
            spent['aggregated'] += elapsed

    handles = []
    for module in model.modules():
        if isinstance(module, (AggregatedAttention, FullAttention)):
            handles += [module.register_forward_pre_hook(before),
                        module.register_forward_hook(after)]
    rounds = []
    try:
        with torch.no_grad():
            model(x)  # warm-up: tables, CPB grids
            for _ in range(runs):
                spent.update(all=0.0, aggregated=0.0)
                start = time.perf_counter()
                model(x)
                rounds.append((time.perf_counter() - start, spent['all'], spent['aggregated']))
    finally:
        for handle in handles:
            handle.remove()
    total, attention, aggregated = (statistics.median(r[i] for r in rounds) for i in range(3))
    return dict(time_s=total, attention_s=attention, aggregated_s=aggregated)


def run_scaling(args: argparse.Namespace) -> List[dict]:
    """``--scaling``: normal vs linear mode per size, then the fitted exponents (printed)."""
    import torch
    from mmtransnext.models import TransNeXt
    torch.set_num_threads(args.threads)
    if args.runs < 1:
        raise ToolError('--scaling needs --runs >= 1')
    arch = args.archs[0]
    results = []
    print(f'TransNeXt-{arch}, inference, batch 1, {args.threads} threads, median of '
          f'{args.runs}; linear: fixed_pool_size={args.fixed_pool_size}', flush=True)
    print(f'{"size":>5} {"mode":>6} {"time s":>8} {"attn s":>8} {"agg s":>8} {"peak MB":>8}')
    for side in args.scaling_sizes:
        for mode, fixed in (('normal', None), ('linear', args.fixed_pool_size)):
            torch.manual_seed(0)
            model = TransNeXt(arch, pretrain_size=224, is_extrapolation=True,
                              fixed_pool_size=fixed).eval()
            x = torch.randn(1, 3, side, side)
            row = dict(arch=arch, size=side, pixels=side * side, mode=mode,
                       fixed_pool_size=fixed, **time_attention(model, x, args.runs))
            with torch.no_grad():
                row['tensor_peak_mb'] = peak_tensor_mb(lambda: model(x))
            results.append(row)
            print(f'{side:>5} {mode:>6} {row["time_s"]:>8.3f} {row["attention_s"]:>8.3f} '
                  f'{row["aggregated_s"]:>8.3f} {row["tensor_peak_mb"]:>8.0f}', flush=True)
            del model
            release_memory()
    if len(args.scaling_sizes) > 1:
        print('\nfitted exponent a of cost ~ pixels**a')
        for mode in ('normal', 'linear'):
            rows = [r for r in results if r['mode'] == mode]
            pixels = [r['pixels'] for r in rows]
            fits = {key: fit_exponent(pixels, [r[key] for r in rows])
                    for key in ('time_s', 'attention_s', 'aggregated_s', 'tensor_peak_mb')}
            for r in rows:
                r['exponents'] = fits
            print(f'{mode:>6}: backbone time {fits["time_s"]:.2f}, attention time '
                  f'{fits["attention_s"]:.2f}, stages 1-3 attention time '
                  f'{fits["aggregated_s"]:.2f}, peak memory {fits["tensor_peak_mb"]:.2f}')
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if not (args.case or args.timing):
        check_output_file(args.out, '--out')
    if args.case:
        print('RESULT ' + json.dumps(run_case(json.loads(args.case))))
        return
    if args.timing:
        print('RESULT ' + json.dumps(run_timing(json.loads(args.timing))))
        return
    if args.scaling:
        results = run_scaling(args)
        with open(args.out, 'w') as f:
            json.dump(dict(scaling=results), f, indent=1)
        print(f'\nwritten: {args.out}')
        return
    machine = matmul_gflops(args.threads)
    print(f'fp32 matmul on {args.threads} threads: {machine:.0f} GFLOP/s', flush=True)
    cases = []
    for backbone in args.backbone:
        fam = family_named(backbone)
        impls = [i for i in args.impls if i in fam.implementations]
        # FLOPs are counted on the reference, else on the first implementation that runs here.
        counted = 'reference' if 'reference' in impls else \
            next((i for i in impls if i not in fam.gpu_implementations), None)
        for arch in args.archs:
            for size in args.sizes:
                hw = tuple(int(v) for v in size.lower().split('x'))
                for task in args.tasks:
                    if task == 'train' and size not in args.train_sizes:
                        continue
                    for mode in (m for m in args.modes if m in fam.size_modes):
                        for impl in impls:
                            cases.append(dict(backbone=backbone, arch=arch, size=hw, task=task,
                                              mode=mode, impl=impl, counted=counted,
                                              runs=args.runs, threads=args.threads,
                                              cold=args.cold,
                                              gpu_impl=impl in fam.gpu_implementations,
                                              gpu_memory_gb=args.gpu_memory,
                                              also_gpu_budgets=args.also_gpu_budgets,
                                              interpret=args.interpret))
    if not cases:
        raise ToolError('no case to run: check --impls / --modes against the families')

    def subprocess_result(flag: str, spec: dict):
        env = None
        if spec.get('gpu_impl'):  # the Triton path runs on CPU tensors only in the interpreter
            env = dict(os.environ, TRITON_INTERPRET='1')
        proc = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
        if proc.returncode or not line:
            print('failed\n' + proc.stderr[-2000:])
            return None
        return json.loads(line[0][len('RESULT '):])

    results: List[Dict] = []
    for i, spec in enumerate(cases, 1):
        label = (f"{spec['backbone']} {spec['arch']} {spec['size'][0]}x{spec['size'][1]} "
                 f"{spec['task']} {spec['mode']} {spec['impl']}")
        print(f'[{i}/{len(cases)}] memory: {label} ...', end=' ', flush=True)
        # FLOPs are counted once per shape, on the reference case (all aten ops).
        spec = dict(spec, count_flops=spec['impl'] == spec['counted'])
        measured = subprocess_result('--case', spec)
        if measured is None:
            continue
        result = dict(spec, **measured)
        print(f"tensors {result['tensor_peak_mb']:.0f} MB, RSS +{result['peak_mb']:.0f} MB, "
              f"{result['launches']} launches", flush=True)
        if spec['gpu_impl']:
            result['time_s'] = None  # its kernels do not run here: see the module docstring
        results.append(result)

    def key(r):
        return (r['backbone'], r['arch'], tuple(r['size']), r['task'], r['mode'])

    timed = [r for r in results if not r['gpu_impl']] if args.runs > 0 else []
    groups = list(dict.fromkeys(key(r) for r in timed))
    for i, group in enumerate(groups, 1):
        members = [r for r in timed if key(r) == group]
        impls = [r['impl'] for r in members]
        print(f"[{i}/{len(groups)}] time: {group[0]} {group[1]} {group[2][0]}x{group[2][1]} "
              f"{group[3]} {group[4]} ({', '.join(impls)}) ...", end=' ', flush=True)
        spec = dict(backbone=group[0], arch=group[1], size=group[2], task=group[3],
                    mode=group[4], impls=impls, runs=args.runs, threads=args.threads)
        times = subprocess_result('--timing', spec)
        if times is None:
            continue
        for r in members:
            r['times_s'] = times[r['impl']]
            r['time_s'] = statistics.median(times[r['impl']])
            if 'reference' in times:
                r['speedup'] = statistics.median(
                    a / b for a, b in zip(times['reference'], times[r['impl']]))
        print(', '.join(f"{impl} {statistics.median(t):.2f} s" for impl, t in times.items()),
              flush=True)
    if args.runs > 0:
        results = [r for r in results if 'time_s' in r]
    for r in results:
        r.setdefault('time_s', None)

    refs = {key(r): r for r in results if r['impl'] == 'reference'}
    counted = {key(r): r['flops'] for r in results if r['impl'] == r['counted']}
    header = (f"{'backbone':<10}"
              f"{'arch':<6}{'input':>10}{'task':>7}{'mode':>15}{'impl':>11}{'time s':>8}"
              f"{'speed-up':>9}{'tensor MB':>10}{'ratio':>7}{'RSS MB':>8}{'ratio':>7}"
              f"{'build MB':>9}{'GFLOP/s':>8}{'% matmul':>9}{'launches':>9}")
    print('\n' + header + '\n' + '-' * len(header))
    for r in results:
        ref = refs.get(key(r))
        flops = counted.get(key(r), 0)
        r.setdefault('speedup', float('nan'))
        r['tensor_memory_ratio'] = (ref['tensor_peak_mb'] / max(r['tensor_peak_mb'], 1)
                                    if ref else float('nan'))
        r['memory_ratio'] = ref['peak_mb'] / max(r['peak_mb'], 1) if ref else float('nan')
        r['gflops'] = flops / r['time_s'] / 1e9 if flops and r['time_s'] else float('nan')
        r['matmul_fraction'] = r['gflops'] / machine
        time_s = 'n/a' if r['time_s'] is None else f"{r['time_s']:.2f}"
        print(f"{r['backbone']:<10}"
              f"{r['arch']:<6}{r['size'][0]:>5}x{r['size'][1]:<4}{r['task']:>7}{r['mode']:>15}"
              f"{r['impl']:>11}{time_s:>8}{r['speedup']:>8.2f}x"
              f"{r['tensor_peak_mb']:>10.0f}{r['tensor_memory_ratio']:>6.2f}x"
              f"{r['peak_mb']:>8.0f}{r['memory_ratio']:>6.2f}x{r['build_mb']:>9.0f}"
              f"{r['gflops']:>8.1f}{100 * r['matmul_fraction']:>8.0f}%{r['launches']:>9}")
    print_launches(results)
    with open(args.out, 'w') as f:
        json.dump(dict(matmul_gflops=machine, results=results), f, indent=1)
    csv_path = os.path.splitext(args.out)[0] + '.csv'
    with open(csv_path, 'w', newline='') as f:
        fields = list(dict.fromkeys(k for r in results for k in r))  # rows differ in fields
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(results)
    print(f'\nwritten: {args.out}, {csv_path}')


if __name__ == '__main__':
    run_main(main)
