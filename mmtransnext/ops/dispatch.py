"""Choice of implementation for the fast path's attention (``attn_impl`` of the backbone).

One switch for the whole attention; :func:`attention_backend` decides, per device type and
dtype, which backend runs:

- ``'torch'``: no compiled code at all: the pure-PyTorch sliding-window ops of
  :mod:`.sliding_window` and the PyTorch position-bias expansion of :mod:`.bias_ops`;
- ``'ext'``: the compiled ops (:mod:`.window_ops`, and on CPU the compiled bias expansion); an
  error, saying how to build them, if they are not available for the tensor's device and dtype;
- ``'auto'``: the compiled ops when available for the device, otherwise PyTorch, with one
  warning per process the first time it falls back (loading the compiled ops is described in
  :mod:`.extension`).

Whatever the backend, the pooled part runs the chunked glue of :mod:`.pooled_attention`, whose
chunk size depends on the device (:func:`.pooled_attention.chunk_budget`) and whose chunks run a
fused ``scaled_dot_product_attention`` kernel on CPU and CUDA. On CUDA tensors ``'auto'`` first
tries the fused Triton kernels (:func:`.triton_attention.use_triton`, resolved by the attention
layers), warning once if triton is missing.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import extension
from .sliding_window import sliding_window_av, sliding_window_qk
from .window_ops import sliding_window_av_ext, sliding_window_qk_ext

#: ``'triton'`` is resolved by the attention layers (:mod:`.triton_attention`), not here.
ATTN_IMPLS = ('auto', 'triton', 'ext', 'torch')

_fallback_warned = False


def check_impl(impl: str) -> str:
    """Validate an ``attn_impl`` value."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {impl!r}')
    return impl


@torch.compiler.assume_constant_result
def attention_backend(impl: str, device_type: str, dtype: torch.dtype) -> str:
    """The backend, ``'ext'`` or ``'torch'``, that runs ``attn_impl=impl`` for ``device_type``
    tensors of ``dtype``: raises for ``'ext'`` without the compiled ops, warns once when
    ``'auto'`` falls back. A constant for torch.compile: evaluated (loading, warning or raising)
    while tracing, so a compiled graph holds only the chosen ops."""
    global _fallback_warned
    if check_impl(impl) == 'torch':
        return 'torch'
    reason = extension.unsupported_reason(device_type, dtype)
    if reason is None:
        return 'ext'
    if impl == 'ext':
        raise RuntimeError(f"attn_impl='ext' was requested but {reason}. "
                           f'{extension.BUILD_HINT}')
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"attn_impl='auto': {reason}; using the pure-PyTorch sliding-window "
                      f'attention instead (slower, more memory). {extension.BUILD_HINT} '
                      "Pass attn_impl='torch' to silence this warning.", RuntimeWarning,
                      stacklevel=4)
    return 'torch'


def _use_ext(impl: str, tensor: Tensor) -> bool:
    return attention_backend(impl, tensor.device.type, tensor.dtype) == 'ext'


def window_qk(q: Tensor, k: Tensor, rpb: Tensor, size: Tuple[int, int], window_size: int,
              padding_mask: Optional[Tensor] = None, impl: str = 'auto') -> Tensor:
    """Window logits (see :func:`.sliding_window.sliding_window_qk`) with the chosen backend.

    ``padding_mask`` only serves the reference; the compiled op derives it from ``size``.
    """
    if _use_ext(impl, q):
        return sliding_window_qk_ext(q, k, rpb, size, window_size)
    return sliding_window_qk(q, k, rpb, size, window_size, padding_mask)


def window_av(attn: Tensor, v: Tensor, size: Tuple[int, int], window_size: int,
              impl: str = 'auto') -> Tensor:
    """Window aggregation (see :func:`.sliding_window.sliding_window_av`), chosen backend."""
    if _use_ext(impl, v):
        return sliding_window_av_ext(attn, v, size, window_size)
    return sliding_window_av(attn, v, size, window_size)
