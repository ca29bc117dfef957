"""GPU path of TransNeXt attention: the fused Triton kernels of :mod:`.triton_kernels` as
``torch.library`` ops (``mmtransnext::triton_attention`` and its backward), with fake
implementations and an autograd formula, so they compose with autograd and ``torch.compile``.

One forward launch per attention call and two backward launches, whatever the input size: no
Python loop over chunks and no host-device synchronisation. The query transform of TransNeXt
(query embedding, temperature, length scale) is applied inside the kernels, so the scaled
queries are never stored in the forward; the backward kernel returns their gradient, turned
into those of the normalised queries and the transform by a few PyTorch ops. Saved for
backward: the output (kept in float32, see :func:`_output`) and the float32 log-sum-exp of
each query; the logits are recomputed.

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's
interpreter, used by the tests). That variable is read when the kernels are decorated, i.e. the
first time this path runs in a process: set it before. Whether this path runs is decided by
:func:`.dispatch.choose_backend` (which also self-tests it on a GPU first).
"""
import contextlib
import functools
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch._prims_common import alert_not_deterministic

from ..utils import compat
from .amp import autocast_dtype, autocast_off, cuda_matmul_allows_tf32
from .backend import interpreting
from .bias_taps import FOLD_AXES
from .device import assumed_device, launch_kernel
from .triton_configs import (KERNEL_CONFIGS, MAX_TAPS_PER_PAIR, kernel_config,
                             triton_release_reason)

OP = 'mmtransnext::triton_attention'
OP_BACKWARD = 'mmtransnext::triton_attention_backward'


#: Batch items per program of the query backward (``_attention_bwd_query``): the position bias
#: depends on the head and positions only, so the items share its gathers and its gradient's
#: atomic adds, half as many of each as with one item per program (the kernel is written for
#: pairs: the last pair of an odd batch has one item).
QUERY_ITEMS = 2
#: Software-pipelining depth of the key and query loops (``num_stages``): the next tile's
#: loads (``cp.async`` on sm_80+) are issued while the current one is multiplied.
NUM_STAGES = 2


#: Streaming multiprocessors assumed where the device cannot be asked (CPU tensors under the
#: interpreter; launch recording assumes it for its fake CUDA device): an H100's.
DEFAULT_SMS = 132
#: Fewest query tiles per run in the pooled-key backward: shorter runs would write more partial
#: sums than they save.
MIN_TILES_PER_SPLIT = 8


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _multiprocessors(device: torch.device) -> int:
    assumed = assumed_device().multiprocessors  # measurement code's stand-in device
    if assumed is not None:
        return assumed
    if device.type != 'cuda':
        return DEFAULT_SMS
    return _cuda_multiprocessors(device)


