"""Activation checkpointing of a block (``with_cp``), the same for every family."""
from typing import Callable

import torch
import torch.utils.checkpoint as cp
from torch import Tensor


def maybe_checkpoint(function: Callable[..., Tensor], x: Tensor, *args: object,
                     enabled: bool) -> Tensor:
    """``function(x, *args)``; when ``enabled`` and a gradient flows through ``x``, its
    activations are not kept but recomputed in backward (``torch.utils.checkpoint``,
    non-reentrant, so parameters and ``args`` get their gradients too). Without gradients it
    is a plain call: nothing to save."""
    if enabled and x.requires_grad and torch.is_grad_enabled():
        return cp.checkpoint(function, x, *args, use_reentrant=False)
    return function(x, *args)
