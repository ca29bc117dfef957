"""Attention ops: pure-PyTorch references, (optional) compiled and Triton kernels, and the one
chooser of the backend (:mod:`.dispatch`)."""
from .backend import ATTN_IMPLS, Backend, check_impl
from .cosine_attention import window_av, window_qk
from .dispatch import backend_for, choose_backend
from .extension import ExtensionStatus, load_extension
from .sliding_window import (sliding_window_av, sliding_window_qk, window_lengths,
                             window_padding_mask)
from .window_ops import sliding_window_av_ext, sliding_window_qk_ext

__all__ = ['ATTN_IMPLS', 'Backend', 'backend_for', 'check_impl', 'choose_backend', 'window_av',
           'window_qk', 'ExtensionStatus', 'load_extension', 'sliding_window_av',
           'sliding_window_qk', 'sliding_window_av_ext', 'sliding_window_qk_ext',
           'window_lengths', 'window_padding_mask']
