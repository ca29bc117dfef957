"""Time and peak memory of TransNeXt on a CUDA GPU: the official computation against the fast
paths, as the GPU check (tools/gpu_check.sh) runs it.

Implementations (same weights):

- ``reference``: ``attention_mode='reference'``, the official computation in plain PyTorch;
- ``fast``: the PyTorch fast path, ``attn_impl='ext'`` (the compiled window ops) where they are
  built for the device, else ``attn_impl='torch'`` (recorded as ``attn_impl`` in the results);
- ``triton``: ``attn_impl='triton'``, the fused Triton kernels (CUDA only).

Cases: every input size x task (``infer``: a forward at batch 1 under ``torch.no_grad``;
``train``: forward and backward at batch 2, gradients cleared before each step) x dtype
(``fp32``; ``bf16``: the forward under ``torch.autocast``) x implementation. Each case runs its
warm-up calls (Triton compiles its kernels, the position tables are built), then ``--runs``
timed calls: "median ms" is their median by CUDA events (wall clock on CPU), "peak MB"
``torch.cuda.max_memory_allocated`` over the timed calls (weights and input included: "start
MB" is what was allocated before them), "speed-up" the reference's median over the case's.

A case that runs out of memory is recorded as ``oom``, one that raises as ``error`` (the exit
status is then 1), and the next one starts; once
``--time-limit`` seconds have passed, the cases not started are recorded as skipped (a case in
progress finishes its current call). The JSON is rewritten after every case, so what was
measured survives a run killed from outside.

    python tools/analysis/gpu_benchmark.py --out benchmark.json        # the GPU check's run
    python tools/analysis/gpu_benchmark.py --sizes 512x512 --tasks infer --dtypes bf16
    python tools/analysis/gpu_benchmark.py --device cpu --dry-run --out /tmp/b.json  # the script
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

# mmtransnext (which imports torch) is imported where it is used: tools/gpu_check/summarize.py
# imports format_table from here with the standard library alone.

Size2d = Tuple[int, int]

IMPLS = ('reference', 'fast', 'triton')
DTYPE_NAMES = ('fp32', 'bf16')
TASKS = {'infer': 1, 'train': 2}  # task -> batch
#: ``--dry-run``: a 1-block-per-stage model with TransNeXt-Tiny's head dim (trained at 64), one
#: small input.
DRY_RUN_ARCH = dict(embed_dims=[24, 48, 48, 48], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmtransnext.cli import image_size, non_negative_int, positive_float, positive_int
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='tiny')
    p.add_argument('--sizes', nargs='+', type=image_size,
                   default=[(512, 512), (800, 1216)], help='inputs, HxW')
    p.add_argument('--tasks', nargs='+', choices=list(TASKS), default=list(TASKS))
    p.add_argument('--dtypes', nargs='+', choices=DTYPE_NAMES, default=list(DTYPE_NAMES))
    p.add_argument('--impls', nargs='+', choices=IMPLS, default=list(IMPLS))
    p.add_argument('--mode', choices=['interpolation', 'extrapolation'],
                   default='interpolation', help='position-bias mode')
    p.add_argument('--warmup', type=non_negative_int, default=2, help='untimed calls per case')
    p.add_argument('--runs', type=positive_int, default=5, help='timed calls per case')
    p.add_argument('--time-limit', type=positive_float, default=110.,
                   help='seconds; cases not started by then are skipped')
    p.add_argument('--device', default='cuda')
    p.add_argument('--dry-run', action='store_true',
                   help='a 1-block model at 64x96, 1 warm-up and 2 timed calls: checks the '
                   'script and its outputs (e.g. with --device cpu), measures nothing useful')
    p.add_argument('--out', default=None, help='JSON file for the results')
    args = p.parse_args(argv)
    if args.dry_run:
        args.sizes, args.warmup, args.runs = [(64, 96)], 1, 2
    return args


# ----------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def fast_impl(device) -> str:
    """``attn_impl`` of the ``fast`` implementation here: 'ext' where the compiled window ops
    run on ``device``, else 'torch'."""
    import torch

    from mmtransnext.ops import extension
    return 'ext' if extension.unsupported_reason(device.type, torch.float32) is None else 'torch'


def impl_kwargs(impl: str, device) -> dict:
    if impl == 'reference':
        return dict(attention_mode='reference', attn_impl='torch')
    if impl == 'fast':
        return dict(attention_mode='fast', attn_impl=fast_impl(device))
    return dict(attention_mode='fast', attn_impl='triton')


def unavailable(impl: str, device) -> Optional[str]:
    """Why ``impl`` cannot run on ``device``, or None."""
    if impl != 'triton':
        return None
    from mmtransnext.ops.dispatch import triton_unsupported_reason
    return triton_unsupported_reason(device.type)


def build_model(args, impl: str, size: Size2d, device):
    import torch
    from mmtransnext.models.backbones import family_named
    torch.manual_seed(0)  # the same weights for every implementation
    transnext = family_named('transnext')
    if args.dry_run:  # trained at 64: the reference's official table stays small
        model = transnext.for_input_size(DRY_RUN_ARCH, size, args.mode, 64,
                                         **impl_kwargs(impl, device))
    else:
        model = transnext.for_input_size(args.arch, size, args.mode,
                                         **impl_kwargs(impl, device))
    return model.to(device)


def make_step(model, task: str, x, dtype_name: str, device):
    import torch
    dtype = torch.bfloat16 if dtype_name == 'bf16' else torch.float32

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    if task == 'infer':
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                model(x)
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            with autocast():
                outs = model(x)
            sum(o.float().mean() for o in outs).backward()
    return step


def timed_calls(step, runs: int, device, deadline: float) -> List[float]:
    """Milliseconds of each call (CUDA events on CUDA); stops early past ``deadline`` (one
    call at least)."""
    import torch
    times = []
    for _ in range(runs):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.monotonic() > deadline:
            break
    return times


def run_case(args, case: dict, device, deadline: float) -> dict:
    """Measure one case (fills ``case``); out-of-memory is a result, not an error."""
    import torch
    size = tuple(case['size'])
    model = x = step = None
    try:
        model = build_model(args, case['impl'], size, device)
        case['attn_impl'] = impl_kwargs(case['impl'], device)['attn_impl']
        x = torch.randn(case['batch'], 3, *size, device=device)
        step = make_step(model, case['task'], x, case['dtype'], device)
        t0 = time.monotonic()
        for _ in range(args.warmup):
            step()
        _sync(device)
        case['warmup_s'] = round(time.monotonic() - t0, 2)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
            case['start_mb'] = round(torch.cuda.memory_allocated(device) / 2 ** 20, 1)
        times = timed_calls(step, args.runs, device, deadline)
        case['times_ms'] = [round(t, 3) for t in times]
        case['median_ms'] = round(statistics.median(times), 3)
        if device.type == 'cuda':
            case['peak_mb'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        case['status'] = 'ok'
        if len(times) < args.runs:
            case['note'] = f'{len(times)} of {args.runs} runs (time limit)'
    except torch.cuda.OutOfMemoryError as error:
        case['status'], case['note'] = 'oom', str(error).splitlines()[0][:200]
    except Exception as error:  # recorded; the other cases still run
        lines = str(error).strip().splitlines()
        case['status'] = 'error'
        case['note'] = f"{type(error).__name__}: {lines[0][:300] if lines else ''}"
    finally:
        del model, x, step
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return case


# ----------------------------------------------------------------------------- results
def add_speedups(cases: List[dict]) -> None:
    """``speedup``: the reference's median over the case's, within (size, task, dtype)."""
    reference = {(tuple(c['size']), c['task'], c['dtype']): c['median_ms'] for c in cases
                 if c['impl'] == 'reference' and c.get('status') == 'ok'}
    for c in cases:
        ref = reference.get((tuple(c['size']), c['task'], c['dtype']))
        if ref is not None and c.get('status') == 'ok' and c['median_ms'] > 0:
            c['speedup'] = round(ref / c['median_ms'], 2)


def _fmt(value, digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def format_table(cases: List[dict]) -> str:
    """The results as a Markdown table, one row per case."""
    lines = ['| input | task | batch | dtype | impl | attn_impl | median ms | peak MB | '
             'start MB | speed-up vs reference | status |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for c in cases:
        status = c.get('status', '?')
        if c.get('note'):
            status = f"{status}: {c['note']}"
        speedup = c.get('speedup')
        lines.append(
            f"| {c['size'][0]}x{c['size'][1]} | {c['task']} | {c['batch']} | {c['dtype']} | "
            f"{c['impl']} | {c.get('attn_impl', '-')} | {_fmt(c.get('median_ms'), 2)} | "
            f"{_fmt(c.get('peak_mb'))} | {_fmt(c.get('start_mb'))} | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} | {status} |")
    return '\n'.join(lines)


def environment(device) -> Dict[str, str]:
    import torch
    info = {'device': str(device), 'torch': torch.__version__,
            'python': sys.version.split()[0]}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f'{props.major}.{props.minor}',
                    memory_gb=f'{props.total_memory / 2 ** 30:.1f}', cuda=torch.version.cuda)
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = 'not installed'
    return info


def write_json(path: Optional[str], payload: dict) -> None:
    """Atomically (a killed run leaves the previous complete file)."""
    if not path:
        return
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def plan(args) -> List[dict]:
    """Every case, in the order they run: a (size, task, dtype) group's implementations
    together, so that a group cut by the time limit is whole or absent."""
    return [dict(size=list(size), task=task, batch=TASKS[task], dtype=dtype, impl=impl,
                 status='pending')
            for size in args.sizes for task in args.tasks for dtype in args.dtypes
            for impl in args.impls]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mmtransnext.cli import check_output_file
    args = parse_args(argv)
    if args.out:
        check_output_file(args.out, '--out')
    import torch
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_benchmark: no CUDA device (use --device cpu for a dry run)', file=sys.stderr)
        return 2
    start = time.monotonic()
    deadline = start + args.time_limit
    cases = plan(args)
    payload = dict(environment=environment(device), arch='dry-run' if args.dry_run else args.arch,
                   mode=args.mode, warmup=args.warmup, runs=args.runs,
                   time_limit_s=args.time_limit, complete=False, cases=cases)
    write_json(args.out, payload)
    for case in cases:
        reason = unavailable(case['impl'], device)
        if reason:
            case['status'], case['note'] = 'skipped', reason
        elif time.monotonic() > deadline:
            case['status'], case['note'] = 'skipped', f'time limit ({args.time_limit:.0f} s)'
        else:
            run_case(args, case, device, deadline)
        add_speedups(cases)
        payload['elapsed_s'] = round(time.monotonic() - start, 1)
        write_json(args.out, payload)
        print(f"[gpu_benchmark] {case['size'][0]}x{case['size'][1]} {case['task']} "
              f"{case['dtype']} {case['impl']}: {case['status']} "
              f"{_fmt(case.get('median_ms'), 2)} ms", flush=True)
    payload['complete'] = True
    write_json(args.out, payload)
    env = payload['environment']
    print(f"\nTransNeXt-{payload['arch']} ({args.mode}) on {env.get('name', env['device'])}, "
          f"torch {env['torch']}, triton {env['triton']}\n")
    print(format_table(cases))
    return 1 if any(c['status'] == 'error' for c in cases) else 0


if __name__ == '__main__':
    from mmtransnext.cli import run_main
    sys.exit(run_main(main))
