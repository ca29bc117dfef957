"""Values computed from weights and kept for inference, checked against a copy of the weights.

Both backbones keep a weight-derived position bias between inference forwards: TransNeXt the
CPB MLP's grid per attention block, TransXNet its position tables resized to the input. A key
of ``(p._version, p.data_ptr())`` misses updates made through ``p.data`` (``p.data.add_``,
mmengine's ``ExponentialMovingAverage``, Mean-Teacher momentum updates): they change neither.
So a :class:`WeightKeyed` value keeps a copy of the weights it was computed from and is reused
only while the weights are bit for bit the same, whatever changed them (``.data``, ``copy_``,
``load_state_dict``, ``to()``). Comparing bits, not values, also means a NaN weight never
matches a different NaN and ``-0.0`` never passes for ``0.0``.

Cost: one copy and one comparison of the weights per cached value and forward, small next to
the forward: for TransNeXt-Tiny the 21 CPB MLPs (0.63 MB), for TransXNet-T the four
pretraining-size tables (1.15 MB), whatever the input size (measured cost:
docs/benchmarks.md). Values are kept only for weights in host memory (:func:`worth_keeping`): on an
accelerator the comparison's answer would be a host synchronisation, which stalls a
launch-bound forward more than recomputing the value (a few small kernels), so there the value
is recomputed every forward and no tensor value is ever read on the host.
"""
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

from ...utils import compat

T = TypeVar('T')


def _bytes(weights: Sequence[Tensor]) -> Tensor:
    """The weights' raw bytes, concatenated into one ``uint8`` tensor (a copy)."""
    return torch.cat([w.detach().reshape(-1).view(torch.uint8) for w in weights])


def _layout(weights: Sequence[Tensor]) -> Tuple[tuple, ...]:
    return tuple((tuple(w.shape), w.dtype, w.device) for w in weights)


@dataclass(frozen=True)
class WeightKeyed(Generic[T]):
    """A value computed from ``weights``, with a copy of their bytes to tell when it is stale.

    Attributes:
        value: what was computed.
        layout: shape, dtype and device of each weight.
        snapshot: the weights' bytes when ``value`` was computed.
    """
    value: T
    layout: Tuple[tuple, ...]
    snapshot: Tensor

    @classmethod
    def build(cls, weights: Sequence[Tensor], compute: Callable[[], T]) -> 'WeightKeyed[T]':
        """``compute()`` kept with a copy of ``weights`` (all on one device)."""
        return cls(compute(), _layout(weights), _bytes(weights))

    def matches(self, weights: Sequence[Tensor]) -> bool:
        """Whether ``weights`` are bit for bit those :attr:`value` was computed from: one
        comparison of the concatenated bytes (one host synchronisation on a GPU)."""
        return _layout(weights) == self.layout and torch.equal(_bytes(weights), self.snapshot)


def worth_keeping(weights: Sequence[Tensor]) -> bool:
    """Whether a value computed from ``weights`` is kept for reuse: only when they are all in
    host memory, where checking them reads no device (see the module docstring), and not while
    being traced or compiled (a trace or graph recomputes it from the weights instead of
    holding a value and a check that reads tensor bytes)."""
    if torch.jit.is_tracing() or compat.is_compiling():
        return False
    return all(w.device.type == 'cpu' for w in weights)


def reuse_or_build(entry: Optional[WeightKeyed[T]], weights: Sequence[Tensor],
                   compute: Callable[[], T]) -> WeightKeyed[T]:
    """``entry`` while it :meth:`~WeightKeyed.matches` ``weights``, else a new one built with
    ``compute``."""
    if entry is not None and entry.matches(weights):
        return entry
    return WeightKeyed.build(weights, compute)
