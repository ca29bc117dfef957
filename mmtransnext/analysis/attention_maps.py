"""Attention maps of one query: where a token mixer's softmax puts its weight (TransNeXt's
aggregated and full attention, TransXNet's OSRA).

For aggregated attention a query attends under one softmax to its ``window x window``
neighbours (fine, "foveal") and to the pooled keys (coarse, "peripheral"); learnable-token
weights are added to the window part after the softmax. :func:`attention_map` returns those
three parts for one query of one block.

It reads the real computation without touching the forward path: a temporary forward pre-hook
on the chosen token mixer records its input tokens and :class:`StageGeometry` (the forward stops
there and the hook is removed), then the query's logits are rebuilt from the module's own parts
(its projections, ``pooled_kv``, ``scale_queries``, position bias, local bias, learnable tokens,
padding mask) for that single query. The position bias follows the module's
``attention_mode`` (the full reference bias or the fast path's row-folded grid), and both give
the same maps. Each kind of token mixer has an adapter (:data:`ATTENTION_ADAPTERS`); every
registered backbone family (:func:`mmtransnext.models.backbones.families`) lists its token
mixers per stage and block (its ``token_mixers()``, the family contract's attention-map hook).
"""
import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.backbones.base import families, family_of
from ..models.layers.attention import AggregatedAttention, FullAttention, StageGeometry
from ..models.layers.transxnet_layers import OSRA
from ..ops.bias_ops import expand_columns
from ..ops.dispatch import backend_for
from ..ops.sliding_window import window_padding_mask

Size2d = Tuple[int, int]


@dataclass(frozen=True)
class AttentionAdapter:
    """How to read one kind of token mixer.

    Attributes:
        feature_size: ``(module, inputs) -> (H, W)`` of the map its input tokens form.
        weights: ``(module, inputs, (y, x)) -> dict`` of the query's attention weights
            (see :func:`attention_map`); ``inputs`` are the module's positional arguments.
    """
    feature_size: Callable[[nn.Module, tuple], Size2d]
    weights: Callable[[nn.Module, tuple, Size2d], Dict[str, Tensor]]


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


def _aggregated_weights(attn: AggregatedAttention, inputs: tuple,
                        query: Size2d) -> Dict[str, Tensor]:
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


def _full_weights(attn: FullAttention, inputs: tuple, query: Size2d) -> Dict[str, Tensor]:
    x, geometry = inputs[0], inputs[1]
    heads, head_dim = attn.num_heads, attn.head_dim
    index = query[0] * geometry.size[1] + query[1]
    q, k, _ = attn.qkv(x).view(1, x.shape[1], 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q_scaled = attn.scale_queries(F.normalize(q[:, :, index:index + 1], dim=-1),
                                  _one_query_geometry(geometry, index))
    logits = (q_scaled @ F.normalize(k, dim=-1).transpose(-2, -1))[0, :, 0]
    logits = logits + _position_bias_row(attn, geometry, query)
    return dict(pooled=logits.softmax(dim=-1).reshape(heads, *geometry.pool_size))


def _osra_weights(attn: OSRA, inputs: tuple, query: Size2d) -> Dict[str, Tensor]:
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


def _geometry_size(module: nn.Module, inputs: tuple) -> Size2d:
    return tuple(inputs[1].size)


def _map_size(module: nn.Module, inputs: tuple) -> Size2d:
    return tuple(inputs[0].shape[-2:])


#: Adapters by token-mixer class (exact class first, then the first matching base class).
ATTENTION_ADAPTERS: Dict[type, AttentionAdapter] = {
    AggregatedAttention: AttentionAdapter(_geometry_size, _aggregated_weights),
    FullAttention: AttentionAdapter(_geometry_size, _full_weights),
    OSRA: AttentionAdapter(_map_size, _osra_weights),
}


def _lookup(table: Dict[type, object], obj: object) -> object:
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    return None


def backbone_of(model: nn.Module) -> nn.Module:
    """``model`` if it is a supported backbone, else its ``backbone`` attribute (a detector or
    segmentor); raises ValueError when neither is supported."""
    inner = getattr(model, 'backbone', None)
    inner = inner if isinstance(inner, nn.Module) else None
    for candidate in (model, inner):
        if candidate is not None and family_of(candidate) is not None:
            return candidate
    found = type(inner or model).__name__
    supported = ', '.join(sorted(families()))
    raise ValueError(f'attention maps are available for {supported} backbones, got {found}')


def token_mixers(model: nn.Module) -> List[List[nn.Module]]:
    """The token mixers of ``model``'s backbone, ``[stage][block]``."""
    return backbone_of(model).token_mixers()


class _Captured(Exception):
    """Raised by the capture hook to end the forward once the module's input is known."""


def capture_inputs(model: nn.Module, module: nn.Module, image: Tensor) -> tuple:
    """Positional inputs of ``module`` when ``model(image)`` runs (the forward stops there).

    The hook is removed afterwards, whatever happens; runs without gradients.
    """
    captured = []

    def hook(_, args):
        captured.append(args)
        raise _Captured

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(image)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f'{type(module).__name__} was not called by the forward of '
                         f'{type(model).__name__}')
    return captured[0]


