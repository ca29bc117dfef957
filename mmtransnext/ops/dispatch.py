"""Choice of implementation for the sliding-window ops (``attn_impl`` of the backbone).

- ``'torch'``: the pure-PyTorch reference in :mod:`.sliding_window`;
- ``'ext'``: the compiled op (not part of this build yet: requesting it is an error);
- ``'auto'``: the compiled op when available, otherwise the reference.
"""
from typing import Optional, Tuple

from torch import Tensor

from .sliding_window import sliding_window_av, sliding_window_qk

ATTN_IMPLS = ('auto', 'ext', 'torch')


def check_impl(impl: str) -> str:
    """Validate an ``attn_impl`` value."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {impl!r}')
    if impl == 'ext':
        raise RuntimeError("attn_impl='ext' was requested but this build has no compiled "
                           'sliding-window op')
    return impl


def window_qk(q: Tensor, k: Tensor, rpb: Tensor, size: Tuple[int, int], window_size: int,
              padding_mask: Optional[Tensor] = None, impl: str = 'auto') -> Tensor:
    """Window logits (see :func:`.sliding_window.sliding_window_qk`)."""
    return sliding_window_qk(q, k, rpb, size, window_size, padding_mask)


def window_av(attn: Tensor, v: Tensor, size: Tuple[int, int], window_size: int,
              impl: str = 'auto') -> Tensor:
    """Window aggregation (see :func:`.sliding_window.sliding_window_av`)."""
    return sliding_window_av(attn, v, size, window_size)
