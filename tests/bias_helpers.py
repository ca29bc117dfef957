"""The fast path's position bias expanded whole, for tests: the package expands it chunk by
chunk inside the attention, so these compose its steps (:func:`fold_rows`, then
:func:`expand_columns`) on the whole map to compare them with the oracle in :mod:`reference`.
They are not an oracle themselves: they run the package's code."""
from typing import Tuple

from torch import Tensor

from mmtransnext.models.layers.position_bias import PositionTable, fold_rows
from mmtransnext.ops.bias_ops import expand_columns
from mmtransnext.ops.dispatch import backend_for

Size2d = Tuple[int, int]


def table_grid(table: PositionTable, values: Tensor) -> Tensor:
    """``(T, heads)`` per-coordinate values as a ``(heads, |values_h|, |values_w|)`` grid (the
    layout :func:`~mmtransnext.models.layers.position_bias.cpb_grid` returns)."""
    return values.t().reshape(-1, table.values_h.numel(), table.values_w.numel())


def expand_bias(grid: Tensor, table: PositionTable, query_size: Size2d, key_size: Size2d,
                impl: str = 'auto') -> Tensor:
    """``(heads, Hq*Wq, Hk*Wk)`` bias from the CPB ``grid``: rows mixed on the small grid
    (:func:`fold_rows`), then columns while the full-size output is written
    (:func:`expand_columns`, with the backend ``attn_impl=impl`` decides for ``grid``). Other
    sizes than the table's resize the bias as bilinear interpolation does (the official
    interpolation mode)."""
    out = expand_columns(*fold_rows(grid, table, query_size, key_size), backend_for(impl, grid))
    return out.reshape(grid.shape[0], query_size[0] * query_size[1], key_size[0] * key_size[1])


def gather_bias(table: PositionTable, values: Tensor) -> Tensor:
    """``(heads, Nq, Nk)`` bias of per-coordinate ``values`` ``(T, heads)`` at the table's own
    grids (a pure gather)."""
    return expand_bias(table_grid(table, values), table, table.query_size, table.key_size)
