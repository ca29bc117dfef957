"""Multi-scale deformable attention (Deformable DETR, DINO, Mask2Former's pixel decoder) in a
form an exported graph holds: bilinear sampling by ``F.grid_sample`` (ONNX ``GridSample``,
opset 16 and later), one level at a time with the level sizes known while tracing.

mmcv's ``MultiScaleDeformableAttention`` splits its values by the sizes read from a
``spatial_shapes`` tensor (and its CUDA path is a compiled kernel), which ``torch.export``
cannot trace when mmdet builds that tensor with ``torch._shape_as_tensor``.
:func:`multi_scale_deformable_attention` takes the level sizes as Python ints (from the known
input size: what a fixed-size export uses) or as a tensor (its values become the graph's
symbolic sizes, with runtime checks). :func:`exportable_deformable_attention` swaps a built
model's mmcv modules for :class:`DeformableAttentionForExport` while exporting, and puts them
back afterwards.
"""
import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['multi_scale_deformable_attention', 'level_sizes', 'DeformableAttentionForExport',
           'exportable_deformable_attention']

LevelShapes = Union[Tensor, Sequence[Sequence[int]]]


def level_sizes(spatial_shapes: LevelShapes, num_values: int) -> List[Tuple[int, int]]:
    """``(height, width)`` per level as Python ints (symbolic ints when traced from a tensor),
    checked to cover ``num_values`` values.

    Raises:
        ValueError: the shapes are not ``(levels, 2)`` or do not add up to ``num_values``
            (eagerly; while tracing, the check is a runtime assertion of the graph).
    """
    rows = spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
    sizes = [tuple(row) for row in rows]
    if not sizes or any(len(size) != 2 for size in sizes):
        raise ValueError(f'spatial_shapes must be (levels, 2) heights and widths, got {rows}')
    total = sum(h * w for h, w in sizes)
    if isinstance(total, int):
        if total != num_values:
            raise ValueError(f'the level sizes {sizes} hold {total} values, the value tensor '
                             f'{num_values}')
    else:
        for h, w in sizes:
            torch._check(h >= 0)
            torch._check(w >= 0)
        torch._check(total == num_values)
    return [(h, w) for h, w in sizes]


def multi_scale_deformable_attention(value: Tensor, spatial_shapes: LevelShapes,
                                     sampling_locations: Tensor,
                                     attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` (the computation of its kernel) with the
    level sizes given as ints or a tensor.

    Args:
        value: ``(B, K, heads, C)``, the levels' values one after another.
        spatial_shapes: ``(levels, 2)`` heights and widths, ints or an integer tensor.
        sampling_locations: ``(B, Q, heads, levels, points, 2)``, ``x, y`` in ``[0, 1]`` of
            each level's map (outside samples read zeros).
        attention_weights: ``(B, Q, heads, levels, points)``.

    Returns:
        ``(B, Q, heads * C)``.
    """
    batch, num_values, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = level_sizes(spatial_shapes, num_values)
    if len(sizes) != levels:
        raise ValueError(f'{len(sizes)} level sizes for sampling locations of {levels} levels')
    # grid_sample's grid is [-1, 1] over the map's outer pixel edges (align_corners=False)
    grids = (sampling_locations * 2 - 1).transpose(1, 2).flatten(0, 1)
    per_level = value.split([h * w for h, w in sizes], dim=1)
    sampled = []
    for level, (h, w) in enumerate(sizes):
        # (B, h*w, heads, C) -> (B*heads, C, h, w)
        level_map = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, channels, h, w)
        # (B*heads, C, Q, points)
        sampled.append(F.grid_sample(level_map, grids[:, :, level], mode='bilinear',
                                     padding_mode='zeros', align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries,
                                                        levels * points)
    out = (torch.cat(sampled, dim=3) * weights).sum(dim=3)  # (B*heads, C, Q)
    return out.reshape(batch, heads * channels, queries).transpose(1, 2)


def _is_mmcv_deformable_attention(module: nn.Module) -> bool:
    return any(cls.__name__ == 'MultiScaleDeformableAttention' and
               cls.__module__.startswith('mmcv') for cls in type(module).__mro__)


class DeformableAttentionForExport(nn.Module):
    """An mmcv ``MultiScaleDeformableAttention`` (its weights, shared) whose forward samples
    with :func:`multi_scale_deformable_attention`: the same arguments and numbers as mmcv's
    CPU path, ``spatial_shapes`` ints or a tensor."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        if not _is_mmcv_deformable_attention(attention):
            raise TypeError(f'{type(attention).__name__} is not mmcv\'s '
                            'MultiScaleDeformableAttention')
        self.attention = attention

    def forward(self, query: Tensor, key: Optional[Tensor] = None,
                value: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[LevelShapes] = None,
                level_start_index: Optional[Tensor] = None, **kwargs) -> Tensor:
        """mmcv's ``MultiScaleDeformableAttention.forward`` (``key`` and
        ``level_start_index`` are unused there too)."""
        attn = self.attention
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not attn.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        batch, queries, _ = query.shape
        num_values = value.shape[1]
        sizes = level_sizes(spatial_shapes, num_values)
        value = attn.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.)
        value = value.reshape(batch, num_values, attn.num_heads, -1)
        offsets = attn.sampling_offsets(query).reshape(
            batch, queries, attn.num_heads, attn.num_levels, attn.num_points, 2)
        weights = attn.attention_weights(query).reshape(
            batch, queries, attn.num_heads, attn.num_levels * attn.num_points).softmax(-1)
        weights = weights.reshape(batch, queries, attn.num_heads, attn.num_levels,
                                  attn.num_points)
        reference = reference_points[:, :, None, :, None]
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: (w, h) normalises x, y
            if isinstance(spatial_shapes, Tensor):
                normaliser = spatial_shapes.flip(-1).to(query)
            else:
                normaliser = torch.tensor([[w, h] for h, w in sizes], dtype=query.dtype,
                                          device=query.device)
            locations = reference + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the reference box's half size
            locations = reference[..., :2] + \
                offsets / attn.num_points * reference[..., 2:] * 0.5
        else:
            raise ValueError('reference_points must end in 2 (points) or 4 (boxes), got '
                             f'{reference_points.shape[-1]}')
        out = multi_scale_deformable_attention(value, sizes, locations, weights)
        out = attn.output_proj(out)
        if not attn.batch_first:
            out = out.transpose(0, 1)
        return attn.dropout(out) + identity


@contextlib.contextmanager
def exportable_deformable_attention(model: nn.Module) -> Iterator[int]:
    """Within the block, every mmcv ``MultiScaleDeformableAttention`` in ``model`` is a
    :class:`DeformableAttentionForExport` wrapping it; on leaving, the originals are back in
    place (the model is as before, also after an error). Yields how many were wrapped."""
    swapped = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if _is_mmcv_deformable_attention(child):
                    setattr(parent, name, DeformableAttentionForExport(child))
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
