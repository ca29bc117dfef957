"""TransNeXt token mixers: Aggregated Attention (stages with pooling) and full attention.

Both use length-scaled cosine attention: L2-normalised queries plus a learned query embedding,
times ``softplus(temperature) * log(number of keys)``, against L2-normalised keys, plus a
continuous relative position bias (CPB) from a 2-layer MLP over log-spaced offsets.

Aggregated Attention lets each query attend, under one softmax, to

- its ``window x window`` neighbours (fine, "foveal" keys) with a local position bias and
  out-of-map positions masked, and
- ``(H/sr) x (W/sr)`` pooled keys (coarse, "peripheral": 1x1 conv, GELU, adaptive average pool,
  LayerNorm) with the CPB;

and adds, on the local path only, query-dependent weights from learnable tokens (``q . tokens +
bias``). Parameter names follow the official checkpoints.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from mmengine.model.weight_init import trunc_normal_

from ...ops.backend import Backend, check_impl, exporting
from ...ops.bias_taps import BiasTaps
from ...ops.cosine_attention import (QueryScale, WindowWeights, aggregated_attention,
                                     full_attention, l2_normalize, scaled_queries)
from ...ops.dispatch import backend_for
from ...ops.export_attention import per_run
from ...ops.sliding_window import sliding_window_av, sliding_window_qk
from ...utils import compat
from ...ops.pooling import adaptive_avg_pool2d
from .position_bias import (OfficialTable, PositionTable, cpb_grid, fold_rows,
                            official_position_bias, official_position_table)
from .weight_cache import WeightKeyed, reuse_or_build, worth_keeping

Size2d = Tuple[int, int]

#: ``'fast'``: pooled keys through the fused attention kernel in chunks of query rows, merged
#: with the window keys by log-sum-exp; the position bias expanded chunk by chunk from the CPB
#: grid (never whole, recomputed in backward) and, without gradients, the MLP run once per size
#: until the weights change; a copy-free ConvGLU. ``'reference'``: the official computation
#: step by step in plain PyTorch (the official position table with ``torch.unique`` over all
#: query-key pairs, the MLP over it, a gather by its index, ``F.interpolate`` twice in
#: interpolation mode; window mask and lengths from ``F.unfold``; concatenated logits, one
#: softmax): the oracle the fast path is tested against. It runs no compiled op and none of the
#: fast path's bias code (separable tables, taps, folding, ``expand_bias``).
ATTENTION_MODES = ('fast', 'reference')


@dataclass
class StageGeometry:
    """Everything about a stage's feature size that its blocks share (computed once per forward).

    Attributes:
        size: ``(H, W)`` of the feature map.
        pool_size: ``(H', W')`` of the pooled keys (equal to ``size`` for full attention).
        seq_length_scale: ``log`` of the number of keys each query sees, ``(H*W, 1)`` tensor or
            a float (fast path).
        table: position table the CPB MLP runs over (fast path).
        resize: True in interpolation mode: the bias built on ``table``'s grids is resized
            bilinearly to ``size`` / ``pool_size``.
        padding_mask: ``(H*W, window**2)`` mask of out-of-map window positions, or None (fast
            path).
        official_source: builds the reference path's :class:`OfficialTable` (by default the
            official construction on ``table``'s sizes and device); called at most once.
    """
    size: Size2d
    pool_size: Size2d
    seq_length_scale: Union[Tensor, float]
    table: PositionTable
    resize: bool
    padding_mask: Optional[Tensor] = None
    official_source: Optional[Callable[[], OfficialTable]] = field(default=None, repr=False)
    _official: Optional[OfficialTable] = field(default=None, init=False, repr=False)

    def official_table(self) -> OfficialTable:
        """The official position table of the reference path, built at first use and shared
        by the blocks of the stage (as the official code passes it to every block)."""
        if self._official is None:
            if self.official_source is not None:
                self._official = self.official_source()
            else:
                t = self.table
                self._official = official_position_table(t.query_size, t.key_size,
                                                         t.pretrain_size, t.index_h.device)
        return self._official


def official_window_lengths_and_mask(size: Size2d, window_size: int,
                                     device: torch.device) -> Tuple[Tensor, Tensor]:
    """``(H*W, 1)`` count of in-map window positions per query and the ``(H*W, window**2)``
    mask of out-of-map ones, the official way (``F.unfold`` of a map of ones)."""
    ones = torch.ones(1, 1, *size, device=device)
    unfolded = F.unfold(ones, window_size, padding=window_size // 2)[0]  # (L, H*W)
    return unfolded.sum(0).unsqueeze(-1), unfolded.transpose(0, 1) == 0


def check_attention_mode(mode: str) -> str:
    """Validate an ``attention_mode`` value."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f'attention_mode must be one of {ATTENTION_MODES}, got {mode!r}')
    return mode


