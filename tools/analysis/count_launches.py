"""Kernel launches per forward and per training step of the TransNeXt backbone: the GPU path
(``attn_impl='triton'``) next to today's fast path, counted on CPU (no GPU here).

    python tools/analysis/count_launches.py [--arch tiny] [--sizes 512x512 800x1216]
    python tools/analysis/count_launches.py --no-counts --peak 512x512 800x1216 \
        --interpret 64x96

How launches are counted: the backbone runs on CPU tensors under a ``TorchDispatchMode`` that
counts every aten op that launches a device kernel: every op returning a tensor except views,
``empty*`` allocations and host reads of tensor values (``item``, ``nonzero``, ``unique``, ...),
which are counted apart as host syncs. A Python custom op is opened: the aten ops its
implementation calls (allocations, zero fills, casts) are counted; a compiled op
(``mmtransnext::`` kernels in C++) counts one. The Triton kernels are launched through a
counter that records each launch and does not run the kernel (their outputs stay as allocated;
no control flow depends on them), so the count costs a CPU forward, not an interpreter run.
Counts are of the second call (position tables and taps cached, as in every step after the
first at a size).

One aten op is counted as one launch. On CUDA some launch more (cuBLAS, reductions) and today's
fast path takes CUDA-only branches: per chunk of query rows its pooled attention is one fused
op on CPU but about seven on CUDA (matmul, add, cast, logsumexp, sub, exp, matmul), and the
bias expansion runs one ``index_select`` per tap instead of the compiled CPU kernel. Its counts
here are therefore lower bounds of its CUDA counts; the Triton path has no device-specific
branch, so its counts are what a GPU would launch (up to the library kernels' internals).

``--peak SIZES``: peak tensor memory of an inference forward (batch 1; ``peak_tensor_mb`` of
benchmark_backbone.py) of the Triton path with its kernels skipped, next to the fast path's. A
Triton kernel allocates nothing, so skipping it changes no allocation; ``--interpret SIZES``
runs the kernels in Triton's interpreter to show the same figure (the interpreter is far too
slow for full-size inputs).
"""
import argparse
import os
import sys
from collections import Counter
from contextlib import contextmanager, nullcontext
from typing import Dict, Tuple

# Triton reads this when triton is imported (torch/mmengine import it): set it before them.
os.environ.setdefault('TRITON_INTERPRET', '1')

import torch  # noqa: E402
from torch._library.custom_ops import _maybe_get_opdef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_backbone import peak_tensor_mb  # noqa: E402

#: aten ops that read a tensor's values on the host (a device sync on CUDA).
SYNC_OPS = {'_local_scalar_dense', 'nonzero', '_unique2', 'unique_dim', 'unique_consecutive',
            'masked_select', 'equal', 'is_nonzero', 'item'}
#: aten ops that launch nothing: allocation without initialisation.
NO_LAUNCH_OPS = {'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided',
                 'lift_fresh', 'detach', 'alias'}


PATHS = (('triton (GPU path)', 'triton'), ('fast, today (CPU ops)', 'auto'))


class LaunchCounter(TorchDispatchMode):
    """Counts launching aten ops and host syncs; opens ``mmtransnext`` custom ops."""

    def __init__(self, totals: Counter = None) -> None:
        super().__init__()
        self.totals = Counter() if totals is None else totals

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        opdef = _maybe_get_opdef(func) if func.namespace == 'mmtransnext' else None
        if opdef is not None:  # a Python custom op: count what its implementation runs
            with LaunchCounter(self.totals):
                return opdef._init_fn(*args, **kwargs)
        out = func(*args, **kwargs)
        name = func._opname
        if name in SYNC_OPS:
            self.totals['syncs'] += 1
        elif not func.is_view and name not in NO_LAUNCH_OPS and \
                any(isinstance(t, torch.Tensor) for t in tree_flatten(out)[0]):
            self.totals['aten'] += 1
        return out


