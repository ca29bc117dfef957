"""GPU path of TransNeXt attention: the fused Triton kernels of :mod:`.triton_kernels` as
``torch.library`` ops (``mmtransnext::triton_attention`` and its backward), with fake
implementations and an autograd formula, so they compose with autograd and ``torch.compile``.

One forward launch per attention call and two backward launches, whatever the input size: no
Python loop over chunks and no host-device synchronisation. The query transform of TransNeXt
(query embedding, temperature, length scale) is applied inside the kernels, so the scaled
queries are never stored in the forward; the backward kernel returns their gradient, turned
into those of the normalised queries and the transform by a few PyTorch ops. Saved for
backward: the output and the float32 log-sum-exp of each query; the logits are recomputed.

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's
interpreter, used by the tests). That variable is read when the kernels are decorated, i.e. the
first time this path runs in a process: set it before. Whether this path runs is decided by
:func:`.dispatch.choose_backend` (which also self-tests it on a GPU first).
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from .amp import autocast_off
# Whether this path can run, and for which tensors, is decided in one place: .dispatch (kept
# importable from here for former callers).
from .dispatch import interpreting, use_triton  # noqa: F401
from .dispatch import triton_unsupported_reason as unsupported_reason  # noqa: F401

OP = 'mmtransnext::triton_attention'
OP_BACKWARD = 'mmtransnext::triton_attention_backward'

#: ``(BLOCK_M, BLOCK_N, num_warps)`` per input dtype: query tile, pooled-key tile, warps.
#: With 4 warps ptxas spills registers (tools/check_triton_build.py reports it); 8 do not.
BLOCK_CONFIGS = {
    torch.float32: (64, 32, 8),
    torch.float16: (64, 32, 8),
    torch.bfloat16: (64, 32, 8),
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def padded_dim(n: int) -> int:
    """Head dim ``n`` padded to the power of two (at least 16, ``tl.dot``'s minimum) the
    kernels use as their block size."""
    return max(16, 1 << (n - 1).bit_length())


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # Full fp32 products unless TF32 is allowed the torch way; 16-bit inputs ignore it.
    return 'tf32' if tf32 or dtype != torch.float32 else 'ieee'


def _strides(t: Tensor) -> Tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _common(q: Tensor, kp: Tensor, height: int, width: int, window: int, key_h: int,
            key_w: int, grid: Tensor, rows_h: Tensor, rows_w: Tensor, weights_h, weights_w,
            tf32: bool):
    """Launch grid and the arguments both kernels of a query tile share."""
    batch, heads, length, dim = q.shape
    block_m, block_n, warps = BLOCK_CONFIGS[q.dtype]
    sizes = (heads, height, width, kp.shape[2], key_h, key_w, grid.shape[1], grid.shape[2],
             rows_h.shape[-1], rows_w.shape[-1])
    meta = dict(HEAD_DIM=dim, BLOCK_D=padded_dim(dim), BLOCK_M=block_m, BLOCK_N=block_n,
                HAS_WH=weights_h is not None, HAS_WW=weights_w is not None,
                PRECISION=_precision(q.dtype, tf32), num_warps=warps)
    return batch * heads, sizes, meta


def _weight_args(grid: Tensor, weights_h: Optional[Tensor],
                 weights_w: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Tap weights as kernel arguments: an absent set (one tap of weight 1, ``HAS_WH`` /
    ``HAS_WW`` false) is never read, so ``grid`` stands in for its pointer."""
    return (grid if weights_h is None else weights_h), (grid if weights_w is None else weights_w)


@torch.library.custom_op(OP, mutates_args=())
def _attention(q: Tensor, qe: Tensor, head_scale: Tensor, query_scale: Tensor,
               k: Optional[Tensor], v: Optional[Tensor], tok: Optional[Tensor],
               rpb: Optional[Tensor], kp: Tensor, vp: Tensor, grid: Tensor, rows_h: Tensor,
               weights_h: Optional[Tensor], rows_w: Tensor, weights_w: Optional[Tensor],
               height: int, width: int, window: int, key_h: int, key_w: int,
               tf32: bool) -> Tuple[Tensor, Tensor]:
    from . import triton_kernels as kernels
    batch, heads, length, dim = q.shape
    # Output in (B, N, heads, d) memory, the layout the output projection reads.
    out = q.new_empty(batch, length, heads, dim).transpose(1, 2)
    lse = q.new_empty(batch, heads, length, dtype=torch.float32)
    bh, sizes, meta = _common(q, kp, height, width, window, key_h, key_w, grid, rows_h, rows_w,
                              weights_h, weights_w, tf32)
    weights_h, weights_w = _weight_args(grid, weights_h, weights_w)
    k, v, tok, rpb = (q, q, q, q) if window == 0 else (k, v, tok, rpb)
    launch = (_cdiv(length, meta['BLOCK_M']), bh)
    kernels._attention_fwd[launch](
        q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, grid, rows_h, weights_h, rows_w,
        weights_w, out, lse, *_strides(q), query_scale.stride(0), *_strides(k), *_strides(v),
        *_strides(tok), *_strides(kp), *_strides(vp), *_strides(out), *sizes, WINDOW=window,
        **meta)
    return out, lse


@_attention.register_fake
def _attention_fake(q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, grid, rows_h,
                    weights_h, rows_w, weights_w, height, width, window, key_h, key_w, tf32):
    batch, heads, length, dim = q.shape
    return (q.new_empty(batch, length, heads, dim).transpose(1, 2),
            q.new_empty(batch, heads, length, dtype=torch.float32))


@torch.library.custom_op(OP_BACKWARD, mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, qe: Tensor, head_scale: Tensor,
                        query_scale: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                        tok: Optional[Tensor], rpb: Optional[Tensor], kp: Tensor, vp: Tensor,
                        grid: Tensor, rows_h: Tensor, weights_h: Optional[Tensor],
                        rows_w: Tensor, weights_w: Optional[Tensor], out: Tensor, lse: Tensor,
                        height: int, width: int, window: int, key_h: int, key_w: int,
                        tf32: bool) -> List[Tensor]:
    # Returns dq (of the scaled queries, as the kernels form them from q), dk, dv, dtok, drpb
    # (empty for full attention), dk_pool, dv_pool, dgrid.
    from . import triton_kernels as kernels
    batch, heads, length, dim = q.shape
    f32 = torch.float32
    bh, sizes, meta = _common(q, kp, height, width, window, key_h, key_w, grid, rows_h, rows_w,
                              weights_h, weights_w, tf32)
    weights_h, weights_w = _weight_args(grid, weights_h, weights_w)
    delta = q.new_empty(batch, heads, length, dtype=f32)
    dq = torch.empty(batch, heads, length, dim, dtype=q.dtype, device=q.device)
    dkp, dvp = torch.empty_like(kp, memory_format=torch.contiguous_format), \
        torch.empty_like(vp, memory_format=torch.contiguous_format)
    dgrid = torch.zeros(grid.shape, dtype=f32, device=q.device)
    if window:
        dk = torch.zeros(batch, heads, length, dim, dtype=f32, device=q.device)
        dv = torch.zeros_like(dk)
        dtok = torch.empty(batch, heads, length, window * window, dtype=tok.dtype,
                           device=q.device)
        drpb = torch.zeros(rpb.shape, dtype=f32, device=q.device)
    else:
        k = v = tok = rpb = dk = dv = dtok = drpb = q
    kernels._attention_bwd_query[(_cdiv(length, meta['BLOCK_M']), bh)](
        q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, grid, rows_h, weights_h, rows_w,
        weights_w, out, grad_out, lse, delta, dq, dk, dv, dtok, drpb, dgrid, *_strides(q),
        query_scale.stride(0), *_strides(k), *_strides(v), *_strides(tok), *_strides(kp),
        *_strides(vp), *_strides(out), *_strides(grad_out), *sizes, WINDOW=window, **meta)
    kernels._attention_bwd_keys[(_cdiv(kp.shape[2], meta['BLOCK_N']), bh)](
        q, qe, head_scale, query_scale, kp, vp, grid, rows_h, weights_h, rows_w, weights_w,
        grad_out, lse, delta, dkp, dvp, *_strides(q), query_scale.stride(0), *_strides(kp),
        *_strides(vp), *_strides(grad_out), *sizes, **meta)
    if not window:
        dk, dv, dtok, drpb = (q.new_empty(0) for _ in range(4))
        return [dq, dk, dv, dtok, drpb, dkp, dvp, dgrid.to(grid.dtype)]
    return [dq, dk.to(k.dtype), dv.to(v.dtype), dtok, drpb.to(rpb.dtype), dkp, dvp,
            dgrid.to(grid.dtype)]


@_attention_backward.register_fake
def _attention_backward_fake(grad_out, q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp,
                             grid, rows_h, weights_h, rows_w, weights_w, out, lse, height, width,
                             window, key_h, key_w, tf32):
    dgrid = grid.new_empty(grid.shape)
    if window:
        local = (k.new_empty(k.shape), v.new_empty(v.shape), tok.new_empty(tok.shape),
                 rpb.new_empty(rpb.shape))
    else:
        local = tuple(q.new_empty(0) for _ in range(4))
    return [q.new_empty(q.shape), *local, kp.new_empty(kp.shape), vp.new_empty(vp.shape), dgrid]


def _setup_context(ctx, inputs, output):
    (q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, grid, rows_h, weights_h, rows_w,
     weights_w, height, width, window, key_h, key_w, tf32) = inputs
    out, lse = output
    ctx.save_for_backward(q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, grid, rows_h,
                          weights_h, rows_w, weights_w, out, lse)
    ctx.config = (height, width, window, key_h, key_w, tf32)


def _backward(ctx, grad_out, grad_lse):
    saved = ctx.saved_tensors
    height, width, window, key_h, key_w, tf32 = ctx.config
    grad_out = _rows(grad_out.to(saved[-2].dtype))  # e.g. the stride-0 gradient of a sum
    dq_scaled, dk, dv, dtok, drpb, dkp, dvp, dgrid = _attention_backward(
        grad_out, *saved, height, width, window, key_h, key_w, tf32)
    with autocast_off(dq_scaled.device.type):  # float32 sums, whatever the caller's autocast
        dq, dqe, dhead, dquery = _query_grads(dq_scaled, *saved[:4], ctx.needs_input_grad[1:4])
    local = (dk, dv, dtok, drpb) if window else (None,) * 4
    return (dq, dqe, dhead, dquery, *local, dkp, dvp, dgrid) + (None,) * 10


def _query_grads(dq_scaled: Tensor, q: Tensor, qe: Tensor, head_scale: Tensor,
                 query_scale: Tensor, needs: Tuple[bool, bool, bool]) -> Tuple:
    """Gradients of ``q``, ``qe``, ``head_scale``, ``query_scale`` (None where not needed) from
    that of the scaled queries ``(q + qe[h]) * f[h, n]``, ``f = head_scale[h] *
    query_scale[n]``. In PyTorch rather than in the backward kernel: the extra registers made
    ptxas spill in the float32 configurations already at their limit."""
    dq = dq_scaled * (head_scale[:, None] * query_scale)[..., None]  # float32
    dqe = dq.sum((0, 2)) if needs[0] else None
    dhead = dquery = None
    if needs[1] or needs[2]:
        # d loss / d f[h, n], summed over the batch (float32, as the kernels add qe).
        df = (dq_scaled * (q + qe[:, None])).sum((0, 3))
        dhead = df @ query_scale if needs[1] else None
        dquery = head_scale @ df if needs[2] else None
    return dq.to(dq_scaled.dtype), dqe, dhead, dquery


torch.library.register_autograd(OP, _backward, setup_context=_setup_context)


def triton_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, grid: Tensor, rows_h: Tensor,
                     weights_h: Optional[Tensor], rows_w: Tensor, weights_w: Optional[Tensor],
                     size: Tuple[int, int], pool_size: Tuple[int, int],
                     k_local: Optional[Tensor] = None, v_local: Optional[Tensor] = None,
                     token_weights: Optional[Tensor] = None,
                     local_bias: Optional[Tensor] = None,
                     query_embedding: Optional[Tensor] = None,
                     head_scale: Optional[Tensor] = None,
                     query_scale: Union[Tensor, float, None] = None) -> Tensor:
    """Aggregated attention (window + pooled keys, one softmax) or, without the window
    arguments, full attention with a CPB bias, in fused Triton kernels.

    The kernels attend with the queries ``(q + query_embedding[h]) * head_scale[h] *
    query_scale[n]``, formed in float32 registers wherever a query tile is loaded (never stored);
    the query arguments left out leave ``q`` as it is. All three take gradients.

    Args:
        q: ``(B, heads, H*W, d)`` queries of an ``H x W`` map (``size``): TransNeXt's
            L2-normalised queries, or the scaled queries themselves without the three query
            arguments.
        k_pool, v_pool: ``(B, heads, P, d)`` pooled keys and values, ``P = Hk * Wk``
            (``pool_size``).
        grid: ``(heads, GH, GW)`` CPB grid (see
            :func:`mmtransnext.models.layers.position_bias.cpb_grid`).
        rows_h, weights_h, rows_w, weights_w: the grid's taps for these sizes (see
            :class:`mmtransnext.models.layers.position_bias.BiasTaps`).
        k_local, v_local: ``(B, heads, H*W, d)`` keys and values of the sliding window.
        token_weights: ``(B, heads, H*W, window**2)`` weights added to the window probabilities.
        local_bias: ``(heads, window**2)`` local position bias.
        query_embedding: ``(heads, d)`` added to the queries (default zero).
        head_scale: ``(heads,)`` per-head factor, e.g. ``softplus(temperature)`` (default one).
        query_scale: ``(H*W,)`` per-query factor, e.g. TransNeXt's length scale, or one value
            (a number or a one-element tensor) for every query (default one).

    Returns:
        ``(B, heads, H*W, d)`` attention output, stored as ``(B, H*W, heads, d)``.
    """
    batch, heads, length, dim = q.shape
    height, width = size
    key_h, key_w = pool_size
    local = (k_local, v_local, token_weights, local_bias)
    if length != height * width:
        raise ValueError(f'{length} queries do not form the {height}x{width} map')
    if tuple(k_pool.shape) != (batch, heads, key_h * key_w, dim) or v_pool.shape != k_pool.shape:
        raise ValueError(f'pooled keys/values of shapes {tuple(k_pool.shape)}, '
                         f'{tuple(v_pool.shape)} do not match {key_h}x{key_w} keys of queries '
                         f'{tuple(q.shape)}')
    if tuple(rows_h.shape[:2]) != (height, key_h) or tuple(rows_w.shape[:2]) != (width, key_w):
        raise ValueError(f'bias taps of shapes {tuple(rows_h.shape)}, {tuple(rows_w.shape)} do '
                         f'not map {size} queries to {pool_size} keys')
    if any(t is None for t in local) != all(t is None for t in local):
        raise ValueError('k_local, v_local, token_weights and local_bias go together')
    window = 0
    if local_bias is not None:
        window = int(round(local_bias.shape[-1] ** 0.5))
        if local_bias.shape != (heads, window * window) or window % 2 == 0 or \
                k_local.shape != q.shape or v_local.shape != q.shape or \
                token_weights.shape != (batch, heads, length, window * window):
            raise ValueError(
                f'window inputs do not match queries {tuple(q.shape)}: keys '
                f'{tuple(k_local.shape)}, values {tuple(v_local.shape)}, token weights '
                f'{tuple(token_weights.shape)}, local bias {tuple(local_bias.shape)}')
    query_args = _query_args(q, query_embedding, head_scale, query_scale)
    tensors = [q, k_pool, v_pool] + ([k_local, v_local, token_weights] if window else [])
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in BLOCK_CONFIGS:
        raise ValueError(f'the Triton attention supports {tuple(BLOCK_CONFIGS)}, got {dtype}')
    q, k_pool, v_pool = (_rows(t.to(dtype)) for t in (q, k_pool, v_pool))
    if window:
        k_local, v_local, token_weights = (_rows(t.to(dtype)) for t in local[:3])
        local_bias = local_bias.float().contiguous()
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    out, _ = _attention(q, *query_args, k_local, v_local, token_weights, local_bias, k_pool, v_pool,
                        grid.float().contiguous(), rows_h.contiguous(),
                        None if weights_h is None else weights_h.float().contiguous(),
                        rows_w.contiguous(),
                        None if weights_w is None else weights_w.float().contiguous(), height,
                        width, window, key_h, key_w, tf32)
    return out