def _init_temperature(num_heads: int) -> nn.Parameter:
    # softplus(temperature) starts at 1 / 0.24.
    return nn.Parameter(torch.log(torch.expm1(torch.full((num_heads, 1, 1), 1 / 0.24))))


def _init_param(*shape: int, std: float) -> nn.Parameter:
    param = nn.Parameter(torch.empty(*shape))
    trunc_normal_(param, std=std)
    return param


class _CosineAttentionBase(nn.Module):
    """Parameters and position bias shared by both attention kinds."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float,
                 attention_mode: str = 'fast', attn_impl: str = 'auto') -> None:
        super().__init__()
        self.attention_mode = check_attention_mode(attention_mode)
        self.attn_impl = check_impl(attn_impl)
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.temperature = _init_temperature(num_heads)
        self.query_embedding = _init_param(num_heads, 1, self.head_dim, std=0.02)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb_fc1 = nn.Linear(2, 512, bias=True)
        self.cpb_act = nn.ReLU(inplace=True)
        self.cpb_fc2 = nn.Linear(512, num_heads, bias=True)
        #: ``(table, WeightKeyed grid)`` of the last inference forward.
        self._grid_cache: Optional[Tuple[PositionTable, WeightKeyed]] = None

    def use_fast_path(self) -> bool:
        """Fast path unless the reference is asked for or attention dropout is active (the
        fused kernel cannot drop the two key sets' probabilities separately)."""
        return self.attention_mode == 'fast' and not (self.training and self.attn_drop.p > 0)

    def _cpb_grid(self, table: PositionTable, keep: bool = True) -> Tensor:
        """The CPB MLP over ``table`` as a ``(heads, |values_h|, |values_w|)`` grid.

        Without gradients and with ``keep``, for weights in host memory, it is computed once
        per table and reused while the MLP's weights are bit for bit those it was computed from
        (checked against a copy of them, see :mod:`.weight_cache`: updates through ``.data``,
        as EMA and Mean-Teacher hooks make, change no version counter). On a GPU, and on the
        Triton path (``keep=False``), it is recomputed per forward: the check would be a host
        synchronisation.

        While exporting at a fixed size, the grid kept for ``table`` is the graph's constant:
        :func:`mmtransnext.deployment.prepare` runs the eager forward at the export size, which
        keeps it from the weights being exported, just before tracing (a traced forward sees
        placeholder weights and cannot check them). It passes through
        :func:`~mmtransnext.ops.export_attention.per_run`, so that a runtime folds none of its
        large products (the column-folded grid) into constants. Without a kept grid (free
        sizes, weights on a GPU) the graph runs the MLP.
        """
        cached = self._grid_cache
        if exporting() and cached is not None and cached[0] is table:
            return per_run(cached[1].value)
        weights = [p for p in (self.cpb_fc1.weight, self.cpb_fc1.bias, self.cpb_fc2.weight,
                               self.cpb_fc2.bias) if p is not None]
        if torch.is_grad_enabled() or not keep or not worth_keeping(weights):
            self._grid_cache = None
            return cpb_grid(self.cpb_fc1, self.cpb_fc2, table)
        entry = cached[1] if cached is not None and cached[0] is table else None
        entry = reuse_or_build(entry, weights,
                               lambda: cpb_grid(self.cpb_fc1, self.cpb_fc2, table))
        self._grid_cache = (table, entry)
        return entry.value

    def clear_cache(self) -> None:
        """Forget the CPB grid kept for inference."""
        self._grid_cache = None

    def position_bias(self, geometry: StageGeometry) -> Tensor:
        """``(heads, H*W, H'*W')`` continuous relative position bias, the official way: the MLP
        over the official table, gathered, and in interpolation mode resized (reference path;
        see :func:`official_position_bias`)."""
        return official_position_bias(self.cpb_fc1, self.cpb_act, self.cpb_fc2,
                                      geometry.official_table(), geometry.size,
                                      geometry.pool_size, geometry.resize)

    def reference_queries(self, q_norm: Tensor, geometry: StageGeometry,
                          local_lengths: Optional[Tensor] = None) -> Tensor:
        """Reference path's query scaling: the official length scale ``log(keys seen)`` from
        ``local_lengths`` (window positions in the map, per query) plus the pooled keys."""
        num_pool = geometry.pool_size[0] * geometry.pool_size[1]
        if local_lengths is None:
            scale = torch.log(torch.as_tensor(float(num_pool), device=q_norm.device))
        else:
            scale = torch.log(local_lengths + num_pool)
        return self._scaled(q_norm, scale)

    def query_scale(self, length_scale: Union[Tensor, float]) -> QueryScale:
        """The query transform with ``length_scale`` (see
        :func:`mmtransnext.ops.cosine_attention.scaled_queries`)."""
        return QueryScale(self.query_embedding, self.temperature, length_scale)

    def _scaled(self, q_norm: Tensor, length_scale: Union[Tensor, float]) -> Tensor:
        """``(q_norm + query_embedding) * softplus(temperature) * length_scale``."""
        return scaled_queries(q_norm, self.query_scale(length_scale))

    def folded_bias(self, geometry: StageGeometry,
                    keep: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """The position bias as a row-folded grid and column taps (fast path): what
        :func:`mmtransnext.ops.pooled_attention.pooled_attention` expands chunk by chunk.
        The folded grid is rebuilt per call: kept, it would cost ``Hq*Hk/|values_h|`` times
        the grid's memory in every block. ``keep``: whether the CPB grid may be kept for
        inference (see :meth:`_cpb_grid`)."""
        return fold_rows(self._cpb_grid(geometry.table, keep), geometry.table, geometry.size,
                         geometry.pool_size)

    def grid_and_taps(self, geometry: StageGeometry,
                      backend: Backend) -> Tuple[Tensor, BiasTaps]:
        """The CPB grid (kept for inference except on the Triton path, see
        :meth:`_cpb_grid`) and the table's taps for the stage's sizes: the position bias as
        :mod:`mmtransnext.ops.cosine_attention` takes it."""
        grid = self._cpb_grid(geometry.table, keep=backend.name != 'triton')
        return grid, geometry.table.taps(geometry.size, geometry.pool_size)

    def scale_queries(self, q_norm: Tensor, geometry: StageGeometry) -> Tensor:
        """Add the query embedding and apply the length-scaled temperature."""
        return self._scaled(q_norm, geometry.seq_length_scale)

    def project(self, x: Tensor) -> Tensor:
        """``(B, heads, N, d)`` -> ``(B, N, C)`` followed by the output projection."""
        batch, _, length, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, length, self.dim)))


