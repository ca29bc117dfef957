"""Adaptive average pooling that an exported graph can hold at any input size.

``F.adaptive_avg_pool2d`` exports as an ``AveragePool`` only when the output divides the input;
otherwise torch's decomposition gathers with index tensors computed for the example size, so
a graph exported with free height and width reads out of bounds (or wrong bins) at other sizes
(pytorch#42653 in the old exporter). :func:`adaptive_avg_pool2d` computes the same bins, while
a model is exported, as two averaging matrices built in the graph from the input's size:
``out = P_h @ x @ P_w^T`` with ``P[i, y] = 1 / |bin i|`` for ``y`` in bin ``i =
[floor(i * n / k), ceil((i + 1) * n / k))``. Eagerly it is ``F.adaptive_avg_pool2d``.
"""
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import exporting


def averaging_matrix(length: Union[int, torch.SymInt], bins: int, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
    """``(bins, length)`` matrix whose row ``i`` averages adaptive-pooling bin ``i``."""
    i = torch.arange(bins, device=device)
    start = torch.div(i * length, bins, rounding_mode='floor')
    end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode='floor')
    y = torch.arange(length, device=device)
    inside = (y[None, :] >= start[:, None]) & (y[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


def adaptive_avg_pool2d(x: Tensor, output_size: Union[int, Sequence[int]]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)``; while exporting, by averaging matrices
    (see the module docstring), so the graph pools correctly at every input size."""
    if not exporting():
        return F.adaptive_avg_pool2d(x, output_size)
    bins_h, bins_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    pool_h = averaging_matrix(x.shape[-2], bins_h, x.device, x.dtype)
    pool_w = averaging_matrix(x.shape[-1], bins_w, x.device, x.dtype)
    return pool_h @ x @ pool_w.transpose(0, 1)
