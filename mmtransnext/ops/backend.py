"""What a backend decision is, and the facts about the process it is made from.

The bottom of the ops layer: :class:`Backend` (what :func:`.dispatch.choose_backend` decides
and the ops run with), the ``attn_impl`` values, the compute dtype of a tensor, whether a model
is being exported and whether Triton runs in its interpreter. It imports no kernel, launcher or
chooser, so every op can take a :class:`Backend` without importing the chooser.
"""
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..utils import compat

ATTN_IMPLS = ('auto', 'triton', 'ext', 'torch')
#: Backends in the order ``'auto'`` tries them.
BACKENDS = ('triton', 'ext', 'torch')
#: Kernels of the pooled chunks: CPU flash, CUDA memory-efficient, plain matmuls.
POOLED_KERNELS = ('flash', 'efficient', 'math')


@dataclass(frozen=True)
class Backend:
    """A decision of :func:`.dispatch.choose_backend`.

    Attributes:
        name: ``'triton'``, ``'ext'`` or ``'torch'``.
        window: the sliding-window ops of the chunked path, ``'ext'`` or ``'torch'``.
        pooled_kernel: the pooled chunks' kernel (:data:`POOLED_KERNELS`).
        bias: the position-bias expansion, ``'compiled'`` or ``'torch'``.
        device: the device the decision is for, e.g. ``'cuda:0'`` or ``'cpu'``.
        dtype: the compute dtype it is for.
        reason: why, in words (not compared).

    For ``'triton'`` the chunked-path fields are those of ``'torch'``: the layers do not run
    that path with it.
    """
    name: str
    window: str
    pooled_kernel: str
    bias: str
    device: str
    dtype: torch.dtype
    reason: str = field(default='', compare=False)


def require_backend(backend: object, op: str) -> Backend:
    """``backend`` itself if it is a :class:`Backend`.

    Raises:
        TypeError: anything else, e.g. an ``attn_impl`` string: the ops choose nothing, the
            caller decides once (:func:`.dispatch.backend_for`) and passes the decision.
    """
    if not isinstance(backend, Backend):
        raise TypeError(f'{op} takes the Backend decided for this forward, got '
                        f'{type(backend).__name__} {backend!r}; decide it once with '
                        'mmtransnext.ops.dispatch.backend_for(attn_impl, tensor)')
    return backend


def check_impl(impl: str) -> str:
    """Validate an ``attn_impl`` value."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {impl!r}')
    return impl


def device_name(device_type: str, device_index: Optional[int]) -> str:
    """``'cuda:0'``, ``'cpu'``: how a :class:`Backend` names its device."""
    return device_type if device_index is None else f'{device_type}:{device_index}'


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0').lower() in ('1', 'true', 'on', 'yes')


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype the attention of ``tensor`` computes in: autocast's for its device when
    autocast is on there, else its own."""
    dtype = compat.autocast_dtype(tensor.device.type) if tensor.is_floating_point() else None
    return tensor.dtype if dtype is None else dtype


def exporting() -> bool:
    """Whether a model is being exported: traced by ``torch.export`` (also under
    ``torch.onnx.export(..., dynamo=True)``) or by the TorchScript-based ONNX exporter. Plain
    ``torch.jit.trace`` and ``torch.compile`` are not exports (they keep the compiled ops).
    ``torch.export`` is seen from torch 2.7 on (:func:`.compat.is_exporting`)."""
    return compat.is_exporting()
