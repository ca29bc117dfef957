"""TransNeXt's attention on the fast path, composed from the ops for a decided backend.

Length-scaled cosine attention: L2-normalised queries plus a query embedding, times
``softplus(temperature) * length scale`` (:class:`QueryScale`), against L2-normalised keys,
plus the continuous position bias given as its small CPB grid and :class:`.bias_taps.BiasTaps`.
:func:`aggregated_attention` attends to a sliding window and to pooled keys under one softmax
(with the learnable-token weights added on the window), :func:`full_attention` to every key.
With the ``'triton'`` backend both run the fused kernels of :mod:`.triton_attention`; with
``'ext'`` and ``'torch'`` the window logits (:func:`window_qk`), the pooled keys in chunks of
query rows merged with the window by log-sum-exp (:mod:`.pooled_attention`) and the window
aggregation (:func:`window_av`), by the backend's window ops and pooled kernel.

The layers (:mod:`mmtransnext.models.layers.attention`) call these with their parameters and
the backend they decided for the forward; :mod:`.self_test` calls them with its own tensors.
Nothing here decides a backend: an ``attn_impl`` string is a ``TypeError``.
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import Backend, exporting, require_backend
from .bias_taps import BiasTaps, fold_grid
from .export_attention import WindowPart, scan_attention
from .pooled_attention import pooled_attention
from .sliding_window import sliding_window_av, sliding_window_qk
from .triton_attention import triton_attention
from .window_ops import sliding_window_av_ext, sliding_window_qk_ext

Size2d = Tuple[int, int]


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x`` over its L2 norm along the last axis, the norm clamped to ``eps``: the numbers of
    ``F.normalize(x, dim=-1)``, by a broadcasting division (``F.normalize`` expands the norms to
    ``x``'s shape first, which an exported graph holds as an ``Expand`` per call)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def window_qk(q: Tensor, k: Tensor, rpb: Tensor, size: Size2d, window_size: int,
              padding_mask: Optional[Tensor] = None, *, backend: Backend) -> Tensor:
    """Window logits (see :func:`.sliding_window.sliding_window_qk`) with the ``backend``'s
    window ops. ``padding_mask`` only serves the PyTorch ops; the compiled op derives it from
    ``size``."""
    if require_backend(backend, 'window_qk').window == 'ext':
        return sliding_window_qk_ext(q, k, rpb, size, window_size)
    return sliding_window_qk(q, k, rpb, size, window_size, padding_mask)


def window_av(attn: Tensor, v: Tensor, size: Size2d, window_size: int, *,
              backend: Backend) -> Tensor:
    """Window aggregation (see :func:`.sliding_window.sliding_window_av`) with the
    ``backend``'s window ops."""
    if require_backend(backend, 'window_av').window == 'ext':
        return sliding_window_av_ext(attn, v, size, window_size)
    return sliding_window_av(attn, v, size, window_size)


class QueryScale(NamedTuple):
    """What turns normalised queries into the ones that attend.

    Attributes:
        query_embedding: ``(heads, 1, d)`` added to the normalised queries.
        temperature: ``(heads, 1, 1)``; the queries are multiplied by its softplus.
        length_scale: ``log`` of the number of keys each query sees, ``(N, 1)`` or a number.
    """
    query_embedding: Tensor
    temperature: Tensor
    length_scale: Union[Tensor, float]


def scaled_queries(q_norm: Tensor, scale: QueryScale) -> Tensor:
    """``(q_norm + query_embedding) * softplus(temperature) * length_scale``, the length scale
    in the temperature's dtype: a float32 scale would promote the queries of a ``.half()`` /
    ``.bfloat16()`` model back to float32 (under autocast the parameters, and so the scale,
    stay float32)."""
    length_scale = scale.length_scale
    if isinstance(length_scale, Tensor):
        length_scale = length_scale.to(scale.temperature.dtype)
    return (q_norm + scale.query_embedding) * F.softplus(scale.temperature) * length_scale