def _query_args(q: Tensor, embedding: Optional[Tensor], head_scale: Optional[Tensor],
                query_scale: Union[Tensor, float, None]) -> Tuple[Tensor, Tensor, Tensor]:
    """The query transform as the kernels read it: float32 ``(heads, d)`` embedding and
    ``(heads,)`` factor, contiguous, and the ``(H*W,)`` factor with any stride (0 for one
    number); defaults (zero, one) for the arguments left out."""
    _, heads, length, dim = q.shape
    f32 = torch.float32
    if embedding is None:
        embedding = q.new_zeros(heads, dim, dtype=f32)
    elif tuple(embedding.shape) != (heads, dim):
        raise ValueError(f'query_embedding of shape {tuple(embedding.shape)} does not match '
                         f'queries {tuple(q.shape)}: expected ({heads}, {dim})')
    if head_scale is None:
        head_scale = q.new_ones(heads, dtype=f32)
    elif tuple(head_scale.shape) != (heads,):
        raise ValueError(f'head_scale of shape {tuple(head_scale.shape)} does not match '
                         f'queries {tuple(q.shape)}: expected ({heads},)')
    if query_scale is None:
        query_scale = 1.
    if not isinstance(query_scale, Tensor):
        query_scale = q.new_full((1,), float(query_scale), dtype=f32)
    if query_scale.dim() <= 1 and query_scale.numel() == 1:
        query_scale = query_scale.reshape(1).expand(length)
    elif tuple(query_scale.shape) != (length,):
        raise ValueError(f'query_scale of shape {tuple(query_scale.shape)} does not match '
                         f'queries {tuple(q.shape)}: expected ({length},) or one value')
    return (embedding.to(f32).contiguous(), head_scale.to(f32).contiguous(),
            query_scale.to(f32))


def _rows(t: Tensor) -> Tensor:
    """``t`` with unit stride along its last dimension (the kernels' only layout requirement)."""
    return t if t.stride(-1) == 1 else t.contiguous()

