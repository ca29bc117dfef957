"""Benchmark the compiled sliding-window ops against the pure-PyTorch (unfold) path on CPU.

    python tools/analysis/benchmark_ops.py [--repeats 3] [--threads N]

For each shape, both ops as aggregated attention calls them: ``attn = qk(q, k, rpb)`` and
``out = av(weights, v)``, with q/k/v as the non-contiguous views of the projections the block
passes. "fwd" runs them under ``torch.no_grad()`` (inference); "fwd+bwd" runs them with autograd
and back-propagates given upstream gradients to q, k, v, rpb and the weights
(``torch.autograd.grad``, so nothing is kept in ``.grad``).

Time: median of ``--repeats`` runs after one warm-up; the two backends alternate within one
process, so that both see the same machine load.

Peak memory: the highest total of live tensor memory during one call above what was live before
it (inputs and upstream gradients are allocated beforehand and not counted; outputs and
gradients are). It is the running sum of the allocation/free events that the c10 CPU allocator
reports to ``torch.profiler`` (``profile_memory=True``), which sees every tensor allocation,
including temporaries inside ops, but not memory that libraries allocate on their own (oneDNN
scratch buffers, malloc inside kernels).
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from mmtransnext.cli import ToolError, positive_int, run_main
from mmtransnext.ops import (backend_for, load_extension, window_av, window_padding_mask,
                             window_qk)

# (label, batch, (H, W)): stage 1 of TransNeXt-Tiny (3 heads, head dim 24, window 3) for an
# 800x1216 detection input and a 512x512 segmentation crop.
CASES = [
    ('det 800x1216', 1, (200, 304)),
    ('det 800x1216', 2, (200, 304)),
    ('seg 512x512', 1, (128, 128)),
    ('seg 512x512', 2, (128, 128)),
]
HEADS, HEAD_DIM, WINDOW = 3, 24, 3
IMPLS = ('ext', 'torch')


def make_inputs(batch: int, size: Tuple[int, int]) -> Dict[str, object]:
    """Leaf tensors laid out like the block's q and k/v views, plus upstream gradients."""
    length, positions = size[0] * size[1], WINDOW ** 2
    q = torch.randn(batch, length, HEADS, HEAD_DIM).transpose(1, 2)
    kv = torch.randn(batch, length, 2, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
    leaves = dict(q=q, k=kv[0], v=kv[1], rpb=torch.randn(HEADS, positions),
                  weights=torch.randn(batch, HEADS, length, positions).softmax(-1))
    inputs = {name: t.detach().requires_grad_() for name, t in leaves.items()}
    inputs.update(size=size, mask=window_padding_mask(size, WINDOW, torch.device('cpu')),
                  grad_attn=torch.randn(batch, HEADS, length, positions),
                  grad_out=torch.randn(batch, HEADS, length, HEAD_DIM))
    return inputs


def forward(impl: str, x: Dict[str, object]):
    backend = backend_for(impl, x['q'])
    attn = window_qk(x['q'], x['k'], x['rpb'], x['size'], WINDOW, x['mask'], backend=backend)
    out = window_av(x['weights'], x['v'], x['size'], WINDOW, backend=backend)
    return attn, out


def run_forward(impl: str, x: Dict[str, object]) -> None:
    with torch.no_grad():
        forward(impl, x)


def run_forward_backward(impl: str, x: Dict[str, object]) -> None:
    attn, out = forward(impl, x)
    torch.autograd.grad([attn, out], [x[n] for n in ('q', 'k', 'v', 'rpb', 'weights')],
                        [x['grad_attn'], x['grad_out']])


def peak_bytes(fn: Callable[[], None]) -> int:
    """Highest live tensor memory during ``fn`` above the level before it (see docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]')
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def median_seconds(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=positive_int, default=3)
    parser.add_argument('--threads', type=positive_int, default=None, help='torch threads (default: all)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    status = load_extension()
    if not status.loaded:
        raise ToolError(f'the compiled ops are not available: {status.error}')
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, ops from '
          f'{status.source}; TransNeXt-Tiny stage 1: {HEADS} heads, head dim {HEAD_DIM}, '
          f'window {WINDOW}; median of {args.repeats}')
    header = (f'{"input":<13} {"B":>1} {"map":>7} | {"pass":<7} | {"ext ms":>8} {"torch ms":>9} '
              f'{"speedup":>7} | {"ext MiB":>8} {"torch MiB":>9} {"less mem":>8}')
    print(header)
    print('-' * len(header))
    mib = 1 / 2 ** 20
    for label, batch, size in CASES:
        x = make_inputs(batch, size)
        for pass_name, runner in (('fwd', run_forward), ('fwd+bwd', run_forward_backward)):
            fns = {impl: (lambda impl=impl: runner(impl, x)) for impl in IMPLS}
            seconds = median_seconds(fns, args.repeats)
            peaks = {impl: peak_bytes(fn) for impl, fn in fns.items()}
            print(f'{label:<13} {batch:>1} {size[0]:>3}x{size[1]:<3} | {pass_name:<7} | '
                  f'{seconds["ext"] * 1e3:>8.1f} {seconds["torch"] * 1e3:>9.1f} '
                  f'{seconds["torch"] / seconds["ext"]:>6.1f}x | '
                  f'{peaks["ext"] * mib:>8.1f} {peaks["torch"] * mib:>9.1f} '
                  f'{peaks["torch"] / max(peaks["ext"], 1):>7.1f}x')


if __name__ == '__main__':
    run_main(main)