class AggregatedAttention(_CosineAttentionBase):
    """Pixel-focused aggregated attention: sliding-window keys + pooled keys, one softmax.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: odd side of the sliding window.
        sr_ratio: spatial reduction of the pooled keys (pool to ``H // sr_ratio``).
        qkv_bias: bias in the query and key/value projections.
        attn_drop: dropout on attention weights.
        proj_drop: dropout after the output projection.
        attn_impl: backend of the fast path (see :mod:`mmtransnext.ops.dispatch`): 'triton'
            (fused Triton kernels for the whole attention), 'ext' (compiled sliding-window ops),
            'torch' (no compiled code, position-bias expansion included), or 'auto' ('triton'
            for CUDA tensors when triton imports and passes its self-test, else 'ext' when
            built, else 'torch'), decided once per device and dtype by
            :func:`mmtransnext.ops.dispatch.choose_backend`; the reference mode always runs
            plain PyTorch.
        attention_mode: 'fast' or 'reference' (see :data:`ATTENTION_MODES`).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 3, sr_ratio: int = 8,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 attn_impl: str = 'auto', attention_mode: str = 'fast') -> None:
        super().__init__(dim, num_heads, attn_drop, proj_drop, attention_mode, attn_impl)
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f'window_size must be a positive odd number, got {window_size}')
        self.window_size = window_size
        self.local_len = window_size ** 2
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.relative_pos_bias_local = _init_param(num_heads, self.local_len, std=0.0004)
        self.learnable_tokens = _init_param(num_heads, self.head_dim, self.local_len, std=0.02)
        self.learnable_bias = nn.Parameter(torch.zeros(num_heads, 1, self.local_len))

    def pooled_kv(self, x: Tensor, size: Size2d, pool_size: Size2d,
                  fast: bool = False) -> Tuple[Tensor, Tensor]:
        """Pooled keys (L2-normalised) and values, each ``(B, heads, H'*W', d)``.

        ``fast`` applies the 1x1 conv as a linear layer on the tokens and pools the
        channels-last view, so the full-size map is never transposed into NCHW memory.
        """
        batch, _, channels = x.shape
        if fast:
            tokens = compat.contiguous_grad(
                self.act(F.linear(x, self.sr.weight.view(channels, channels), self.sr.bias)))
            grid = tokens.view(batch, size[0], size[1], channels).permute(0, 3, 1, 2)
        else:
            grid = self.act(self.sr(x.transpose(1, 2).reshape(batch, channels, *size)))
        pooled = adaptive_avg_pool2d(grid, pool_size)  # in-graph bins while exporting
        pooled = self.norm(pooled.flatten(2).transpose(1, 2))
        # The pooled length spelled out: -1 is ambiguous in an empty batch.
        k, v = self.kv(pooled).view(batch, pooled.shape[1], 2, self.num_heads,
                                    self.head_dim).permute(2, 0, 3, 1, 4)
        return l2_normalize(k), v

    def forward(self, x: Tensor, geometry: StageGeometry) -> Tensor:
        """``(B, H*W, C)`` tokens -> ``(B, H*W, C)``: the fast path with the backend decided
        once for this forward, or the reference."""
        if not self.use_fast_path():
            return self.forward_reference(x, geometry)
        return self.forward_with(x, geometry, backend_for(self.attn_impl, x))

    def forward_with(self, x: Tensor, geometry: StageGeometry, backend: Backend) -> Tensor:
        """The fast path with ``backend`` (a decision of
        :func:`mmtransnext.ops.dispatch.choose_backend`): the fused Triton kernels, or the
        window ops and chunked pooled attention it names
        (:func:`mmtransnext.ops.cosine_attention.aggregated_attention`)."""
        k_pool, v_pool = self.pooled_kv(x, geometry.size, geometry.pool_size, fast=True)
        weights = WindowWeights(self.q.weight, self.q.bias, self.kv.weight, self.kv.bias,
                                self.relative_pos_bias_local, self.learnable_tokens,
                                self.learnable_bias)
        out = aggregated_attention(x, k_pool, v_pool, *self.grid_and_taps(geometry, backend),
                                   geometry.size, geometry.pool_size, self.window_size, weights,
                                   self.query_scale(geometry.seq_length_scale),
                                   geometry.padding_mask, backend)
        return self.project(out)

    def forward_reference(self, x: Tensor, geometry: StageGeometry) -> Tensor:
        """The official computation: concatenated logits, one softmax, unfolded windows."""
        size, window = geometry.size, self.window_size
        batch, length, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q_norm = F.normalize(self.q(x).view(batch, length, heads, head_dim).transpose(1, 2),
                             dim=-1)
        k_local, v_local = self.kv(x).view(batch, length, 2, heads, head_dim).permute(
            2, 0, 3, 1, 4)
        k_local = F.normalize(k_local, dim=-1)
        lengths, mask = official_window_lengths_and_mask(size, window, x.device)
        q_scaled = self.reference_queries(q_norm, geometry, lengths)
        attn_local = sliding_window_qk(q_scaled, k_local, self.relative_pos_bias_local, size,
                                       window, mask)
        k_pool, v_pool = self.pooled_kv(x, size, geometry.pool_size)
        attn_pool = q_scaled @ k_pool.transpose(-2, -1) + self.position_bias(geometry)

        attn = torch.cat([attn_local, attn_pool], dim=-1).softmax(dim=-1)
        attn = self.attn_drop(attn)
        attn_local, attn_pool = attn.split([self.local_len, attn_pool.shape[-1]], dim=-1)

        local_weights = q_norm @ self.learnable_tokens + self.learnable_bias + attn_local
        out = sliding_window_av(local_weights, v_local, size, window)
        out = out + attn_pool @ v_pool
        return self.project(out)


class FullAttention(_CosineAttentionBase):
    """Global length-scaled cosine attention with CPB, used by stages with ``sr_ratio == 1``.

    Args:
        dim: channels.
        num_heads: attention heads.
        qkv_bias: bias in the fused query/key/value projection.
        attn_drop: dropout on attention weights.
        proj_drop: dropout after the output projection.
        attention_mode: 'fast' (fused ``scaled_dot_product_attention``) or 'reference'.
        attn_impl: backend of the fast path, as for :class:`AggregatedAttention` ('triton' runs
            the fused Triton kernels; 'torch' no compiled code).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0., attention_mode: str = 'fast',
                 attn_impl: str = 'auto') -> None:
        super().__init__(dim, num_heads, attn_drop, proj_drop, attention_mode, attn_impl)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)

    def _qkv_heads(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Normalised queries, normalised keys and values, each ``(B, heads, N, d)``."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4)
        return l2_normalize(q), l2_normalize(k), v

    def forward(self, x: Tensor, geometry: StageGeometry) -> Tensor:
        """``(B, H*W, C)`` tokens -> ``(B, H*W, C)``."""
        if self.use_fast_path():
            return self.forward_with(x, geometry, backend_for(self.attn_impl, x))
        q_norm, k, v = self._qkv_heads(x)
        q_scaled = self.reference_queries(q_norm, geometry)
        bias = self.position_bias(geometry)
        attn = self.attn_drop((q_scaled @ k.transpose(-2, -1) + bias).softmax(dim=-1))
        return self.project(attn @ v)

    def forward_with(self, x: Tensor, geometry: StageGeometry, backend: Backend) -> Tensor:
        """The fast path with ``backend`` (as :meth:`AggregatedAttention.forward_with`)."""
        q_norm, k, v = self._qkv_heads(x)
        return self.project(full_attention(
            q_norm, k, v, *self.grid_and_taps(geometry, backend), geometry.size,
            self.query_scale(geometry.seq_length_scale), backend))
