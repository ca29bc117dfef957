"""Sliding-window (local) attention of TransNeXt's aggregated attention, pure PyTorch.

Two ops over a ``window x window`` neighbourhood of every query on an ``H x W`` map, positions
outside the map being zero-padded keys/values:

- :func:`sliding_window_qk`: ``attn[b, h, n, l] = q[b, h, n] . k[b, h, nb(n, l)] + rpb[h, l]``,
  ``-inf`` where neighbour ``l`` of query ``n`` lies outside the map;
- :func:`sliding_window_av`: ``out[b, h, n] = sum_l attn[b, h, n, l] * v[b, h, nb(n, l)]``
  (outside positions contribute zero).

Window positions ``l`` are ordered row-major over ``(dy, dx)``, as ``F.unfold`` orders them.
These functions are the reference every compiled kernel is tested against.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Size2d = Tuple[int, int]


def window_validity(size: Size2d, window_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Which window positions fall inside the map, per axis: ``(H, w)`` and ``(W, w)`` booleans."""
    radius = window_size // 2
    offsets = torch.arange(window_size, device=device) - radius
    masks = []
    for length in size:
        pos = torch.arange(length, device=device)[:, None] + offsets[None, :]
        masks.append((pos >= 0) & (pos < length))
    return masks[0], masks[1]


def window_padding_mask(size: Size2d, window_size: int, device: torch.device) -> Tensor:
    """``(H*W, w*w)`` mask, True where a window position lies outside the feature map."""
    valid_h, valid_w = window_validity(size, window_size, device)
    valid = valid_h[:, None, :, None] & valid_w[None, :, None, :]
    return ~valid.reshape(size[0] * size[1], window_size * window_size)


def window_lengths(size: Size2d, window_size: int, device: torch.device) -> Tensor:
    """``(H*W, 1)`` float count of in-map window positions per query."""
    valid_h, valid_w = window_validity(size, window_size, device)
    counts = valid_h.sum(1, dtype=torch.float32)[:, None] * valid_w.sum(1, dtype=torch.float32)
    return counts.reshape(-1, 1)


def window_neighbours(x: Tensor, size: Size2d, window_size: int) -> Tensor:
    """Gather the zero-padded window of every position: ``(B, h, N, d) -> (B, h, N, L, d)``."""
    batch, heads, length, dim = x.shape
    height, width = size
    grid = x.reshape(batch * heads, height, width, dim).permute(0, 3, 1, 2)
    cols = F.unfold(grid, window_size, padding=window_size // 2)  # (B*h, d*L, N)
    cols = cols.view(batch, heads, dim, window_size * window_size, length)
    return cols.permute(0, 1, 4, 3, 2)


def sliding_window_qk(q: Tensor, k: Tensor, rpb: Tensor, size: Size2d, window_size: int,
                      padding_mask: Optional[Tensor] = None) -> Tensor:
    """Query-key logits over each query's window plus the local position bias.

    Args:
        q, k: ``(B, heads, H*W, head_dim)``.
        rpb: ``(heads, window_size**2)`` local relative position bias.
        size: ``(H, W)`` of the map.
        window_size: odd window side.
        padding_mask: optional precomputed ``(H*W, window_size**2)`` mask of outside positions.

    Returns:
        ``(B, heads, H*W, window_size**2)`` logits, ``-inf`` at outside positions.
    """
    keys = window_neighbours(k, size, window_size)
    logits = (q.unsqueeze(-2) @ keys.transpose(-1, -2)).squeeze(-2) + rpb.unsqueeze(1)
    if padding_mask is None:
        padding_mask = window_padding_mask(size, window_size, q.device)
    return logits.masked_fill(padding_mask, float('-inf'))


def sliding_window_av(attn: Tensor, v: Tensor, size: Size2d, window_size: int) -> Tensor:
    """Weighted sum of each query's window of values: ``(B, h, N, L), (B, h, N, d) -> (B, h, N, d)``."""
    values = window_neighbours(v, size, window_size)
    return (attn.unsqueeze(-2) @ values).squeeze(-2)
