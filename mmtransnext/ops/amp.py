"""Mixed-precision helpers shared by the ops and layers."""
import contextlib
from typing import ContextManager, Optional

import torch

from ..utils import compat


def autocast_off(device_type: str) -> ContextManager:
    """A context with autocast disabled for ``device_type`` (a no-op for device types without
    autocast, such as ``meta``): for small float32 computations whose dtype must not follow
    the autocast state of the caller (e.g. a backward run under ``torch.autocast``)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # e.g. 'meta': no autocast to turn off
        return contextlib.nullcontext()


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts to for ``device_type`` tensors, or None where autocast is off
    (or does not exist, as for ``meta``). torch.compile folds it to a constant."""
    return compat.autocast_dtype(device_type)


@torch.compiler.assume_constant_result
def cuda_matmul_allows_tf32() -> bool:
    """Whether float32 matrix products on CUDA may use TF32, as the user chose it through
    either API: ``torch.backends.cuda.matmul.fp32_precision`` (torch >= 2.9; its ``'none'``
    defers to the global ``torch.backends.fp32_precision``) or, on older torch,
    ``torch.backends.cuda.matmul.allow_tf32``. The legacy flag must not be read on new torch:
    once TF32 was set the new way, reading it raises. Under torch.compile the answer is read
    while tracing (Dynamo cannot trace the getter; it folded ``allow_tf32`` likewise)."""
    matmul = torch.backends.cuda.matmul
    try:
        precision = matmul.fp32_precision
    except AttributeError:  # torch < 2.9: only the legacy flag
        return bool(matmul.allow_tf32)
    if precision == 'none':  # torch 2.14 resolves this itself; earlier releases may not
        precision = torch.backends.fp32_precision
    return precision == 'tf32'
