"""Python side of the compiled sliding-window ops (``torch.ops.mmtransnext.*``, ``csrc/``).

The C++ library defines the four ops and their CPU/CUDA kernels; this module gives them what
PyTorch needs beyond that: fake (meta) kernels for ``torch.compile`` and ``opcheck``, and the
autograd formulas tying each forward op to its backward op. The C++ schema names this module
(``set_python_module``), so importing it is how PyTorch finds the fake kernels.

Call the ops through :func:`sliding_window_qk_ext` / :func:`sliding_window_av_ext` (or
:mod:`.dispatch`), after :func:`.extension.load_extension` has loaded the library.
"""
from typing import Tuple

import torch
from torch import Tensor

from ..utils import compat

Size2d = Tuple[int, int]

QK = 'mmtransnext::sliding_window_qk'
QK_BACKWARD = 'mmtransnext::sliding_window_qk_backward'
AV = 'mmtransnext::sliding_window_av'
AV_BACKWARD = 'mmtransnext::sliding_window_av_backward'


def _common_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the op computes in and returns: autocast's (as for the matmuls of the reference
    path), else the promotion of the inputs' (e.g. float32 queries with bfloat16 keys)."""
    dtype = compat.autocast_dtype(tensors[0].device.type)
    if dtype is not None:
        return dtype
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def sliding_window_qk_ext(q: Tensor, k: Tensor, rpb: Tensor, size: Size2d,
                          window_size: int) -> Tensor:
    """Compiled :func:`.sliding_window.sliding_window_qk` (same arguments and result, dtype
    included).

    The op computes in one dtype, the dot products' (autocast's, or the promotion of ``q`` and
    ``k``). A bias of another dtype is added outside it, after the rounding of the dot
    products, as the reference adds it after its matmul: under autocast the float32 bias gives
    float32 logits, so the softmax and its backward run in float32 (rounding the logits to
    bfloat16 with the bias inside loses the temperature gradient: docs/design.md).
    """
    compat.check_traceable(QK)
    dtype = _common_dtype(q, k)
    if rpb.dtype == dtype:
        return torch.ops.mmtransnext.sliding_window_qk(q.to(dtype), k.to(dtype), rpb, size[0],
                                                       size[1], window_size)
    logits = torch.ops.mmtransnext.sliding_window_qk(
        q.to(dtype), k.to(dtype), torch.zeros(rpb.shape, dtype=dtype, device=rpb.device),
        size[0], size[1], window_size)
    return logits + rpb.unsqueeze(1)


def sliding_window_av_ext(attn: Tensor, v: Tensor, size: Size2d, window_size: int) -> Tensor:
    """Compiled :func:`.sliding_window.sliding_window_av` (same arguments and result)."""
    compat.check_traceable(AV)
    dtype = _common_dtype(attn, v)
    return torch.ops.mmtransnext.sliding_window_av(attn.to(dtype), v.to(dtype), size[0], size[1],
                                                   window_size)


# Fake kernels: output metadata only (the real kernels return contiguous tensors). The C++
# kernels validate arguments; shapes are checked here too so that a traced program fails as
# early and as clearly as an eager one.
def _check_rows(op: str, name: str, t: Tensor, height: int, width: int) -> None:
    torch._check(t.dim() == 4, lambda: f'{op}: {name} must be 4-D, got shape {tuple(t.shape)}')
    torch._check(t.shape[2] == height * width,
                 lambda: f'{op}: {name} has {t.shape[2]} rows but the map is {height}x{width}')


def _qk_fake(q: Tensor, k: Tensor, rpb: Tensor, height: int, width: int,
             window: int) -> Tensor:
    _check_rows('sliding_window_qk', 'q', q, height, width)
    torch._check(k.shape == q.shape, lambda: 'sliding_window_qk: k and q differ in shape')
    return q.new_empty((*q.shape[:3], window * window))


def _qk_backward_fake(grad_attn: Tensor, q: Tensor, k: Tensor, height: int, width: int,
                      window: int) -> Tuple[Tensor, Tensor, Tensor]:
    _check_rows('sliding_window_qk_backward', 'q', q, height, width)
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty((q.shape[1], window * window))


def _av_fake(attn: Tensor, v: Tensor, height: int, width: int, window: int) -> Tensor:
    _check_rows('sliding_window_av', 'v', v, height, width)
    return v.new_empty(v.shape)


def _av_backward_fake(grad_out: Tensor, attn: Tensor, v: Tensor, height: int, width: int,
                      window: int) -> Tuple[Tensor, Tensor]:
    _check_rows('sliding_window_av_backward', 'v', v, height, width)
    return v.new_empty((*v.shape[:3], window * window)), v.new_empty(v.shape)


def _qk_setup_context(ctx, inputs, output) -> None:
    q, k, _, height, width, window = inputs
    ctx.save_for_backward(q, k)
    ctx.geometry = (height, width, window)


def _qk_backward(ctx, grad_attn: Tensor):
    q, k = ctx.saved_tensors
    grad_q, grad_k, grad_rpb = torch.ops.mmtransnext.sliding_window_qk_backward(
        grad_attn, q, k, *ctx.geometry)
    return grad_q, grad_k, grad_rpb, None, None, None


def _av_setup_context(ctx, inputs, output) -> None:
    attn, v, height, width, window = inputs
    ctx.save_for_backward(attn, v)
    ctx.geometry = (height, width, window)


def _av_backward(ctx, grad_out: Tensor):
    attn, v = ctx.saved_tensors
    grad_attn, grad_v = torch.ops.mmtransnext.sliding_window_av_backward(
        grad_out, attn, v, *ctx.geometry)
    return grad_attn, grad_v, None, None, None


_registered = False


def op_defined(qualname: str = QK) -> bool:
    """Whether the C++ library defining ``qualname`` is loaded in this process."""
    namespace, name = qualname.split('::')
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register() -> None:
    """Register the fake kernels and autograd formulas (once; the library must be loaded)."""
    global _registered
    if _registered:
        return
    # From this module: PyTorch checks that it is the one the C++ schema names.
    for op, fake in ((QK, _qk_fake), (QK_BACKWARD, _qk_backward_fake), (AV, _av_fake),
                     (AV_BACKWARD, _av_backward_fake)):
        compat.register_fake(op, fake)
    compat.register_autograd(QK, _qk_backward, setup_context=_qk_setup_context)
    compat.register_autograd(AV, _av_backward, setup_context=_av_setup_context)
    _registered = True


# Imported by PyTorch itself (set_python_module) when the library was loaded by other means.
if op_defined():
    register()
