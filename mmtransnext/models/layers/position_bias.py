"""Relative position tables for TransNeXt's continuous position bias (CPB).

The official release builds, for each stage, a table of every (query, pooled key) offset and
runs ``torch.unique`` over all ``N x P`` rows, which at detection sizes costs gigabytes. The
offsets are separable: the row offset depends only on (query row, key row) and the column offset
only on (query column, key column). So the unique 2-D coordinates are the cartesian product of the
unique 1-D offsets, in the same sorted order ``torch.unique(dim=0)`` returns, and the bias of a
(query, key) pair is found with two small per-axis index maps. Same numbers, kilobytes instead of
gigabytes.

Tables depend only on sizes, never on weights, so :func:`cached_position_table` keeps them in a
backbone's bounded :class:`~.size_cache.SizeKeyedCache`, keyed by (query size, key size,
pretrain size, device). They and their taps are built on the host (everything data-dependent,
such as ``torch.unique`` or which taps are needed, is decided there) and copied to the device
once, so a forward on a GPU never waits for the device.

:func:`official_position_table` and :func:`official_position_bias` are the reference path's
bias, the official computation step by step (the MLP over every unique coordinate of all
``N x P`` pairs, a gather by the index table, ``F.interpolate``); they call nothing of the fast
path above, so that a mistake there cannot hide from the tests that compare the two.
"""
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.amp import autocast_off
from ...ops.backend import exporting
from ...ops.bias_taps import BiasTaps, FoldedBias, fold_grid, resize_taps
from ...ops.budget import element_budget
from ...ops.export_attention import scan_mlp
from .size_cache import SizeKeyedCache

Size2d = Tuple[int, int]

#: Default bound of a backbone's table cache. An entry holds four small tensors (a few KB even at
#: 1333x800), so 1024 entries cover hundreds of multi-scale training sizes in a few MB.
DEFAULT_CACHE_ENTRIES = 1024


def _axis_offsets(query_len: int, key_len: int, pretrain_len: int) -> Tuple[Tensor, Tensor]:
    """Unique scaled offsets along one axis and, per (query, key) pair, the index of its offset
    (on the host).

    Key positions are the centres of the adaptive-average-pooling bins over the query positions,
    offsets are scaled so that the pretraining grid spans [-8, 8].
    """
    axis_q = torch.arange(query_len, dtype=torch.float32)
    axis_k = F.adaptive_avg_pool1d(axis_q.unsqueeze(0), key_len).squeeze(0)
    offsets = (axis_q[:, None] - axis_k[None, :]) / (pretrain_len - 1) * 8
    values, index = torch.unique(offsets.reshape(-1), sorted=True, return_inverse=True)
    return values, index.view(query_len, key_len)


def _log_spaced(t: Tensor) -> Tensor:
    """Signed log2 spacing of the coordinates, normalised by log2(8), as in Swin-V2's CPB."""
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def _log_coords(values_h: Tensor, values_w: Tensor) -> Tensor:
    """``(|values_h| * |values_w|, 2)`` log-spaced coordinates of the cartesian product, rows in
    the order ``torch.unique(dim=0)`` gives."""
    grid_h, grid_w = torch.meshgrid(values_h, values_w, indexing='ij')
    return _log_spaced(torch.stack([grid_h, grid_w], dim=-1).view(-1, 2))