def _check_image_and_point(image: Tensor, point: Sequence[int]) -> Tuple[int, int]:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f'image must be a (1, C, H, W) tensor, got {shape}')
    if len(point) != 2 or any(int(p) != p for p in point):
        raise ValueError(f'point must be a (y, x) pair of pixel indices, got {point!r}')
    y, x = int(point[0]), int(point[1])
    height, width = image.shape[2:]
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f'point (y={y}, x={x}) lies outside the {height}x{width} image')
    return y, x


def pixel_to_token(point: Size2d, image_size: Size2d, feature_size: Size2d) -> Size2d:
    """The feature-map cell holding pixel ``point`` when the image is split evenly into the
    feature grid."""
    return tuple(min(f - 1, p * f // s) for p, s, f in zip(point, image_size, feature_size))


def attention_map(model: nn.Module, image: Tensor, point: Sequence[int], stage: int,
                  block: int) -> Dict[str, Tensor]:
    """Attention weights of the query at pixel ``point`` in block ``block`` of stage ``stage``.

    Args:
        model: a registered backbone family (TransNeXt, TransXNet, ...) or a model whose
            ``backbone`` is one.
        image: ``(1, 3, H, W)`` input, normalised as the model expects; any size.
        point: ``(y, x)`` pixel of ``image``; the query is the stage's token holding it
            (:func:`pixel_to_token`).
        stage, block: 0-based.

    Returns:
        A dict of tensors, per head:

        - ``window`` ``(heads, w, w)``: softmax weights of the window keys centred on the query
          (row-major offsets ``-w//2 .. w//2``); 0 where the window leaves the map;
        - ``pooled`` ``(heads, H', W')``: softmax weights of the pooled keys (for full attention,
          whose keys are every position, ``(H', W')`` is the stage's size); ``window`` and
          ``pooled`` of a head sum to 1, being one softmax;
        - ``tokens`` ``(heads, w, w)``: the learnable-token weights added to the window weights
          after the softmax (0 outside the map);
        - ``query``: the query's ``(y, x)`` cell in the stage's feature map, and
          ``feature_size``: that map's ``(H, W)`` (int64).

        Full attention and TransXNet's OSRA (whose keys come from the map reduced by a strided
        convolution, ``(H', W')`` = ``ceil(H / sr)``) have no window: ``pooled`` and the last
        two entries only.
    """
    y, x = _check_image_and_point(image, point)
    mixers = token_mixers(model)
    if not 0 <= stage < len(mixers):
        raise ValueError(f'stage {stage} out of range: the backbone has {len(mixers)} stages '
                         f'(0-based)')
    if not 0 <= block < len(mixers[stage]):
        raise ValueError(f'block {block} out of range: stage {stage} has '
                         f'{len(mixers[stage])} blocks (0-based)')
    module = mixers[stage][block]
    adapter = _lookup(ATTENTION_ADAPTERS, module)
    if adapter is None:
        supported = ', '.join(sorted(cls.__name__ for cls in ATTENTION_ADAPTERS))
        raise ValueError(f'no attention map for {type(module).__name__} (stage {stage}, block '
                         f'{block}); supported token mixers: {supported}')
    backbone = backbone_of(model)
    was_training = backbone.training
    backbone.eval()  # no dropout / drop path in the recorded computation
    try:
        inputs = capture_inputs(backbone, module, image)
        size = adapter.feature_size(module, inputs)
        query = pixel_to_token((y, x), tuple(image.shape[2:]), size)
        with torch.no_grad():
            maps = adapter.weights(module, inputs, query)
    finally:
        backbone.train(was_training)
    device = next(iter(maps.values())).device
    maps['query'] = torch.tensor(query, device=device)
    maps['feature_size'] = torch.tensor(size, device=device)
    return maps