@functools.lru_cache(maxsize=None)
def _cuda_multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def key_splits(programs: int, query_tiles: int, device: torch.device) -> int:
    """Runs of query tiles the pooled-key backward splits its loop into: enough that its
    ``programs * splits`` programs fill two waves of the device's multiprocessors, none shorter
    than :data:`MIN_TILES_PER_SPLIT` tiles (and none empty); 1 where there is nothing to split
    (no programs or no query tiles: an empty batch or map)."""
    if programs <= 0 or query_tiles <= 0:
        return 1
    splits = max(1, min(_cdiv(2 * _multiprocessors(device), programs),
                        query_tiles // MIN_TILES_PER_SPLIT))
    return _cdiv(query_tiles, _cdiv(query_tiles, splits))


def padded_dim(n: int) -> int:
    """Head dim ``n`` padded to the power of two (at least 16, ``tl.dot``'s minimum) the
    kernels use as their block size."""
    return max(16, 1 << (n - 1).bit_length())


def _precision(dtype: torch.dtype, tf32: bool) -> str:
    # Full fp32 products unless TF32 is allowed the torch way; 16-bit inputs ignore it.
    return 'tf32' if tf32 or dtype != torch.float32 else 'ieee'


#: Widest row alignment the kernels are told of, in bytes: a 128-bit load per thread.
MAX_ROW_BYTES = 16


def row_alignment(*tensors: Tensor) -> int:
    """``ALIGN``: the largest power of two, at most ``MAX_ROW_BYTES / itemsize``, that divides
    the batch, head and row strides of every ``(B, heads, rows, d)`` row tensor of a launch (the
    strides of dims of one element, never stepped along, do not count). It follows the
    architecture's channel widths, not the input size, so it does not split a multi-scale
    schedule's compiled variants."""
    align = MAX_ROW_BYTES // tensors[0].element_size()
    strides = [s for t in tensors for n, s in zip(t.shape[:3], t.stride()[:3]) if n > 1]
    while align > 1 and any(s % align for s in strides):
        align //= 2
    return align


def _strides(t: Tensor, align: int = 1) -> Tuple[int, int, int]:
    """Batch, head and row strides of ``t`` in units of ``align`` elements (0 along a dim of one
    element, never stepped along; see :func:`row_alignment`)."""
    return tuple(s // align if n > 1 else 0 for n, s in zip(t.shape[:3], t.stride()[:3]))


def _on_device(t: Tensor):
    """Launch on ``t``'s GPU even when another one is current (Triton launches on the current
    device); nothing to switch on CPU (interpreter) or where there is no device to switch to
    (:attr:`.device.DeviceProperties.switch_device`: fake tensors)."""
    if t.device.type == 'cuda' and assumed_device().switch_device:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _common(q: Tensor, kp: Tensor, height: int, width: int, key_h: int, key_w: int,
            folded: Tensor, rows_w: Tensor, weights_w: Optional[Tensor], tf32: bool,
            window: int, columns_folded: bool = False):
    """``batch * heads``, the size arguments and the meta-parameters every kernel shares."""
    batch, heads, length, dim = q.shape
    # fold_n: the table values along the folded grid's value axis (see _bias_offsets).
    fold_n = folded.shape[1] if columns_folded else folded.shape[-1]
    sizes = (heads, height, width, kp.shape[2], key_h, key_w, fold_n, rows_w.shape[-1],
             int(columns_folded))
    precision = _precision(q.dtype, tf32)
    meta = dict(HEAD_DIM=dim, BLOCK_D=padded_dim(dim), weighted=int(weights_w is not None),
                PRECISION=precision, num_stages=NUM_STAGES)
    return batch * heads, sizes, meta


def _kernel_meta(meta: dict, dtype: torch.dtype, window: int, kernel: str) -> dict:
    """``meta`` plus ``kernel``'s tiles and warps (see :data:`.triton_configs.KERNEL_CONFIGS`)."""
    config = kernel_config(dtype, window, kernel)
    cap = {} if config.max_registers is None else {'maxnreg': config.max_registers}
    return dict(meta, BLOCK_M=config.block_m, BLOCK_N=config.block_n, num_warps=config.warps,
                **cap)


def _output(q: Tensor, device: Optional[torch.device] = None) -> Tensor:
    """The op's uninitialised float32 attention output for queries ``q`` ``(B, heads, N, d)``,
    on ``device`` (default ``q``'s): a ``(B, heads, N, d)`` view of ``(B, N, heads, d)`` memory,
    the layout the output projection reads (one (batch, head) slice spans up to ``heads`` times
    ``q``'s). Float32 whatever ``q``'s dtype, because the backward's ``delta = dO . O`` cancels
    against each query's probability-weighted logit gradients: from a 16-bit output its rounding
    made the temperature gradient (a sum of logit gradients times logits over the map) several
    times as far off as the PyTorch path's. :func:`triton_attention` returns it in ``q``'s
    dtype."""
    batch, heads, length, dim = q.shape
    return q.new_empty(batch, length, heads, dim, device=device,
                       dtype=torch.float32).transpose(1, 2)


def _weight_args(folded: Tensor, weights_w: Optional[Tensor]) -> Tensor:
    """Tap weights as a kernel argument: absent (one tap of weight 1, ``weighted`` 0)
    they are never read, so ``folded`` stands in for the pointer."""
    return folded if weights_w is None else weights_w


@compat.custom_op(OP, mutates_args=())
def _attention(q: Tensor, qe: Tensor, head_scale: Tensor, query_scale: Tensor,
               k: Optional[Tensor], v: Optional[Tensor], tok: Optional[Tensor],
               rpb: Optional[Tensor], kp: Tensor, vp: Tensor, folded: Tensor, rows_w: Tensor,
               weights_w: Optional[Tensor], height: int, width: int, window: int, key_h: int,
               key_w: int, tf32: bool, columns_folded: bool) -> Tuple[Tensor, Tensor]:
    from . import triton_kernels as kernels
    batch, heads, length, dim = q.shape
    out = _output(q)
    lse = q.new_empty(batch, heads, length, dtype=torch.float32)
    if out.numel() == 0:  # an empty batch or map: nothing to launch (a grid of 0 programs)
        return out, lse
    bh, sizes, meta = _common(q, kp, height, width, key_h, key_w, folded, rows_w, weights_w, tf32,
                              window, columns_folded)
    meta = _kernel_meta(meta, q.dtype, window, 'forward')
    weights_w = _weight_args(folded, weights_w)
    k, v, tok, rpb = (q, q, q, q) if window == 0 else (k, v, tok, rpb)
    # One grid axis (tiles fastest within each batch * head): no 65535 limit on batch * heads.
    launch = (_cdiv(length, meta['BLOCK_M']) * bh,)
    align = row_alignment(q, k, v, kp, vp, out)
    with _on_device(q):
        launch_kernel(kernels._attention_fwd, launch)(
            q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w, weights_w,
            out, lse, *_strides(q, align), *_strides(k, align), *_strides(v, align),
            *_strides(tok), *_strides(kp, align), *_strides(vp, align), *_strides(out, align),
            *sizes, WINDOW=window, ALIGN=align, **meta)
    return out, lse


@_attention.register_fake
def _attention_fake(q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w,
                    weights_w, height, width, window, key_h, key_w, tf32, columns_folded):
    batch, heads, length, dim = q.shape
    return _output(q), q.new_empty(batch, heads, length, dtype=torch.float32)


@compat.custom_op(OP_BACKWARD, mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, qe: Tensor, head_scale: Tensor,
                        query_scale: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                        tok: Optional[Tensor], rpb: Optional[Tensor], kp: Tensor, vp: Tensor,
                        folded: Tensor, rows_w: Tensor, weights_w: Optional[Tensor], out: Tensor,
                        lse: Tensor, height: int, width: int, window: int, key_h: int,
                        key_w: int, tf32: bool, columns_folded: bool) -> List[Tensor]:
    # Returns dq (of the scaled queries, as the kernels form them from q; float32: the query
    # transform's gradients are sums of it over the map, which a 16-bit dq would round first),
    # dk, dv, dtok, drpb (empty for full attention), dk_pool, dv_pool, dfolded.
    from . import triton_kernels as kernels
    batch, heads, length, dim = q.shape
    f32 = torch.float32
    bh, sizes, meta = _common(q, kp, height, width, key_h, key_w, folded, rows_w, weights_w, tf32,
                              window, columns_folded)
    weights_w = _weight_args(folded, weights_w)
    delta = q.new_empty(batch, heads, length, dtype=f32)
    dq = torch.empty(batch, heads, length, dim, dtype=f32, device=q.device)
    query_meta = _kernel_meta(meta, q.dtype, window, 'query')
    keys_meta = _kernel_meta(meta, q.dtype, window, 'keys')
    pooled = _cdiv(kp.shape[2], keys_meta['BLOCK_N']) * bh
    splits = key_splits(pooled, _cdiv(length, keys_meta['BLOCK_M']), q.device)
    # float32 partial sums of the pooled keys' gradients per run of query tiles (no atomics).
    dkvp = torch.empty(2, batch, heads, splits, kp.shape[2], dim, dtype=f32, device=q.device)
    dfolded = torch.zeros(folded.shape, dtype=f32, device=q.device)
    if window:  # written whole by the keys kernel, in the keys' dtype
        dk = torch.empty(batch, heads, length, dim, dtype=k.dtype, device=q.device)
        dv = torch.empty(batch, heads, length, dim, dtype=v.dtype, device=q.device)
        dtok = torch.empty(batch, heads, length, window * window, dtype=tok.dtype,
                           device=q.device)
        drpb = torch.zeros(rpb.shape, dtype=f32, device=q.device)
    else:
        k = v = tok = rpb = dk = dv = dtok = drpb = q
    align = row_alignment(q, k, v, kp, vp, out, grad_out)
    if q.numel() == 0:  # an empty batch or map: no launch (the pooled keys' gradients are 0)
        dkvp.zero_()
    else:
        with _on_device(q):
            # Query tiles of BLOCK_M queries of QUERY_ITEMS batch items, the bias shared by the
            # items.
            launch_kernel(kernels._attention_bwd_query, (_cdiv(length, query_meta['BLOCK_M']) *
                                                        heads * _cdiv(batch, QUERY_ITEMS),))(
                q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w,
                weights_w, out, grad_out, lse, delta, dq, dtok, dfolded,
                *_strides(q, align), *_strides(k, align), *_strides(v, align), *_strides(tok),
                *_strides(kp, align), *_strides(vp, align), *_strides(out, align),
                *_strides(grad_out, align), batch, *sizes, WINDOW=window, ALIGN=align,
                **query_meta)
            # Pooled-key tiles (times their runs) first, then window-key tiles.
            window_programs = _cdiv(length, keys_meta['BLOCK_M']) * bh if window else 0
            launch_kernel(kernels._attention_bwd_keys, (pooled * splits + window_programs,))(
                q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w,
                weights_w, grad_out, lse, delta, dk, dv, drpb, dkvp[0], dkvp[1],
                *_strides(q, align), *_strides(k, align), *_strides(v, align), *_strides(tok),
                *_strides(kp, align), *_strides(vp, align), *_strides(grad_out, align), *sizes,
                splits, pooled * splits, WINDOW=window, ALIGN=align, **keys_meta)
    dkp = torch.sum(dkvp[0], 2, out=torch.empty(kp.shape, dtype=kp.dtype, device=q.device))
    dvp = torch.sum(dkvp[1], 2, out=torch.empty(vp.shape, dtype=vp.dtype, device=q.device))
    if not window:
        dk, dv, dtok, drpb = (q.new_empty(0) for _ in range(4))
        return [dq, dk, dv, dtok, drpb, dkp, dvp, dfolded.to(folded.dtype)]
    return [dq, dk, dv, dtok, drpb.to(rpb.dtype), dkp, dvp, dfolded.to(folded.dtype)]


@_attention_backward.register_fake
def _attention_backward_fake(grad_out, q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp,
                             folded, rows_w, weights_w, out, lse, height, width, window, key_h,
                             key_w, tf32, columns_folded):
    dfolded = folded.new_empty(folded.shape)
    if window:
        local = (k.new_empty(k.shape), v.new_empty(v.shape), tok.new_empty(tok.shape),
                 rpb.new_empty(rpb.shape))
    else:
        local = tuple(q.new_empty(0) for _ in range(4))
    return [q.new_empty(q.shape, dtype=torch.float32), *local, kp.new_empty(kp.shape),
            vp.new_empty(vp.shape), dfolded]


def _setup_context(ctx, inputs, output):
    (q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w, weights_w, height,
     width, window, key_h, key_w, tf32, columns_folded) = inputs
    out, lse = output
    ctx.save_for_backward(q, qe, head_scale, query_scale, k, v, tok, rpb, kp, vp, folded, rows_w,
                          weights_w, out, lse)
    ctx.config = (height, width, window, key_h, key_w, tf32, columns_folded)


def _backward(ctx, grad_out, grad_lse):
    # The backward kernels add gradients (local bias, folded CPB grid) with float32 atomics,
    # whose order, and so whose rounding, varies from run
    # to run on a GPU: torch's own error (or warning, with warn_only=True) in deterministic
    # mode. Raised on every device, the interpreter's in-order runs included, so that the
    # tests see what a GPU does.
    alert_not_deterministic(OP_BACKWARD)
    saved = ctx.saved_tensors
    grad_out = _rows(grad_out.to(saved[0].dtype))  # e.g. the stride-0 gradient of a sum
    if _slice_reach(grad_out) >= OFFSET_LIMIT:  # a view wider than the output checked forward
        grad_out = grad_out.contiguous()
    dq_scaled, dk, dv, dtok, drpb, dkp, dvp, dfolded = _attention_backward(
        grad_out, *saved, *ctx.config)
    window = ctx.config[2]
    with autocast_off(dq_scaled.device.type):  # float32 sums, whatever the caller's autocast
        dq, dqe, dhead, dquery = _query_grads(dq_scaled, *saved[:4], ctx.needs_input_grad[1:4])
    local = (dk, dv, dtok, drpb) if window else (None,) * 4
    return (dq, dqe, dhead, dquery, *local, dkp, dvp, dfolded) + (None,) * 9


def _query_grads(dq_scaled: Tensor, q: Tensor, qe: Tensor, head_scale: Tensor,
                 query_scale: Tensor, needs: Tuple[bool, bool, bool]) -> Tuple:
    """Gradients of ``q``, ``qe``, ``head_scale``, ``query_scale`` (None where not needed) from
    the float32 one of the scaled queries ``(q + qe[h]) * f[h, n]``, ``f = head_scale[h] *
    query_scale[n]``: the parameter sums are taken in float32 and only ``q``'s gradient is cast
    to ``q.dtype``. In PyTorch rather than in the backward kernel: the extra registers made
    ptxas spill in the float32 configurations already at their limit."""
    dq = dq_scaled * (head_scale[:, None] * query_scale)[..., None]  # float32
    dqe = dq.sum((0, 2)) if needs[0] else None
    dhead = dquery = None
    if needs[1] or needs[2]:
        # d loss / d f[h, n], summed over the batch (float32, as the kernels add qe).
        df = (dq_scaled * (q + qe[:, None])).sum((0, 3))
        dhead = df @ query_scale if needs[1] else None
        dquery = head_scale @ df if needs[2] else None
    return dq.to(q.dtype), dqe, dhead, dquery


compat.register_autograd(OP, _backward, setup_context=_setup_context)


def triton_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, folded: Tensor, rows_w: Tensor,
                     weights_w: Optional[Tensor], size: Tuple[int, int],
                     pool_size: Tuple[int, int],
                     k_local: Optional[Tensor] = None, v_local: Optional[Tensor] = None,
                     token_weights: Optional[Tensor] = None,
                     local_bias: Optional[Tensor] = None,
                     query_embedding: Optional[Tensor] = None,
                     head_scale: Optional[Tensor] = None,
                     query_scale: Union[Tensor, float, None] = None,
                     fold_axis: str = 'rows') -> Tensor:
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
        folded, rows_w, weights_w: the CPB grid with one axis's taps applied and the other
            axis's taps that finish the bias (weights None for one tap of weight 1), as
            :func:`.bias_taps.fold_grid` returns them: with
            ``fold_axis`` 'rows', ``(heads, H, H', |values_w|)``
            and column taps ``(W, W', taps)``; with 'columns', ``(heads, |values_h|, W, W')``
            and row taps ``(H, H', taps)``. ``folded`` takes a gradient.
        k_local, v_local: ``(B, heads, H*W, d)`` keys and values of the sliding window.
        token_weights: ``(B, heads, H*W, window**2)`` weights added to the window probabilities.
        local_bias: ``(heads, window**2)`` local position bias.
        query_embedding: ``(heads, d)`` added to the queries (default zero).
        head_scale: ``(heads,)`` per-head factor, e.g. ``softplus(temperature)`` (default one).
        query_scale: ``(H*W,)`` per-query factor, e.g. TransNeXt's length scale, or one value
            (a number or a one-element tensor) for every query (default one).
        fold_axis: the axis ``folded`` has resolved, 'rows' or 'columns' (see above): a
            pooled logit costs one gather (and in backward one atomic add) per tap of the
            other axis.

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
    if fold_axis not in FOLD_AXES:
        raise ValueError(f'fold_axis must be one of {FOLD_AXES}, got {fold_axis!r}')
    columns_folded = fold_axis == 'columns'
    folded_pairs, tap_pairs = ((folded.shape[2:], (height, key_h)) if columns_folded else
                               (folded.shape[1:3], (width, key_w)))
    if folded.dim() != 4 or folded.shape[0] != heads or \
            tuple(folded_pairs) != ((width, key_w) if columns_folded else (height, key_h)) or \
            tuple(rows_w.shape[:2]) != tap_pairs or \
            (weights_w is not None and weights_w.shape != rows_w.shape):
        other = 'row' if columns_folded else 'column'
        raise ValueError(f'folded bias grid {tuple(folded.shape)} ({fold_axis} folded) and '
                         f'{other} taps {tuple(rows_w.shape)} do not map {size} queries to '
                         f'{pool_size} keys of {heads} heads')
    if not 1 <= rows_w.shape[-1] <= MAX_TAPS_PER_PAIR:
        raise ValueError(f'taps of shape {tuple(rows_w.shape)}: the kernels take 1 to '
                         f'{MAX_TAPS_PER_PAIR} taps per (query, key) pair, not '
                         f'{rows_w.shape[-1]}')
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
    import triton
    reason = triton_release_reason(triton.__version__)
    if reason:  # never compiled by a release below the floor, even when called directly
        raise RuntimeError(reason)
    _check_devices(q, k_pool=k_pool, v_pool=v_pool, folded=folded, rows_w=rows_w,
                   weights_w=weights_w, k_local=k_local,
                   v_local=v_local, token_weights=token_weights, local_bias=local_bias,
                   query_embedding=query_embedding, head_scale=head_scale,
                   query_scale=query_scale)
    # q also stands for the backward's gradient buffers of its shape; the output's layout (a
    # meta tensor: no memory) spans up to heads times more per slice.
    _check_offsets(q=q, out=_output(q, torch.device('meta')), k_pool=k_pool, v_pool=v_pool,
                   k_local=k_local, v_local=v_local, token_weights=token_weights, folded=folded,
                   rows_w=rows_w)
    query_args = _query_args(q, query_embedding, head_scale, query_scale)
    tensors = [q, k_pool, v_pool] + ([k_local, v_local, token_weights] if window else [])
    dtype = _kernel_dtype(q.device.type, tensors)
    if dtype not in KERNEL_CONFIGS:
        raise ValueError(f'the Triton attention supports {tuple(KERNEL_CONFIGS)}, got {dtype}')
    q, k_pool, v_pool = (_rows(t.to(dtype)) for t in (q, k_pool, v_pool))
    if window:
        k_local, v_local, token_weights = (_rows(t.to(dtype)) for t in local[:3])
        local_bias = local_bias.float().contiguous()
    tf32 = cuda_matmul_allows_tf32()
    out, _ = _attention(q, *query_args, k_local, v_local, token_weights, local_bias, k_pool, v_pool,
                        folded.float().contiguous(), rows_w.contiguous(),
                        None if weights_w is None else weights_w.float().contiguous(), height,
                        width, window, key_h, key_w, tf32, columns_folded)
    return out.to(q.dtype)  # the float32 output (see _output) in the dtype computed in


def _kernel_dtype(device_type: str, tensors: List[Tensor]) -> torch.dtype:
    """The dtype the kernels compute in (they accumulate in float32 whatever it is): with
    autocast on for ``device_type``, its dtype, as for a matmul on autocast's lower-precision
    list (float64 left as it is, as autocast leaves it); otherwise the inputs' promoted dtype.

    Under CUDA autocast the queries and keys arrive in float32 (``F.normalize`` runs in float32
    there): without this rule the kernels would run float32 FMAs instead of tensor-core MMAs.
    The rule is applied here, in Python before the op, rather than registered with
    ``torch.library.register_autocast``: that casts every floating input to one dtype fixed at
    registration, the CPB grid, tap weights and query transform included, which must stay
    float32, and would not follow the dtype autocast was entered with. torch.compile folds the
    autocast state read here to constants (guarded), so compiled graphs carry the same casts;
    the op has no autocast kernel of its own, so autocast passes its inputs through as cast.
    """
    cast = autocast_dtype(device_type)
    dtypes = [cast if cast is not None and t.is_floating_point() and t.dtype != torch.float64
              else t.dtype for t in tensors]
    return functools.reduce(torch.promote_types, dtypes)


def _check_devices(q: Tensor, **tensors: Union[Tensor, float, None]) -> None:
    """Raise a ValueError unless ``q`` is on a device the op runs on (CUDA; CPU under the
    interpreter; meta, shapes only) and every tensor of ``tensors`` is on ``q``'s device: a
    pointer to another device's memory would crash the kernels or read garbage."""
    device = q.device
    if device.type not in ('cuda', 'meta') and not (device.type == 'cpu' and interpreting()):
        raise ValueError(f'the Triton attention runs on CUDA tensors (on CPU only under '
                         f'TRITON_INTERPRET=1), but q is on {device}')
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.device != device:
            raise ValueError(f'{name} is on {t.device} but q is on {device}: the Triton '
                             f'attention needs all its tensors on one device')


#: The kernels address each ``(batch, head)`` slice from an int64 base with int32 offsets
#: (rows times row stride, plus channels): what one slice spans must stay below this.
OFFSET_LIMIT = 2 ** 31


def _slice_reach(t: Tensor, inner: int = 2) -> int:
    """Elements one slice of ``t`` spans, from its first to its last (its dims from ``inner``
    on; 0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(t.shape[inner:], t.stride()[inner:]))


def _check_offsets(**tensors: Optional[Tensor]) -> None:
    """Raise a ValueError if a tensor of ``tensors`` (None ones skipped) spans ``OFFSET_LIMIT``
    elements or more within one ``(batch, head)`` slice (its dims after the first two; for the
    3-d taps and the 4-d bias grid, the whole tensor): the kernels' int32 offsets inside a
    slice would wrap. Batch and head offsets are int64, so the batch size is not limited."""
    for name, t in tensors.items():
        if t is None or t.numel() == 0:
            continue
        inner = 2 if name not in ('folded', 'rows_w') else 0
        reach = _slice_reach(t, inner)
        if reach >= OFFSET_LIMIT:
            where = 'one (batch, head) slice of ' if inner else ''
            raise ValueError(
                f'{name} of shape {tuple(t.shape)} is too large for the Triton attention: '
                f'{where}it spans {reach} elements, but the kernels index within it with int32 '
                f'offsets (at most {OFFSET_LIMIT - 1}, limit 2**31 = {OFFSET_LIMIT}); use a '
                f'smaller input size')


def _query_args(q: Tensor, embedding: Optional[Tensor], head_scale: Optional[Tensor],
                query_scale: Union[Tensor, float, None]) -> Tuple[Tensor, Tensor, Tensor]:
    """The query transform as the kernels read it: float32 ``(heads, d)`` embedding and
    ``(heads,)`` factor and ``(H*W,)`` factor, all contiguous (one number is repeated: a stride
    of 0 for it would be one more compiled variant); defaults (zero, one) for the arguments left
    out."""
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
            query_scale.to(f32).contiguous())


def _rows(t: Tensor) -> Tensor:
    """``t`` with unit stride along its last dimension (the kernels' only layout requirement)."""
    return t if t.stride(-1) == 1 else t.contiguous()