@dataclass(frozen=True)
class PositionTable:
    """Coordinates fed to the CPB MLP and the maps from (query, key) pairs to table rows.

    Attributes:
        values_h, values_w: sorted unique offsets per axis (before log spacing).
        index_h: ``(query_h, key_h)`` row of each offset pair in ``values_h``.
        index_w: ``(query_w, key_w)`` likewise for columns.
        query_size, key_size: the grid sizes the table was built for.
        pretrain_size: the pretraining grid that scales the offsets.
        host_index: ``(index_h, index_w)`` on the host, where taps are built.
        coords: ``(T, 2)`` log-spaced coordinates of every (row, column) offset pair
            (``T = |values_h| * |values_w|``), rows in the order ``torch.unique(dim=0)`` gives:
            the CPB MLP's input, built once with the table instead of in every block call.
    """
    values_h: Tensor
    values_w: Tensor
    index_h: Tensor
    index_w: Tensor
    query_size: Size2d
    key_size: Size2d
    pretrain_size: Size2d
    host_index: Tuple[Tensor, Tensor] = field(repr=False, compare=False)
    coords: Tensor = field(repr=False, compare=False)
    _taps: SizeKeyedCache = field(
        default_factory=lambda: SizeKeyedCache(TAPS_PER_TABLE), init=False, repr=False,
        compare=False)

    def taps(self, query_size: Size2d, key_size: Size2d) -> 'BiasTaps':
        """The :class:`BiasTaps` that map this table to ``query_size`` x ``key_size`` grids,
        built once per size pair (they never depend on weights); the
        :data:`TAPS_PER_TABLE` most recently used pairs are kept."""
        return self._taps.get(
            (tuple(query_size), tuple(key_size)),
            lambda: BiasTaps.build(self.host_index, query_size, key_size).to(
                self.index_h.device))


#: Elements of one chunk of the CPB MLP's hidden layer in :func:`cpb_grid` on CPU (4 MB in
#: float32); on a GPU the chunk is a share of its memory (:mod:`mmtransnext.ops.budget`).
CPB_CHUNK_ELEMENTS = 1 << 20


