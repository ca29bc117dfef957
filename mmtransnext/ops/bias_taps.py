"""Taps of the continuous position bias: which entries of the small CPB grid, with which
weights, make the bias of each (query, pooled key) pair, and the grid folded along one axis.

The CPB MLP runs over a small ``(heads, |values_h|, |values_w|)`` grid of the unique row and
column offsets (:mod:`mmtransnext.models.layers.position_bias` builds the table); per axis,
:class:`BiasTaps` maps each (query, key) pair to the grid rows it mixes (one tap when the
table was built for these sizes, up to two by two taps of bilinear resizing when it was not).
:func:`fold_grid` resolves one axis on the small grid, differentiably; the ops finish the
other axis chunk by chunk (:func:`.bias_ops.expand_columns`) or inside the Triton kernels.
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

Size2d = Tuple[int, int]


def linear_taps(src: int, dst: int) -> Tuple[Tensor, Tensor]:
    """Source indices and weights ``(dst, 2)`` of 1-D linear resizing with
    ``align_corners=False``, the arithmetic of ``F.interpolate(mode='bilinear')``."""
    scale = src / dst
    real = ((torch.arange(dst, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    lo = real.floor().long().clamp_max(src - 1)
    hi = torch.where(lo < src - 1, lo + 1, lo)
    frac = real - lo.float()
    return torch.stack([lo, hi], 1), torch.stack([1 - frac, frac], 1)


def resize_taps(index: Tensor, query_len: Union[int, torch.SymInt],
                key_len: Union[int, torch.SymInt]) -> Tuple[Tensor, Tensor]:
    """The four bilinear taps ``(Q, K, 4)`` of every (query, key) pair along one axis, table
    rows of ``index`` ``(Tq, Tk)`` and their weights (zero weights included): a computation on
    tensors only, which a graph holds with ``Q``, ``K`` symbolic."""
    q_idx, q_w = linear_taps(index.shape[0], query_len)
    k_idx, k_w = linear_taps(index.shape[1], key_len)
    rows = index[q_idx[:, None, :, None], k_idx[None, :, None, :]].reshape(query_len, key_len, 4)
    weights = (q_w[:, None, :, None] * k_w[None, :, None, :]).reshape(query_len, key_len, 4)
    return rows, weights


def axis_taps(index: Tensor, query_len: int, key_len: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Per (query, key) pair along one axis: the table rows ``(Q, K, T)`` it mixes and their
    weights (None when there is one tap of weight 1). Taps of zero weight everywhere are dropped,
    so an axis whose sizes do not change costs one tap. ``index`` is on the host: the
    data-dependent choices are made here, once per size pair, never on the device."""
    if tuple(index.shape) == (query_len, key_len):
        return index[..., None], None
    rows, weights = resize_taps(index, query_len, key_len)
    keep = (weights != 0).reshape(-1, 4).any(0)
    rows, weights = rows[..., keep], weights[..., keep]
    if rows.shape[-1] == 1 and bool((weights == 1).all()):
        return rows, None
    return rows, weights


@dataclass(frozen=True)
class BiasTaps:
    """Per-axis table rows and weights that turn a table's grid into the bias of a
    ``query_size`` x ``key_size`` pair of grids (see :func:`fold_grid`).

    Attributes:
        rows_h, weights_h: ``(Hq, Hk, taps)`` rows of ``values_h`` mixed per (query, key) row
            pair, and their float32 weights (None for one tap of weight 1).
        rows_w, weights_w: likewise for columns.
    """
    rows_h: Tensor
    weights_h: Optional[Tensor]
    rows_w: Tensor
    weights_w: Optional[Tensor]

    @classmethod
    def build(cls, host_index: Tuple[Tensor, Tensor], query_size: Size2d,
              key_size: Size2d) -> 'BiasTaps':
        """The taps of a table whose per-axis index maps are ``host_index`` (``(index_h,
        index_w)`` on the host: the row of each (query, key) offset pair of the table's grids)
        for these sizes, built on the host."""
        index_h, index_w = host_index
        return cls(*axis_taps(index_h, query_size[0], key_size[0]),
                   *axis_taps(index_w, query_size[1], key_size[1]))

    @property
    def fold_axis(self) -> str:
        """The axis worth folding on the small grid, so that a (query, key) pair reads one
        grid entry per tap of the other axis: ``'columns'`` where they have more taps than the
        rows (interpolation mode at a new width only, e.g. 800x1216 from an 800x800 table: 1
        row tap, 4 column taps), else ``'rows'``. Read from the tap counts, known on the host
        once per size pair."""
        return 'columns' if self.rows_w.shape[-1] > self.rows_h.shape[-1] else 'rows'

    def to(self, device: torch.device) -> 'BiasTaps':
        """A copy on ``device`` (self when already there)."""
        def move(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device)
        return BiasTaps(move(self.rows_h), move(self.weights_h), move(self.rows_w),
                        move(self.weights_w))


