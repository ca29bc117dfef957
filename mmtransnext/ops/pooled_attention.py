"""Attention over pooled keys with a continuous position bias, merged with an extra key set by
log-sum-exp, computed in chunks of query rows so that no ``(heads, N, P)`` tensor is ever whole.

The position bias of a chunk is expanded from the row-folded CPB grid just before use (see
:func:`mmtransnext.models.layers.position_bias.fold_rows`) and dropped after it; backward
recomputes it chunk by chunk. So the bias costs neither memory across the forward nor memory
saved for backward, and the softmax never materialises for the whole map:

- forward: per chunk, a fused ``scaled_dot_product_attention`` kernel returns the output and
  the log-sum-exp of the pooled logits, merged with the extra set's log-sum-exp (the kernel is
  part of the backend decided by :mod:`.dispatch`: on CPU the flash kernel, on CUDA the
  memory-efficient one; elsewhere, and where that kernel refused an input, the same math on the
  chunk);
- backward: per chunk, logits recomputed with one matmul, then the softmax gradient
  ``dS = P * (dP - D)`` with ``D = <dOut, Out> + dMass * Mass`` (the extra set enters as one
  more key whose "value" is the mass it takes), reduced to the grads of queries, keys, values,
  the folded bias grid and the extra log-sum-exp.

Chunks are sized for the device (:func:`chunk_budget`): on CPU to stay in cache, on a GPU from
its memory. Nothing here reads a tensor value on the host, so on a GPU the glue never waits for
the device (the tests run it on ``meta`` tensors, where any such read raises).
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..utils import compat
from .bias_ops import expand_columns, expand_columns_torch_backward
from .budget import element_budget
from .dispatch import Backend, backend_for, exporting, report_failure
from .export_attention import scan_pooled_attention

#: Elements of one chunk's ``(batch, heads, rows, P)`` logits on CPU; four such buffers live at
#: once in backward (16 MB each in float32 at the default).
CHUNK_ELEMENTS = 1 << 20


def chunk_budget(device: torch.device) -> Optional[int]:
    """Logit elements per chunk on ``device`` (:func:`.budget.element_budget`):
    :data:`CHUNK_ELEMENTS` on CPU, a share of a CUDA device's memory, None (the whole map at
    once) on other devices."""
    return element_budget(device, CHUNK_ELEMENTS, buffers=4)


def chunk_rows(batch: int, heads: int, width: int, num_keys: int,
               budget: Optional[int] = CHUNK_ELEMENTS) -> Optional[int]:
    """Query rows (of ``width`` queries) per chunk for a ``budget`` of logits (None: no
    bound)."""
    if budget is None:
        return None
    return max(1, budget // max(1, batch * heads * width * num_keys))


def balanced_rows(height: int, rows: int) -> int:
    """Rows per chunk for as many chunks as ``rows`` gives, evened out so the last chunk is
    not a small remainder (a short chunk keeps the kernel's threads poorly busy)."""
    chunks = -(-height // max(1, rows))
    return -(-height // chunks)


def _chunk_bias(folded: Tensor, rows_w: Tensor, w_w: Optional[Tensor], y0: int, y1: int,
                backend: Backend) -> Tensor:
    part = expand_columns(folded[:, y0:y1], rows_w, w_w, backend)  # (heads, rows, W, Hk, Wk)
    heads, rows, width, kh, kw = part.shape
    return part.reshape(heads, rows * width, kh * kw)


def _chunk_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                     backend: Backend) -> Tuple[Tensor, Tensor]:
    """``softmax(q k^T + bias) v`` and the float32 log-sum-exp of the logits ``(B, h, n, 1)``
    with the backend's ``pooled_kernel``."""
    if backend.pooled_kernel == 'flash':
        return _flash_chunk_attention(q, k, v, bias)
    if backend.pooled_kernel == 'efficient':
        return _efficient_chunk_attention(q, k, v, bias, backend)
    return _math_chunk_attention(q, k, v, bias)


def _flash_chunk_attention(q: Tensor, k: Tensor, v: Tensor,
                           bias: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`_chunk_attention` with the flash SDPA kernel of CPU (the math path on torch
    whose CPU flash kernel takes no additive mask, :data:`.compat.HAS_CPU_FLASH_WITH_MASK`)."""
    if not compat.HAS_CPU_FLASH_WITH_MASK:
        return _math_chunk_attention(q, k, v, bias)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, attn_mask=bias.unsqueeze(0), scale=1.0)[:2]
    return out, lse.unsqueeze(-1).float()


def _math_chunk_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`_chunk_attention` without a fused kernel."""
    logits = (q @ k.transpose(-2, -1) + bias).float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return (torch.exp(logits - lse).to(v.dtype) @ v), lse


#: The fused kernel of ``scaled_dot_product_attention``'s memory-efficient backend (the one
#: that takes an additive bias and returns the log-sum-exp); a module attribute so the tests
#: can stand in for it on CPU.
_efficient_attention = torch.ops.aten._scaled_dot_product_efficient_attention

#: Bias rows are padded to a multiple of this many elements: the kernel needs 16-byte aligned
#: bias strides (what ``scaled_dot_product_attention`` does to a mask itself).
BIAS_ALIGNMENT = 16


def _efficient_chunk_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                               backend: Optional[Backend] = None) -> Tuple[Tensor, Tensor]:
    """:func:`_chunk_attention` with the memory-efficient SDPA kernel (CUDA): the bias is
    copied into a buffer whose rows are padded for alignment, the log-sum-exp (padded by the
    kernel to a multiple of 32 queries) is cut to the chunk. If the kernel refuses the inputs
    (an old GPU, an unsupported head dim), the math path, and the refusal is reported to
    :func:`.dispatch.report_failure` for the device and dtype of ``backend`` (by default those
    of ``q``): one warning, and the decisions for them take the math path from then on."""
    heads, length, keys = bias.shape
    padded = -(-keys // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    buffer = bias.new_empty(heads, length, padded)
    buffer[..., :keys] = bias
    mask = buffer[..., :keys].unsqueeze(0).expand(q.shape[0], -1, -1, -1)
    try:
        out, lse = _efficient_attention(q, k, v, mask, True, scale=1.0)[:2]
    except RuntimeError as error:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            raise
        device, dtype = (q.device, q.dtype) if backend is None else \
            (backend.device, backend.dtype)
        report_failure(device, dtype, 'efficient',
                       f'the fused scaled_dot_product_attention kernel refused the pooled '
                       f'attention ({error})')
        return _math_chunk_attention(q, k, v, bias)
    return out, lse[..., :length, None]


def _folded_grad(grad_bias: Tensor, folded: Tensor, rows_w: Tensor, w_w: Optional[Tensor],
                 y0: int, y1: int, backend: Backend) -> Tensor:
    """Gradient of one chunk's bias ``(heads, rows*W, P)`` with respect to ``folded[:, y0:y1]``."""
    part = folded[:, y0:y1]
    heads, rows, kh, columns = part.shape
    width, kw = rows_w.shape[:2]
    grad = grad_bias.to(part.dtype).reshape(heads, rows, width, kh, kw)
    if backend.bias == 'compiled':
        if w_w is None:
            w_w = torch.ones(rows_w.shape, device=rows_w.device)
        return torch.ops.mmtransnext.expand_bias_backward(grad, rows_w, w_w, columns)
    return expand_columns_torch_backward(grad, rows_w, w_w, columns)


class _PooledAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, folded: Tensor, rows_w: Tensor,
                w_w: Optional[Tensor], extra_lse: Optional[Tensor], chunk: int,
                backend: Backend):
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
        batch, heads, length, dim = q.shape
        width = rows_w.shape[0]
        height = length // width
        # Output in (B, N, heads, d) memory, the layout the output projection reads.
        out = q.new_empty(batch, length, heads, dim, dtype=dtype).transpose(1, 2)
        lse = q.new_empty(batch, heads, length, 1, dtype=torch.float32)
        for y0 in range(0, height, chunk):
            y1 = min(height, y0 + chunk)
            n0, n1 = y0 * width, y1 * width
            bias = _chunk_bias(folded, rows_w, w_w, y0, y1, backend).to(dtype)
            out_c, lse[:, :, n0:n1] = _chunk_attention(qc[:, :, n0:n1], kc, vc, bias, backend)
            out[:, :, n0:n1] = out_c
            del bias, out_c
        mass = None
        if extra_lse is not None:
            total = torch.logaddexp(lse, extra_lse.float())
            out.mul_(torch.exp(lse - total).to(dtype))
            mass = torch.exp(extra_lse.float() - total)
            lse = total
        ctx.chunk, ctx.backend = chunk, backend
        ctx.has_extra = extra_lse is not None
        ctx.save_for_backward(q, k, v, folded, rows_w, w_w, out, lse, mass)
        return out, mass

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor], grad_mass: Optional[Tensor]):
        q, k, v, folded, rows_w, w_w, out, total, mass = ctx.saved_tensors
        batch, heads, length, dim = q.shape
        width = rows_w.shape[0]
        height = length // width
        f32 = torch.float32
        qf, kf, vf = q.to(f32), k.to(f32), v.to(f32)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_out = grad_out.to(f32)
        delta = (grad_out * out.to(f32)).sum(-1, keepdim=True)
        if mass is not None and grad_mass is not None:
            delta = delta + grad_mass.float() * mass
        need_folded = ctx.needs_input_grad[3]
        grad_q = torch.empty_like(qf)
        grad_k, grad_v = torch.zeros_like(kf), torch.zeros_like(vf)
        grad_folded = torch.zeros_like(folded) if need_folded else None
        for y0 in range(0, height, ctx.chunk):
            y1 = min(height, y0 + ctx.chunk)
            n0, n1 = y0 * width, y1 * width
            q_c, g_c = qf[:, :, n0:n1], grad_out[:, :, n0:n1]
            logits = q_c @ kf.transpose(-2, -1)
            logits += _chunk_bias(folded, rows_w, w_w, y0, y1, ctx.backend).to(f32)
            probs = torch.exp(logits.sub_(total[:, :, n0:n1]))
            del logits
            grad_v += probs.transpose(-2, -1) @ g_c
            grad_logits = probs.mul_((g_c @ vf.transpose(-2, -1)).sub_(delta[:, :, n0:n1]))
            grad_q[:, :, n0:n1] = grad_logits @ kf
            grad_k += grad_logits.transpose(-2, -1) @ q_c
            if need_folded:
                grad_folded[:, y0:y1] = _folded_grad(grad_logits.sum(0), folded, rows_w, w_w,
                                                     y0, y1, ctx.backend)
            del grad_logits
        grad_extra = None
        if ctx.has_extra and ctx.needs_input_grad[6]:
            grad_extra = mass * ((grad_mass.float() if grad_mass is not None else 0) - delta)
        return (grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_folded, None,
                None, grad_extra, None, None)


