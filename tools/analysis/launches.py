"""Kernel launches of a forward or a training step, counted on CPU tensors (no GPU needed).

Developer tooling, not part of the package: ``tools/analysis/benchmark_backbone.py`` imports it as
its sibling module, the tests through ``pytest.ini``'s ``pythonpath``.

:func:`count_launches` runs a callable under :class:`LaunchCounter`, a ``TorchDispatchMode``
that counts every aten op that launches a device kernel: every op returning a tensor except
views, ``empty*`` allocations and host reads of tensor values (``item``, ``nonzero``,
``unique``, ...), which are counted apart as host syncs. A Python custom op is opened: the aten
ops its implementation calls (allocations, zero fills, casts) are counted; a compiled op
(``mmtransnext::`` kernels in C++) counts one. The Triton kernels are launched through a
counter (:func:`triton_kernel_counters`, the ops' launcher seam
:class:`mmtransnext.ops.device.DeviceProperties`) that records each launch and does not run them
(their outputs stay as allocated; no control flow depends on them), so a count costs a CPU
forward, not an interpreter run. A Triton kernel allocates nothing, so skipping it changes no
tensor-memory figure either.

One aten op is counted as one launch. On CUDA some launch more (cuBLAS, reductions), and the
fast path (``attn_impl='auto'`` on CPU) takes CPU-only branches: per chunk of query rows its
pooled attention is one compiled op on CPU but about seven on CUDA, and its bias expansion one
compiled kernel instead of one ``index_select`` per tap. Its counts are lower bounds of its
CUDA counts. The Triton path has no device-specific branch, so its counts are what a GPU would
launch (up to the library kernels' internals), provided the chunked loops run as on a GPU: the
CPB MLP, the ConvGLU inference bands and the pooled-attention chunks size themselves from the
device's memory (:mod:`mmtransnext.ops.budget`), so a GPU's counts are taken under
:func:`mmtransnext.ops.budget.gpu_budgets` (e.g. :data:`DEFAULT_GPU_MEMORY`).
"""
import dataclasses
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch._library.custom_ops import _maybe_get_opdef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmtransnext.ops.device import assume_device, assumed_device

#: aten ops that read a tensor's values on the host (a device sync on CUDA).
SYNC_OPS = frozenset({'_local_scalar_dense', 'nonzero', '_unique2', 'unique_dim',
                      'unique_consecutive', 'masked_select', 'equal', 'is_nonzero', 'item'})
#: aten ops that launch nothing: allocation without initialisation, aliases (``_unsafe_view``
#: is the view a matmul's reshape returns, not flagged as a view in its schema).
NO_LAUNCH_OPS = frozenset({'empty', 'empty_like', 'empty_strided', 'new_empty',
                           'new_empty_strided', 'lift_fresh', 'detach', 'alias', '_unsafe_view'})
#: Memory (bytes) of the GPU whose chunk budgets a count takes by default: an 80 GB A100/H100.
DEFAULT_GPU_MEMORY = 80 << 30


@dataclass(frozen=True)
class LaunchCount:
    """Launches of one call.

    Attributes:
        aten: aten ops that launch a kernel.
        triton: Triton kernel launches.
        syncs: host reads of tensor values (device syncs on CUDA).
        block: launches (aten + Triton) of the given block's forward within the call, or None.
    """
    aten: int
    triton: int
    syncs: int
    block: Optional[int] = None

    @property
    def launches(self) -> int:
        """Kernel launches: aten ops plus Triton kernels."""
        return self.aten + self.triton


class LaunchCounter(TorchDispatchMode):
    """Counts launching aten ops (``totals['aten']``) and host syncs (``totals['syncs']``);
    opens ``mmtransnext`` Python custom ops to count what their implementations run."""

    def __init__(self, totals: Optional[Counter] = None) -> None:
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


@contextmanager
def triton_kernel_counters(totals: Optional[Counter] = None) -> Iterator[Counter]:
    """Within the block, a Triton kernel the ops launch adds one to ``totals['triton']`` and is
    not run (the ops' launcher, :attr:`mmtransnext.ops.device.DeviceProperties.launcher`).

    Args:
        totals: where launches are added (``'triton'`` key); a new Counter by default.

    Yields:
        ``totals``.
    """
    totals = Counter() if totals is None else totals

    def counter(kernel, grid):
        def launch(*args, **kwargs) -> None:
            totals['triton'] += 1
        return launch

    with assume_device(dataclasses.replace(assumed_device(), launcher=counter)):
        yield totals


def first_aggregated_attention(model: nn.Module) -> Optional[nn.Module]:
    """The first :class:`AggregatedAttention` of ``model`` (stage 1, block 1), or None."""
    from mmtransnext.models.layers.attention import AggregatedAttention
    return next((m for m in model.modules() if isinstance(m, AggregatedAttention)), None)


def count_launches(step: Callable[[], object], block: Optional[nn.Module] = None,
                   warmup: int = 1) -> LaunchCount:
    """Launches of one call of ``step`` (Triton kernels counted, not run).

    Args:
        step: e.g. a forward without gradients or a training step (forward and backward).
        block: a module called during ``step``: the launches of its (first) forward in the
            call are counted apart (:attr:`LaunchCount.block`).
        warmup: calls before the counted one, so that size-dependent caches (position tables,
            taps, CPB grids) are built as in every step after the first at a size.
    """
    totals = Counter()
    marks = {}

    def mark(name):
        def hook(*_) -> None:  # returns None: inputs and outputs unchanged
            marks.setdefault(name, Counter(totals))
        return hook

    hooks = [] if block is None else [block.register_forward_pre_hook(mark('start')),
                                      block.register_forward_hook(mark('end'))]
    try:
        with triton_kernel_counters(totals):
            for _ in range(warmup):
                step()
            totals.clear()
            marks.clear()
            with LaunchCounter(totals):
                step()
    finally:
        for hook in hooks:
            hook.remove()
    block_launches = None
    if 'end' in marks:
        inside = marks['end'] - marks['start']
        block_launches = inside['aten'] + inside['triton']
    return LaunchCount(aten=totals['aten'], triton=totals['triton'], syncs=totals['syncs'],
                       block=block_launches)
