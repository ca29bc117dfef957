"""Sliding-window attention ops: pure-PyTorch reference (compiled kernels: see csrc/)."""
from .dispatch import ATTN_IMPLS, check_impl, window_av, window_qk
from .sliding_window import (sliding_window_av, sliding_window_qk, window_lengths,
                             window_padding_mask)

__all__ = ['ATTN_IMPLS', 'check_impl', 'window_av', 'window_qk', 'sliding_window_av',
           'sliding_window_qk', 'window_lengths', 'window_padding_mask']
