"""Full-size step of the continuous position bias: ``expand_bias`` (compiled) or PyTorch.

``out[h, y, x, a, b] = sum_s weights[x, b, s] * folded[h, y, a, rows[x, b, s]]`` turns the
small, row-folded CPB grid ``(heads, H, h, columns)`` into the ``(heads, H, W, h, w)`` bias,
i.e. ``(heads, H*W, h*w)`` for ``H x W`` queries and ``h x w`` pooled keys. The compiled CPU
kernel (``csrc/bias_expand.cpp``) writes the output once; the PyTorch path needs one
``index_select`` pass per tap. Both give the same numbers and gradients. Which one runs is the
``bias`` of the backend decided by :mod:`.dispatch`: the kernel exists for CPU only, so on
other devices (and always with ``attn_impl='torch'``) the PyTorch path runs, which reads no
tensor value on the host (no device synchronisation).
"""
from typing import Optional

import torch
from torch import Tensor

from ..utils import compat
from .backend import Backend, require_backend

OP = 'mmtransnext::expand_bias'
OP_BACKWARD = 'mmtransnext::expand_bias_backward'


def op_built() -> bool:
    """Whether the loaded compiled library has the CPU ``expand_bias`` kernel (an older build
    may lack it)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(OP, 'CPU')
    except RuntimeError:  # not defined at all
        return False


def register() -> None:
    """Register the fake kernels and the autograd formula of ``expand_bias``; called once by
    :func:`.extension.load_extension` when the library it loaded has the op."""
    def _fake(folded: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        heads, height, kh, _ = folded.shape
        return folded.new_empty(heads, height, rows.shape[0], kh, rows.shape[1])

    def _fake_backward(grad: Tensor, rows: Tensor, weights: Tensor, columns: int) -> Tensor:
        heads, height, _, kh, _ = grad.shape
        return grad.new_empty(heads, height, kh, columns)

    compat.register_fake(OP, _fake)
    compat.register_fake(OP_BACKWARD, _fake_backward)

    def setup_context(ctx, inputs, output):
        folded, rows, weights = inputs
        ctx.save_for_backward(rows, weights)
        ctx.columns = folded.shape[-1]

    def backward(ctx, grad):
        rows, weights = ctx.saved_tensors
        grad_folded = torch.ops.mmtransnext.expand_bias_backward(grad, rows, weights,
                                                                 ctx.columns)
        return grad_folded, None, None

    compat.register_autograd(OP, backward, setup_context=setup_context)


def expand_columns_torch(folded: Tensor, rows: Tensor, weights: Optional[Tensor]) -> Tensor:
    """PyTorch path of :func:`expand_columns`: one ``index_select`` per tap."""
    heads, height, kh, columns = folded.shape
    width, kw, taps = rows.shape
    flat = folded.reshape(heads * height, kh * columns)
    offsets = (torch.arange(kh, device=rows.device) * columns)[None, :, None]
    out = None
    for s in range(taps):
        index = (offsets + rows[:, None, :, s]).reshape(-1)
        term = flat.index_select(1, index).view(-1, width, kh, kw)
        if weights is not None:
            term = term * weights[:, None, :, s].to(term.dtype)
        out = term if out is None else out + term
    return out.view(heads, height, width, kh, kw)


def expand_columns_torch_backward(grad: Tensor, rows: Tensor, weights: Optional[Tensor],
                                  columns: int) -> Tensor:
    """Gradient of :func:`expand_columns_torch` with respect to ``folded`` (one ``index_add_``
    per tap), written out so that callers need no ``torch.autograd.grad`` (which
    ``torch.compile`` cannot trace inside an ``autograd.Function``'s backward).

    Args:
        grad: ``(heads, H, W, h, w)`` gradient of the expanded bias.
        rows, weights: as in :func:`expand_columns`.
        columns: the width of ``folded``'s last axis.
    """
    heads, height, width, kh, kw = grad.shape
    flat_grad = grad.reshape(heads * height, width, kh, kw)
    offsets = (torch.arange(kh, device=rows.device) * columns)[None, :, None]
    out = grad.new_zeros(heads * height, kh * columns)
    for s in range(rows.shape[-1]):
        index = (offsets + rows[:, None, :, s]).reshape(-1)
        term = flat_grad
        if weights is not None:
            term = term * weights[:, None, :, s].to(term.dtype)
        out.index_add_(1, index, term.reshape(heads * height, -1))
    return out.view(heads, height, kh, columns)


def expand_columns(folded: Tensor, rows: Tensor, weights: Optional[Tensor],
                   backend: Backend) -> Tensor:
    """``(heads, H, h, columns)`` folded grid -> ``(heads, H, W, h, w)`` bias.

    Args:
        folded: the CPB grid with the row axis already resolved.
        rows: ``(W, w, taps)`` int64 column of ``folded`` each tap reads.
        weights: ``(W, w, taps)`` float32 tap weights, or None for one tap of weight 1.
        backend: the :class:`.backend.Backend` decided for this forward: its ``bias``,
            ``'compiled'`` (the kernel, CPU only; :func:`.dispatch.choose_backend` picks it
            where the loaded library has it) or ``'torch'``.
    """
    if require_backend(backend, 'expand_columns').bias == 'compiled':
        compat.check_traceable(OP)
        if weights is None:
            weights = torch.ones(rows.shape, device=rows.device)
        return torch.ops.mmtransnext.expand_bias(folded, rows, weights.float())
    return expand_columns_torch(folded, rows, weights)
