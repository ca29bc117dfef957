"""Attention maps of one query: where a token mixer's softmax puts its weight, e.g. in
TransNeXt's aggregated attention the ``window x window`` neighbours (fine, "foveal") and the
pooled keys (coarse, "peripheral") under one softmax, plus the learnable-token weights.

It reads the real computation without touching the forward path: a temporary forward pre-hook
on the chosen token mixer records its inputs (the forward stops there and the hook is removed),
then the query's weights are rebuilt from the module's own parts for that single query. What to
read is the backbone family's (the family contract's attention-map hooks): its
``token_mixers()`` list the modules per stage and block, its ``attention_adapters``
(:class:`~mmtransnext.models.backbones.base.AttentionAdapter`) say how to read each kind.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..models.backbones.base import families, family_of

Size2d = Tuple[int, int]


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
        model: a backbone of a registered family (:func:`mmtransnext.models.backbones.families`)
            or a model whose ``backbone`` is one.
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

        A token mixer without a window (full attention, TransXNet's OSRA whose keys come from
        the map reduced by a strided convolution, ``(H', W')`` = ``ceil(H / sr)``) gives
        ``pooled`` and the last two entries only. Which entries a kind of mixer gives is its
        family's :class:`~mmtransnext.models.backbones.base.AttentionAdapter`'s.
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
    backbone = backbone_of(model)
    adapter = backbone.attention_adapter(module)
    if adapter is None:
        supported = ', '.join(sorted(cls.__name__ for cls in backbone.attention_adapters))
        raise ValueError(f'no attention map for {type(module).__name__} (stage {stage}, block '
                         f'{block}); {type(backbone).__name__}\'s attention_adapters read: '
                         f'{supported or "none"}')
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
