"""One query's attention weights, rebuilt from a token mixer's own parts: the readers behind the
families' :attr:`~mmtransnext.models.backbones.base.MultiStageBackbone.attention_adapters`
(TransNeXt's aggregated and full attention, TransXNet's OSRA), which
:func:`mmtransnext.analysis.attention_map` calls with the inputs it recorded.

For aggregated attention a query attends under one softmax to its ``window x window``
neighbours (fine, "foveal") and to the pooled keys (coarse, "peripheral"); learnable-token
weights are added to the window part after the softmax. The query's logits are rebuilt from the
module's projections, ``pooled_kv``, ``scale_queries``, position bias, local bias, learnable
tokens and padding mask; the position bias follows the module's ``attention_mode`` (the full
reference bias or the fast path's row-folded grid), and both give the same maps.
"""
import dataclasses
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.bias_ops import expand_columns
from ...ops.dispatch import backend_for
from ...ops.sliding_window import window_padding_mask
from .attention import AggregatedAttention, FullAttention, StageGeometry
from .transxnet_layers import OSRA

Size2d = Tuple[int, int]


def _position_bias_row(attn: nn.Module, geometry: StageGeometry, query: Size2d) -> Tensor:
    """``(heads, H'*W')`` position bias of one query, computed as the module's mode does."""
    iy, ix = query
    if attn.attention_mode == 'reference':
        return attn.position_bias(geometry)[:, iy * geometry.size[1] + ix]
    folded, rows_w, w_w = attn.folded_bias(geometry)
    row = expand_columns(folded[:, iy:iy + 1].contiguous(), rows_w[ix:ix + 1].contiguous(),
                         None if w_w is None else w_w[ix:ix + 1].contiguous(),
                         backend_for(attn.attn_impl, folded))
    return row.reshape(folded.shape[0], -1)


def _one_query_geometry(geometry: StageGeometry, index: int) -> StageGeometry:
    """``geometry`` with the length scale of query ``index`` only (a scalar stays as it is)."""
    scale = geometry.seq_length_scale
    if isinstance(scale, Tensor) and scale.dim() > 0:
        scale = scale[index:index + 1]
    return dataclasses.replace(geometry, seq_length_scale=scale)


def aggregated_attention_weights(attn: AggregatedAttention, inputs: tuple,
                                 query: Size2d) -> Dict[str, Tensor]:
    """Softmax weights of the ``query`` cell's window keys and pooled keys, and the
    learnable-token weights, per head (``inputs``: the module's ``(x, geometry)``)."""
    x, geometry = inputs[0], inputs[1]
    (height, width), pool_size = geometry.size, geometry.pool_size
    heads, head_dim, window, dim = attn.num_heads, attn.head_dim, attn.window_size, attn.dim
    iy, ix = query
    index = iy * width + ix
    q_norm = F.normalize(attn.q(x[:, index:index + 1]).view(1, 1, heads, head_dim)
                         .transpose(1, 2), dim=-1)  # (1, heads, 1, d)
    q_scaled = attn.scale_queries(q_norm, _one_query_geometry(geometry, index))

    # The window's keys, position by position in the ops' row-major (dy, dx) order.
    mask = geometry.padding_mask
    if mask is None:
        mask = window_padding_mask(geometry.size, window, x.device)
    outside = mask[index]  # (window**2,)
    offsets = torch.arange(window, device=x.device) - window // 2
    ys = (iy + offsets).clamp(0, height - 1)
    xs = (ix + offsets).clamp(0, width - 1)
    neighbours = (ys[:, None] * width + xs[None, :]).reshape(-1)
    k_window = F.linear(x[0, neighbours], attn.kv.weight[:dim],
                        None if attn.kv.bias is None else attn.kv.bias[:dim])
    k_window = F.normalize(k_window.view(-1, heads, head_dim).transpose(0, 1), dim=-1)
    logits_window = (q_scaled[0] @ k_window.transpose(-2, -1))[:, 0]
    logits_window = (logits_window + attn.relative_pos_bias_local).masked_fill(
        outside, float('-inf'))

    k_pool, _ = attn.pooled_kv(x, geometry.size, pool_size,
                               fast=attn.attention_mode == 'fast')
    logits_pool = (q_scaled @ k_pool.transpose(-2, -1))[0, :, 0]
    logits_pool = logits_pool + _position_bias_row(attn, geometry, query)

    probs = torch.cat([logits_window, logits_pool], dim=-1).softmax(dim=-1)
    p_window, p_pool = probs.split([window * window, logits_pool.shape[-1]], dim=-1)
    tokens = (q_norm @ attn.learnable_tokens + attn.learnable_bias)[0, :, 0]
    tokens = tokens.masked_fill(outside, 0.)  # they would multiply zero padding
    return dict(window=p_window.reshape(heads, window, window),
                pooled=p_pool.reshape(heads, *pool_size),
                tokens=tokens.reshape(heads, window, window))


def full_attention_weights(attn: FullAttention, inputs: tuple,
                           query: Size2d) -> Dict[str, Tensor]:
    """Softmax weights of the ``query`` cell over every position, per head (``inputs``: the
    module's ``(x, geometry)``)."""
    x, geometry = inputs[0], inputs[1]
    heads, head_dim = attn.num_heads, attn.head_dim
    index = query[0] * geometry.size[1] + query[1]
    q, k, _ = attn.qkv(x).view(1, x.shape[1], 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q_scaled = attn.scale_queries(F.normalize(q[:, :, index:index + 1], dim=-1),
                                  _one_query_geometry(geometry, index))
    logits = (q_scaled @ F.normalize(k, dim=-1).transpose(-2, -1))[0, :, 0]
    logits = logits + _position_bias_row(attn, geometry, query)
    return dict(pooled=logits.softmax(dim=-1).reshape(heads, *geometry.pool_size))


def osra_weights(attn: OSRA, inputs: tuple, query: Size2d) -> Dict[str, Tensor]:
    """TransXNet's OSRA: no window; every query attends to the keys of the reduced map (a
    strided depthwise conv, then a residual 3x3 depthwise conv), plus the stage's position
    bias. Heads split the channels in order."""
    x, pos_bias = inputs[0], (inputs[1] if len(inputs) > 1 else None)
    channels, height, width = x.shape[1:]
    heads = attn.num_heads
    iy, ix = query
    q = attn.q(x[:, :, iy:iy + 1, ix:ix + 1]).reshape(heads, 1, channels // heads)
    reduced = attn.sr(x)
    reduced = attn.local_conv(reduced) + reduced
    k = torch.chunk(attn.kv(reduced), 2, dim=1)[0]
    key_size = tuple(k.shape[-2:])
    logits = (q @ k.reshape(heads, channels // heads, -1))[:, 0] * attn.scale
    if pos_bias is not None:
        bias = pos_bias[..., iy * width + ix, :]
        logits = logits + bias.reshape(-1, logits.shape[-1]).to(logits.dtype)
    return dict(pooled=logits.softmax(dim=-1).reshape(heads, *key_size))


def geometry_size(module: nn.Module, inputs: tuple) -> Size2d:
    """The map size of a TransNeXt attention layer's ``(x, geometry)`` inputs."""
    return tuple(inputs[1].size)


def map_size(module: nn.Module, inputs: tuple) -> Size2d:
    """The map size of a token mixer whose first input is an NCHW map."""
    return tuple(inputs[0].shape[-2:])