#: Axes :func:`fold_grid` can fold.
FOLD_AXES = ('rows', 'columns')


class FoldedBias(NamedTuple):
    """The CPB grid with one axis resolved on the small grid, and the taps of the other axis
    that finish the bias (see :func:`fold_grid`).

    Attributes:
        folded: ``axis`` 'rows': ``(heads, Hq, Hk, |values_w|)``; 'columns': ``(heads,
            |values_h|, Wq, Wk)`` (the table axis first, so that the pairs of a row-major
            query tile and key tile, which share their rows, read neighbouring entries).
        taps, weights: ``(Q, K, taps)`` rows of the other axis's values per (query, key) pair
            of that axis (``Q, K`` = ``Wq, Wk`` for 'rows', ``Hq, Hk`` for 'columns') and their
            float32 weights (None for one tap of weight 1).
        axis: the folded axis, 'rows' or 'columns'.
    """
    folded: Tensor
    taps: Tensor
    weights: Optional[Tensor]
    axis: str


def _fold(grid: Tensor, dim: int, rows: Tensor, weights: Optional[Tensor]) -> Tensor:
    """``sum_t weights[..., t] * grid`` indexed along ``dim`` (1: rows, 2: columns of the
    ``(heads, |values_h|, |values_w|)`` grid) by ``rows[..., t]`` ``(Q, K, taps)``: the index
    dim replaced by ``(Q, K)``."""
    folded = None
    for t in range(rows.shape[-1]):
        term = grid[:, rows[..., t]] if dim == 1 else grid[:, :, rows[..., t]]
        if weights is not None:
            weight = weights[..., t].to(term.dtype)
            term = term * (weight[..., None] if dim == 1 else weight)
        folded = term if folded is None else folded + term
    return folded


def fold_grid(grid: Tensor, taps: BiasTaps, axis: Optional[str] = None) -> FoldedBias:
    """The CPB ``grid`` ``(heads, |values_h|, |values_w|)`` with ``axis`` (default
    :attr:`BiasTaps.fold_axis`: the one with more taps) resolved on the small grid,
    differentiably, plus the other axis's ``taps``. With resizing (interpolation mode at a new
    size) a (query, key) pair mixes up to two table entries per axis, as bilinear resizing
    does: the folded axis's mixing costs ``taps x`` the folded grid here, once per call, and
    each pooled logit then reads one entry per tap of the other axis.

    The bias of query ``(yq, xq)`` and key ``(yk, xk)`` is ``sum_t weights[xq, xk, t] *
    folded[h, yq, yk, taps[xq, xk, t]]`` ('rows') or ``sum_t weights[yq, yk, t] *
    folded[h, taps[yq, yk, t], xq, xk]`` ('columns').
    """
    axis = taps.fold_axis if axis is None else axis
    if axis == 'rows':
        return FoldedBias(_fold(grid, 1, taps.rows_h, taps.weights_h), taps.rows_w,
                          taps.weights_w, axis)
    if axis == 'columns':
        return FoldedBias(_fold(grid, 2, taps.rows_w, taps.weights_w), taps.rows_h,
                          taps.weights_h, axis)
    raise ValueError(f'axis must be one of {FOLD_AXES} or None, got {axis!r}')