class _CPBGrid(torch.autograd.Function):
    """``fc2(relu(fc1(coords)))`` as a ``(heads, T)`` grid, chunked over the coordinates,
    saving nothing of the hidden layer: it is recomputed in backward instead of being kept
    (``T x 512`` floats, over 100 MB per block at 512x512). Two aten ops per chunk: ``fc1``
    with its ReLU (``torch._addmm_activation``, on CUDA a GEMM with a bias-ReLU epilogue where
    cuBLASLt takes it, else a GEMM and a ReLU) and ``fc2`` written heads-major by one
    ``addmm``. Chunks are sized for the device: cache-sized on CPU, on a GPU one chunk at
    practical sizes, so the launches do not grow with the input."""

    @staticmethod
    def forward(ctx, coords: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor,
                bias2: Tensor) -> Tensor:
        length, hidden = coords.shape[0], weight1.shape[0]
        budget = element_budget(coords.device, CPB_CHUNK_ELEMENTS, buffers=3)
        step = length if budget is None else max(1, budget // hidden)
        if step >= length:  # one chunk: written in place by the matmul
            grid = _CPBGrid.chunk(coords, weight1, bias1, weight2, bias2)
        else:
            grid = coords.new_empty(weight2.shape[0], length)
            for i in range(0, length, step):
                grid[:, i:i + step] = _CPBGrid.chunk(coords[i:i + step], weight1, bias1,
                                                     weight2, bias2)
        ctx.step = step
        ctx.save_for_backward(coords, weight1, bias1, weight2)
        return grid

    @staticmethod
    def hidden(coords: Tensor, weight1: Tensor, bias1: Tensor) -> Tensor:
        """``relu(fc1(coords))``, ``(len(coords), hidden)``."""
        return torch._addmm_activation(bias1, coords, weight1.t())

    @staticmethod
    def chunk(coords: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor,
              bias2: Tensor) -> Tensor:
        """``(heads, len(coords))`` MLP values (heads-major output of one matmul: no layout
        copy)."""
        hidden = _CPBGrid.hidden(coords, weight1, bias1)
        return torch.addmm(bias2[:, None], weight2, hidden.t())

    @staticmethod
    def backward(ctx, grad: Tensor):
        # In the parameters' dtype as the forward, whatever autocast the caller runs under.
        with autocast_off(grad.device.type):
            return _CPBGrid._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        coords, weight1, bias1, weight2 = ctx.saved_tensors
        grad_weight1, grad_bias1 = torch.zeros_like(weight1), torch.zeros_like(bias1)
        grad_weight2 = torch.zeros_like(weight2)
        for i in range(0, coords.shape[0], ctx.step):
            part = coords[i:i + ctx.step]
            hidden = _CPBGrid.hidden(part, weight1, bias1)
            g = grad[:, i:i + ctx.step]  # (heads, chunk)
            grad_weight2.addmm_(g, hidden)
            grad_hidden = torch.ops.aten.threshold_backward(g.t() @ weight2, hidden, 0)
            grad_weight1.addmm_(grad_hidden.t(), part)
            grad_bias1 += grad_hidden.sum(0)
        return None, grad_weight1, grad_bias1, grad_weight2, grad.sum(1)


def cpb_grid(fc1: nn.Linear, fc2: nn.Linear, table: PositionTable) -> Tensor:
    """The CPB MLP (``fc2(relu(fc1(coords)))``) over every coordinate of ``table``, as a
    ``(heads, |values_h|, |values_w|)`` grid (the MLP over :attr:`PositionTable.coords`, whose
    row ``i`` is entry ``[:, i // |values_w|, i % |values_w|]``); the hidden layer is formed
    chunk by chunk and never saved for backward."""
    dtype, device_type = fc1.weight.dtype, fc1.weight.device.type
    bias1 = fc1.bias if fc1.bias is not None else fc1.weight.new_zeros(fc1.weight.shape[0])
    bias2 = fc2.bias if fc2.bias is not None else fc2.weight.new_zeros(fc2.weight.shape[0])
    coords = table.coords.to(dtype)
    if exporting():
        # In chunks under a Scan (outside the autocast context, which an exported program
        # cannot hold around a Scan): a table computed in the graph has a symbolic length, and
        # at a fixed size the chunks of a Python loop would be constant-folded by a runtime,
        # every block's hidden layers at once (gigabytes at detection sizes).
        grid = scan_mlp(coords, fc1.weight, bias1, fc2.weight, bias2)
    else:
        # In the parameters' dtype even under autocast: a small MLP whose output is a bias.
        with autocast_off(device_type):
            grid = _CPBGrid.apply(coords, fc1.weight, bias1, fc2.weight, bias2)
    return grid.view(-1, table.values_h.numel(), table.values_w.numel())


def build_position_table(query_size: Size2d, key_size: Size2d, pretrain_size: Size2d,
                         device: torch.device) -> PositionTable:
    """Build the relative position table for ``query_size`` queries and ``key_size`` pooled keys
    on the host and copy it to ``device``."""
    if min(pretrain_size) < 2:
        raise ValueError(f'pretrain grid {pretrain_size} must be at least 2x2 '
                         '(pretrain_size is too small for this stage)')
    values_h, index_h = _axis_offsets(query_size[0], key_size[0], pretrain_size[0])
    values_w, index_w = _axis_offsets(query_size[1], key_size[1], pretrain_size[1])
    return PositionTable(values_h.to(device), values_w.to(device), index_h.to(device),
                         index_w.to(device), tuple(query_size), tuple(key_size),
                         tuple(pretrain_size), (index_h, index_w),
                         _log_coords(values_h, values_w).to(device))


#: Size pairs whose :class:`~mmtransnext.ops.bias_taps.BiasTaps` a table keeps (a few KB
#: each).
TAPS_PER_TABLE = 64


def fold_bias(grid: Tensor, table: PositionTable, query_size: Size2d, key_size: Size2d,
              axis: Optional[str] = None) -> FoldedBias:
    """The CPB ``grid`` ``(heads, |values_h|, |values_w|)`` of ``table`` folded for
    ``query_size`` x ``key_size`` grids: :func:`~mmtransnext.ops.bias_taps.fold_grid` with the
    table's taps for these sizes (``axis`` by default the one with more taps)."""
    return fold_grid(grid, table.taps(query_size, key_size), axis)


def fold_rows(grid: Tensor, table: PositionTable, query_size: Size2d,
              key_size: Size2d) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The CPB ``grid`` with the row axis resolved, plus the column taps that finish the bias.

    Returns ``folded (heads, Hq, Hk, |values_w|)``, ``rows_w (Wq, Wk, taps)`` and ``w_w``
    (float32, same shape, or None for one tap of weight 1) such that
    ``expand_columns(folded, rows_w, w_w, backend)`` is the ``(heads, Hq, Wq, Hk, Wk)`` bias
    (:func:`fold_bias` with ``axis='rows'``, the layout the CPU paths expand).
    """
    return fold_bias(grid, table, query_size, key_size, 'rows')[:3]


class OfficialTable(NamedTuple):
    """The official relative position table (reference path).

    Attributes:
        index: ``(Nq*Nk,)`` row of ``coords`` for every (query, key) pair, query-major.
        coords: ``(T, 2)`` unique log-spaced relative coordinates, the CPB MLP's input.
        query_size, key_size: the grids it was built for.
    """
    index: Tensor
    coords: Tensor
    query_size: Size2d
    key_size: Size2d


def official_position_table(query_size: Size2d, key_size: Size2d, pretrain_size: Size2d,
                            device: torch.device) -> OfficialTable:
    """The official construction of the CPB table: every (query, key) offset, the unique rows
    of all ``Nq*Nk`` of them, log-spaced. ``O(Nq*Nk)`` memory (the fast path's separable
    table avoids it); used only by the reference path.

    The unique rows are found as ``torch.unique(dim=0)`` orders them (lexicographically) but
    through 1-D ``torch.unique`` calls: each column's values are ranked, and the rows are
    made unique by their pair of ranks: the row-wise sort of ``torch.unique(dim=0)`` needs
    memory and time in the table's size squared-ish (docs/benchmarks.md).
    """
    qh = torch.arange(query_size[0], dtype=torch.float32, device=device)
    qw = torch.arange(query_size[1], dtype=torch.float32, device=device)
    kh = F.adaptive_avg_pool1d(qh[None], key_size[0])[0]
    kw = F.adaptive_avg_pool1d(qw[None], key_size[1])[0]
    qh, qw = (t.reshape(-1) for t in torch.meshgrid(qh, qw, indexing='ij'))
    kh, kw = (t.reshape(-1) for t in torch.meshgrid(kh, kw, indexing='ij'))
    rel_h = (qh[:, None] - kh[None, :]) / (pretrain_size[0] - 1) * 8
    rel_w = (qw[:, None] - kw[None, :]) / (pretrain_size[1] - 1) * 8
    values_h, rank_h = torch.unique(rel_h.reshape(-1), return_inverse=True)
    values_w, rank_w = torch.unique(rel_w.reshape(-1), return_inverse=True)
    num_w = values_w.numel()
    rows, index = torch.unique(rank_h * num_w + rank_w, return_inverse=True)
    coords = torch.stack([values_h[rows // num_w], values_w[rows % num_w]], -1)
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
    return OfficialTable(index, coords, tuple(query_size), tuple(key_size))


def official_position_bias(fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, table: OfficialTable,
                           query_size: Size2d, key_size: Size2d, resize: bool) -> Tensor:
    """``(heads, Nq, Nk)`` CPB bias the official way: the MLP over every coordinate of
    ``table``, gathered by its index and, with ``resize`` (interpolation mode), resized from the
    table's grids to ``query_size``/``key_size`` with ``F.interpolate`` (bilinear, keys then
    queries)."""
    values = fc2(act(fc1(table.coords.to(fc1.weight.dtype))))  # (T, heads)
    (tq_h, tq_w), (tk_h, tk_w) = table.query_size, table.key_size
    bias = values.transpose(0, 1)[:, table.index].view(-1, tq_h * tq_w, tk_h * tk_w)
    if not resize:
        return bias
    heads, nq, nk = bias.shape[0], query_size[0] * query_size[1], key_size[0] * key_size[1]
    bias = F.interpolate(bias.reshape(heads, tq_h * tq_w, tk_h, tk_w), tuple(key_size),
                         mode='bilinear', align_corners=False)
    bias = bias.reshape(heads, tq_h * tq_w, nk).transpose(-1, -2).reshape(heads, nk, tq_h, tq_w)
    bias = F.interpolate(bias, tuple(query_size), mode='bilinear', align_corners=False)
    return bias.reshape(heads, nk, nq).transpose(-1, -2)


# ------------------------------------------------------------------ in an exported graph
SymSize2d = Tuple[Union[int, torch.SymInt], Union[int, torch.SymInt]]


def graph_axis_offsets(query_len: Union[int, torch.SymInt], key_len: Union[int, torch.SymInt],
                       pretrain_len: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """:func:`_axis_offsets` without ``torch.unique``, on tensors only (an exported graph
    computes it from the input size): the offset of query ``q`` and pooled key ``j`` is half an
    integer, ``(2q - (start_j + end_j - 1)) / 2`` for adaptive-pooling bin ``[start_j, end_j)``,
    so every offset is in the dense range of half-integers in ``[-(Q - 1), Q - 1]``. Returns
    those (a superset of the unique offsets, same values) and the ``(Q, K)`` index into them; the
    CPB MLP over the superset gives every pair the number the unique table gives it."""
    q = torch.arange(query_len, device=device)
    j = torch.arange(key_len, device=device)
    start = torch.div(j * query_len, key_len, rounding_mode='floor')
    end = torch.div((j + 1) * query_len + key_len - 1, key_len, rounding_mode='floor')
    # Bin centres lie in [0, Q - 1], so twice an offset lies in [-(2Q - 2), 2Q - 2]: a bound
    # linear in Q (the exact extremes, floor divisions of symbolic sizes, make guards that
    # torch.export cannot solve).
    span = 2 * query_len - 2
    twice = torch.arange(4 * query_len - 3, device=device, dtype=torch.float32) - span
    values = twice * 0.5 / (pretrain_len - 1) * 8
    index = 2 * q[:, None] - (start + end - 1)[None, :] + span
    return values, index


@dataclass(frozen=True)
class GraphPositionTable:
    """What :func:`cpb_grid` and :func:`fold_bias` read of a :class:`PositionTable`, computed
    on tensors only, so that an exported graph builds it from its (possibly symbolic) input
    size: no ``torch.unique``, no choice made on the host.

    Attributes:
        values_h, values_w, index_h, index_w, coords: as in :class:`PositionTable`.
        resize: whether the table is resized to the map (interpolation mode): the taps are then
            the four bilinear ones per axis (:func:`resize_taps`), else one of weight 1.
    """
    values_h: Tensor
    values_w: Tensor
    index_h: Tensor
    index_w: Tensor
    coords: Tensor
    resize: bool

    def taps(self, query_size: SymSize2d, key_size: SymSize2d) -> 'BiasTaps':
        """The :class:`BiasTaps` for these sizes, computed in the graph."""
        if not self.resize:
            return BiasTaps(self.index_h[..., None], None, self.index_w[..., None], None)
        return BiasTaps(*resize_taps(self.index_h, query_size[0], key_size[0]),
                        *resize_taps(self.index_w, query_size[1], key_size[1]))


def graph_position_table(query_size: SymSize2d, key_size: SymSize2d, pretrain_size: Size2d,
                         device: torch.device) -> GraphPositionTable:
    """The table of ``query_size`` queries and ``key_size`` pooled keys (extrapolation mode)
    computed from the sizes on tensors (:func:`graph_axis_offsets`)."""
    values_h, index_h = graph_axis_offsets(query_size[0], key_size[0], pretrain_size[0], device)
    values_w, index_w = graph_axis_offsets(query_size[1], key_size[1], pretrain_size[1], device)
    return GraphPositionTable(values_h, values_w, index_h, index_w,
                              _log_coords(values_h, values_w), resize=False)


def graph_resized_table(table: PositionTable) -> GraphPositionTable:
    """``table`` (built for fixed sizes, interpolation mode) with its taps to any map size
    computed in the graph."""
    return GraphPositionTable(table.values_h, table.values_w, table.index_h, table.index_w,
                              table.coords, resize=True)


def cached_position_table(cache: SizeKeyedCache, query_size: Size2d, key_size: Size2d,
                          pretrain_size: Size2d, device: torch.device) -> PositionTable:
    """The :class:`PositionTable` for these sizes on ``device``, from ``cache`` or built (and
    kept there) on a miss."""
    key = ('table', tuple(query_size), tuple(key_size), tuple(pretrain_size), str(device))
    return cache.get(key, lambda: build_position_table(query_size, key_size, pretrain_size,
                                                       device))
