"""Choice of implementation for the sliding-window ops (``attn_impl`` of the backbone).

- ``'torch'``: the pure-PyTorch reference in :mod:`.sliding_window`;
- ``'ext'``: the compiled op (:mod:`.window_ops`); an error, saying how to build it, if it is not
  available for the tensor's device and dtype;
- ``'auto'``: the compiled op when available, otherwise the reference, with one warning per
  process the first time it falls back (loading the compiled op is described in
  :mod:`.extension`).
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
def _use_ext_for(impl: str, device_type: str, dtype: torch.dtype) -> bool:
    # A constant for torch.compile: evaluated (loading, warning or raising) while tracing, so a
    # compiled graph holds only the chosen op.
    global _fallback_warned
    reason = extension.unsupported_reason(device_type, dtype)
    if reason is None:
        return True
    if impl == 'ext':
        raise RuntimeError(f"attn_impl='ext' was requested but {reason}. "
                           f'{extension.BUILD_HINT}')
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(f"attn_impl='auto': {reason}; using the pure-PyTorch sliding-window "
                      f'attention instead (slower, more memory). {extension.BUILD_HINT} '
                      "Pass attn_impl='torch' to silence this warning.", RuntimeWarning,
                      stacklevel=4)
    return False


def _use_ext(impl: str, tensor: Tensor) -> bool:
    if check_impl(impl) == 'torch':
        return False
    return _use_ext_for(impl, tensor.device.type, tensor.dtype)


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