def pooled_attention(q: Tensor, k: Tensor, v: Tensor, folded: Tensor, rows_w: Tensor,
                     w_w: Optional[Tensor], extra_lse: Optional[Tensor] = None,
                     chunk: Optional[int] = None,
                     impl: Union[str, Backend] = 'auto') -> Tuple[Tensor, Optional[Tensor]]:
    """Pooled-key attention with a CPB bias built chunk by chunk, merged with an extra key set.

    Args:
        q: ``(B, heads, H*W, d)`` scaled queries of an ``H x W`` map.
        k, v: ``(B, heads, P, d)`` pooled keys and values, ``P = Hk * Wk``.
        folded: ``(heads, H, Hk, columns)`` CPB grid with the row axis resolved.
        rows_w, w_w: ``(W, Wk, taps)`` column taps of the bias (see ``expand_columns``);
            ``w_w`` None for one tap of weight 1.
        extra_lse: ``(B, heads, H*W, 1)`` log-sum-exp of the extra (window) logits, or None.
        chunk: query rows per chunk; by default sized for the device (:func:`chunk_budget`).
        impl: the :class:`.dispatch.Backend` decided for this forward (its bias expansion and
            chunk kernel), or an ``attn_impl`` to decide it for ``q``.

    Returns:
        The attention output over the pooled keys, already scaled by their share of the joint
        softmax, ``(B, heads, H*W, d)``, and the extra set's share ``(B, heads, H*W, 1)`` (None
        without ``extra_lse``).
    """
    batch, heads, length, _ = q.shape
    width = rows_w.shape[0]
    if folded.shape[1] * width != length:
        raise ValueError(f'{length} queries do not form the {folded.shape[1]}x{width} map of the '
                         'position bias')
    height = folded.shape[1]
    if exporting() and chunk is None:  # a graph: the chunks under one Scan
        return scan_pooled_attention(q, k, v, folded, rows_w, w_w, extra_lse)
    if chunk is None:
        rows = chunk_rows(batch, heads, width, k.shape[2], chunk_budget(q.device))
        chunk = height if rows is None else balanced_rows(height, rows)
    if w_w is not None:
        w_w = w_w.float()
    out, mass = _PooledAttention.apply(q, k, v, folded, rows_w, w_w, extra_lse, max(1, chunk),
                                       backend_for(impl, q))
    return out, mass