class _CountedKernel:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` records one launch."""

    def __init__(self, totals: Counter) -> None:
        self.totals = totals

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.totals['triton'] += 1
        return launch


def _model(arch: str, impl: str, size: Tuple[int, int], train: bool):
    from mmtransnext.models import TransNeXt
    img_size = 800 if max(size) >= 800 else 512
    return TransNeXt(arch, img_size=img_size, pretrain_size=224, attn_impl=impl).train(train)


@contextmanager
def _counted_kernels(totals: Counter):
    """The Triton kernels replaced by launch counters (not run) inside the block."""
    from mmtransnext.ops import triton_kernels
    names = ('_attention_fwd', '_attention_bwd_query', '_attention_bwd_keys')
    saved = {n: getattr(triton_kernels, n) for n in names}
    for n in names:
        setattr(triton_kernels, n, _CountedKernel(totals))
    try:
        yield
    finally:
        for n, kernel in saved.items():
            setattr(triton_kernels, n, kernel)


def count(arch: str, impl: str, size: Tuple[int, int], train: bool) -> Dict[str, int]:
    """Launches of one warm forward (inference, batch 1) or training step (batch 2), and of the
    first aggregated-attention block's forward within it."""
    from mmtransnext.models.layers.attention import AggregatedAttention
    torch.manual_seed(0)
    model = _model(arch, impl, size, train)
    x = torch.randn(2 if train else 1, 3, *size)
    totals = Counter()
    block = next(m for m in model.modules() if isinstance(m, AggregatedAttention))
    marks = {}

    def mark(name):
        def hook(*_):
            marks.setdefault(name, Counter(totals))  # returns None: inputs/outputs unchanged
        return hook

    block.register_forward_pre_hook(mark('start'))
    block.register_forward_hook(mark('end'))
    with _counted_kernels(totals):
        for _ in range(2):
            totals.clear()
            marks.clear()
            with LaunchCounter(totals):
                if train:
                    sum(o.float().mean() for o in model(x)).backward()
                    model.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        model(x)
    block_counts = marks['end'] - marks['start']
    return dict(aten=totals['aten'], triton=totals['triton'], syncs=totals['syncs'],
                block=block_counts['aten'] + block_counts['triton'])


def peak(arch: str, impl: str, size: Tuple[int, int], run_kernels: bool = True) -> float:
    """Peak tensor memory (MB) of an inference forward at ``size``, batch 1, with the
    size-dependent caches built during the call (as benchmark_backbone.py measures it).
    ``run_kernels=False`` skips the Triton kernels (they allocate nothing themselves)."""
    torch.manual_seed(0)
    model = _model(arch, impl, size, False)
    x = torch.randn(1, 3, *size)
    with torch.no_grad(), (nullcontext() if run_kernels else _counted_kernels(Counter())):
        model(x)
        model.clear_caches()
        return peak_tensor_mb(lambda: model(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='tiny')
    parser.add_argument('--sizes', nargs='+', default=['512x512', '800x1216'])
    parser.add_argument('--peak', nargs='*', default=[], metavar='HxW',
                        help='peak tensor memory of inference at these sizes (kernels skipped)')
    parser.add_argument('--interpret', nargs='*', default=[], metavar='HxW',
                        help='peak tensor memory with the kernels run in the interpreter (slow)')
    parser.add_argument('--no-counts', action='store_true', help='skip the launch counts')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_counts:
        print(f'{"path":24s} {"input":9s} {"task":10s} {"aten":>7s} {"triton":>6s} '
              f'{"total":>7s} {"syncs":>5s} {"1st AA block fwd":>16s}')
        for size_text in args.sizes:
            size = _size(size_text)
            for train in (False, True):
                for label, impl in PATHS:
                    c = count(args.arch, impl, size, train)
                    task = 'train b2' if train else 'infer b1'
                    print(f'{label:24s} {size_text:9s} {task:10s} {c["aten"]:7d} '
                          f'{c["triton"]:6d} {c["aten"] + c["triton"]:7d} {c["syncs"]:5d} '
                          f'{c["block"]:16d}', flush=True)
    for size_text, run in [(s, False) for s in args.peak] + [(s, True) for s in args.interpret]:
        for label, impl in PATHS:
            if impl == 'auto' and run:
                continue
            how = ' (kernels run in the interpreter)' if run and impl == 'triton' else \
                ' (kernels skipped)' if impl == 'triton' else ''
            mb = peak(args.arch, impl, _size(size_text), run_kernels=run)
            print(f'peak tensor MB, {label}{how}, {size_text} inference b1: {mb:.1f}',
                  flush=True)


def _size(text: str) -> Tuple[int, int]:
    height, width = text.split('x')
    return int(height), int(width)


if __name__ == '__main__':
    main()