class WindowWeights(NamedTuple):
    """Aggregated attention's projections and the parameters of its window path.

    Attributes:
        q_weight, q_bias: the query projection ``(C, C)``, ``(C,)`` (bias may be None).
        kv_weight, kv_bias: the key/value projection ``(2C, C)``, ``(2C,)`` (bias may be
            None): keys from the first half, values from the second.
        local_bias: ``(heads, window**2)`` position bias of the window keys.
        tokens, token_bias: ``(heads, d, window**2)`` learnable tokens and ``(heads, 1,
            window**2)`` their bias: ``q_norm @ tokens + token_bias`` is added to the window
            probabilities.
    """
    q_weight: Tensor
    q_bias: Optional[Tensor]
    kv_weight: Tensor
    kv_bias: Optional[Tensor]
    local_bias: Tensor
    tokens: Tensor
    token_bias: Tensor


def _heads(x: Tensor, weight: Tensor, bias: Optional[Tensor], heads: int) -> Tensor:
    """``(B, N, C)`` tokens through a linear map into ``(B, heads, N, d)``."""
    batch, length, _ = x.shape
    out = F.linear(x, weight, bias)
    return out.view(batch, length, heads, out.shape[-1] // heads).transpose(1, 2)


def token_weights_by_head(q_norm: Tensor, tokens: Tensor, token_bias: Tensor) -> Tensor:
    """``q_norm @ tokens + token_bias`` as a ``(B, heads, N, w*w)`` view of head-major memory,
    in one batched matmul over heads that reads the queries where they are (``(B, N, heads,
    d)`` memory, as the projection writes them) instead of copying them first; for consumers
    that take any strides (the Triton kernels)."""
    batch, heads, length, dim = q_norm.shape
    if q_norm.stride() != (length * heads * dim, dim, heads * dim, 1):
        return q_norm @ tokens + token_bias
    by_head = q_norm.permute(1, 0, 2, 3).reshape(heads, batch * length, dim)  # a view
    out = torch.baddbmm(token_bias, by_head, tokens)
    return out.view(heads, batch, length, out.shape[-1]).transpose(0, 1)


def _triton(q_norm: Tensor, k: Tensor, v: Tensor, grid: Tensor, taps: BiasTaps, size: Size2d,
            pool_size: Size2d, scale: QueryScale, **local: Tensor) -> Tensor:
    """The fused Triton kernels: the bias folded on the small grid along the axis with more
    taps (:func:`.bias_taps.fold_grid`), the other axis's taps and the query transform inside
    the kernels."""
    heads, _, dim = scale.query_embedding.shape
    bias = fold_grid(grid, taps)
    length_scale = scale.length_scale
    return triton_attention(
        q_norm, k, v, *bias[:3], size, pool_size, **local,
        query_embedding=scale.query_embedding.view(heads, dim),
        head_scale=F.softplus(scale.temperature).view(heads),
        query_scale=(length_scale.reshape(-1) if isinstance(length_scale, Tensor)
                     else length_scale),
        fold_axis=bias.axis)


def aggregated_attention(x: Tensor, k_pool: Tensor, v_pool: Tensor, grid: Tensor,
                         taps: BiasTaps, size: Size2d, pool_size: Size2d, window_size: int,
                         weights: WindowWeights, scale: QueryScale,
                         padding_mask: Optional[Tensor], backend: Backend) -> Tensor:
    """Aggregated attention of ``(B, H*W, C)`` tokens ``x``: each query attends to its
    ``window_size**2`` neighbours and to the pooled keys under one softmax.

    Args:
        x: the tokens of an ``H x W`` map (``size``).
        k_pool, v_pool: ``(B, heads, P, d)`` normalised pooled keys and their values (``P``
            from ``pool_size``).
        grid: ``(heads, |values_h|, |values_w|)`` CPB MLP values over the position table.
        taps: the table's taps for ``size`` x ``pool_size``.
        window_size: odd side of the window.
        weights: the projections and window parameters (:class:`WindowWeights`).
        scale: the query transform (:class:`QueryScale`), its length scale ``(H*W, 1)``.
        padding_mask: ``(H*W, window**2)`` out-of-map window positions (PyTorch window ops).
        backend: the decision for this forward.

    Returns:
        ``(B, heads, H*W, d)``, before the output projection.

    The chunked path keeps few full-size tensors alive across the pooled attention: the
    learnable-token weights replace the normalised queries as soon as they are made, and the
    window keys and values come from the two halves of the projection separately, the values
    only once they are needed.
    """
    heads = k_pool.shape[1]
    dim = x.shape[-1]
    kv_w, kv_b = weights.kv_weight, weights.kv_bias
    q_norm = l2_normalize(_heads(x, weights.q_weight, weights.q_bias, heads))
    if require_backend(backend, 'aggregated_attention').name == 'triton':
        token_weights = token_weights_by_head(q_norm, weights.tokens, weights.token_bias)
        batch, length, _ = x.shape
        k_local, v_local = F.linear(x, kv_w, kv_b).view(batch, length, 2, heads,
                                                        dim // heads).permute(2, 0, 3, 1, 4)
        return _triton(q_norm, k_pool, v_pool, grid, taps, size, pool_size, scale,
                       k_local=l2_normalize(k_local), v_local=v_local,
                       token_weights=token_weights, local_bias=weights.local_bias)
    q_scaled = scaled_queries(q_norm, scale)
    if exporting():  # a graph: the whole attention in chunks of query rows under one Scan
        k_local, v_local = _heads(x, kv_w, kv_b, 2 * heads).chunk(2, dim=1)
        window = WindowPart(l2_normalize(k_local), v_local, weights.local_bias,
                            weights.tokens, weights.token_bias, window_size)
        return scan_attention(q_scaled, k_pool, v_pool, *fold_grid(grid, taps, 'columns')[:3],
                              q_norm=q_norm, window=window)
    token_weights = q_norm @ weights.tokens + weights.token_bias
    del q_norm
    k_local = l2_normalize(_heads(x, kv_w[:dim], None if kv_b is None else kv_b[:dim], heads))
    attn_local = window_qk(q_scaled, k_local, weights.local_bias, size, window_size,
                           padding_mask, backend=backend)
    del k_local
    lse_local = torch.logsumexp(attn_local, dim=-1, keepdim=True)
    out, local_mass = pooled_attention(q_scaled, k_pool, v_pool,
                                       *fold_grid(grid, taps, 'rows')[:3], extra_lse=lse_local,
                                       backend=backend)
    # The pooled keys' mass is float32: back to the logits' dtype, which a half model's
    # window op needs (under autocast the window op casts to autocast's dtype anyway).
    local_weights = (torch.exp(attn_local - lse_local) * local_mass +
                     token_weights).to(attn_local.dtype)
    v_local = _heads(x, kv_w[dim:], None if kv_b is None else kv_b[dim:], heads)
    return out + window_av(local_weights, v_local, size, window_size, backend=backend)


def full_attention(q_norm: Tensor, k: Tensor, v: Tensor, grid: Tensor, taps: BiasTaps,
                   size: Size2d, scale: QueryScale, backend: Backend) -> Tensor:
    """Full attention of normalised queries ``(B, heads, H*W, d)`` over every key ``k``/``v``
    of the ``H x W`` map (``size``), with the CPB bias of ``grid`` and ``taps`` (see
    :func:`aggregated_attention`): ``(B, heads, H*W, d)``, before the output projection."""
    if require_backend(backend, 'full_attention').name == 'triton':
        return _triton(q_norm, k, v, grid, taps, size, size, scale)
    if exporting():  # a graph: in chunks of query rows under one Scan
        return scan_attention(scaled_queries(q_norm, scale), k, v,
                              *fold_grid(grid, taps, 'columns')[:3])
    return pooled_attention(scaled_queries(q_norm, scale), k, v,
                            *fold_grid(grid, taps, 'rows')[:3], backend=backend)[0]
