"""TransNeXt backbone for MMDetection / MMSegmentation.

Paper: "TransNeXt: Robust Foveal Visual Perception for Vision Transformers", Dai Shi, CVPR 2024
(arXiv 2311.17132). Module and parameter names follow the official checkpoints, so they load
unchanged (see :mod:`mmtransnext.checkpoint`).
"""
import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmcv.cnn.bricks import DropPath
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn

from ...ops.sliding_window import window_lengths, window_padding_mask
from ..layers.attention import AggregatedAttention, FullAttention, StageGeometry
from ..layers.checkpointing import maybe_checkpoint
from ..layers.conv_glu import ConvGLU
from ..layers.position_bias import (DEFAULT_CACHE_ENTRIES, SymSize2d, cached_position_table,
                                    graph_position_table, graph_resized_table,
                                    official_position_table)
from ..layers.query_attention import (aggregated_attention_weights, full_attention_weights,
                                      geometry_size)
from ..layers.size_cache import SizeKeyedCache
from .base import (AttentionAdapter, MultiStageBackbone, Part, check_flag, check_int,
                   check_rate, register_family, resolve_stage_settings, to_pair)

Size2d = Tuple[int, int]

#: Official variants. ``window_size`` None marks a full-attention stage (``sr_ratio`` 1).
ARCH_SETTINGS: Dict[str, dict] = {
    'micro': dict(embed_dims=[48, 96, 192, 384], num_heads=[2, 4, 8, 16], depths=[2, 2, 15, 2]),
    'tiny': dict(embed_dims=[72, 144, 288, 576], num_heads=[3, 6, 12, 24], depths=[2, 2, 15, 2]),
    'small': dict(embed_dims=[72, 144, 288, 576], num_heads=[3, 6, 12, 24], depths=[5, 5, 22, 5]),
    'base': dict(embed_dims=[96, 192, 384, 768], num_heads=[4, 8, 16, 32], depths=[5, 5, 23, 5]),
    'micro_aaaa': dict(embed_dims=[48, 96, 192, 384], num_heads=[2, 4, 8, 16],
                       depths=[2, 2, 15, 2], sr_ratios=[16, 8, 4, 2], window_size=[3, 3, 3, 3]),
}
_ARCH_DEFAULTS = dict(sr_ratios=[8, 4, 2, 1], window_size=[3, 3, 3, None], mlp_ratios=[8, 8, 4, 4])
_STAGE_KEYS = ('embed_dims', 'num_heads', 'depths', 'sr_ratios', 'window_size', 'mlp_ratios')


def resolve_arch(arch: Union[str, dict], **overrides) -> dict:
    """Per-stage settings of ``arch`` (a preset name or a dict) with non-None ``overrides``."""
    settings = resolve_stage_settings('TransNeXt', arch, ARCH_SETTINGS, _ARCH_DEFAULTS,
                                      _STAGE_KEYS, ('embed_dims', 'num_heads', 'depths'),
                                      overrides)
    num_stages = len(settings['depths'])
    for i in range(num_stages):
        dim, heads = settings['embed_dims'][i], settings['num_heads'][i]
        sr, window = settings['sr_ratios'][i], settings['window_size'][i]
        if dim % heads:
            raise ValueError(f'stage {i + 1}: embed_dims {dim} not divisible by num_heads {heads}')
        if window is not None:
            window = settings['window_size'][i] = check_int(f'window_size[{i}]', window, 1)
        if sr == 1 and window is not None:
            raise ValueError(f'stage {i + 1}: sr_ratio 1 means full attention, so window_size '
                             f'must be None (got {window})')
        if sr > 1 and (window is None or window % 2 == 0):
            raise ValueError(f'stage {i + 1}: aggregated attention needs a positive odd '
                             f'window_size, got {window}')
        # ConvGLU's gate/value width is int(2 * int(dim * mlp_ratio) / 3)
        if int(2 * int(dim * settings['mlp_ratios'][i]) / 3) < 1:
            raise ValueError(f'mlp_ratios[{i}] = {settings["mlp_ratios"][i]!r} leaves ConvGLU '
                             f'no hidden channel at embed_dims {dim}; it must be >= {2 / dim:g}')
    return settings


def _window_scale_and_mask(size: Size2d, window: int, num_pool: int, device: torch.device,
                           build_on: torch.device = torch.device('cpu')
                           ) -> Tuple[Tensor, Tensor]:
    """Length scale ``log(window positions in the map + pooled keys)`` ``(H*W, 1)`` and the
    window padding mask of an ``size`` map, built on ``build_on`` (the host) and copied to
    ``device``."""
    scale = torch.log(window_lengths(size, window, build_on) + num_pool)
    return scale.to(device), window_padding_mask(size, window, build_on).to(device)


def check_fixed_pool_size(value: object) -> Optional[int]:
    """Validate a ``fixed_pool_size`` (None or an int >= 1)."""
    return None if value is None else check_int('fixed_pool_size', value, 1)


class OverlapPatchEmbed(nn.Module):
    """Overlapping strided conv + LayerNorm: ``(B, C, H, W) -> (B, H'*W', C')``."""

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride, kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Size2d]:
        x = self.proj(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class TransNeXtBlock(nn.Module):
    """Pre-norm block: token mixer (aggregated or full attention), then ConvGLU, with drop path.

    Args:
        dim, num_heads, window_size, sr_ratio: as in :class:`AggregatedAttention`; ``sr_ratio``
            1 selects :class:`FullAttention`.
        mlp_ratio: ConvGLU nominal hidden width over ``dim``.
        drop, attn_drop, drop_path: dropout rates and stochastic depth.
        with_cp: recompute the block in backward (activation checkpointing).
        attn_impl: attention backend ('auto', 'triton', 'ext', 'torch'; see
            :class:`AggregatedAttention`).
        attention_mode: 'fast' or 'reference' (the official computation, the oracle); selects
            the implementation of both the token mixer and the ConvGLU.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Optional[int], sr_ratio: int,
                 mlp_ratio: float, qkv_bias: bool = True, drop: float = 0., attn_drop: float = 0.,
                 drop_path: float = 0., with_cp: bool = False, attn_impl: str = 'auto',
                 attention_mode: str = 'fast') -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if sr_ratio == 1:
            self.attn = FullAttention(dim, num_heads, qkv_bias, attn_drop, drop, attention_mode,
                                      attn_impl)
        else:
            self.attn = AggregatedAttention(dim, num_heads, window_size, sr_ratio, qkv_bias,
                                            attn_drop, drop, attn_impl, attention_mode)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvGLU(dim, int(dim * mlp_ratio), drop, fast=attention_mode == 'fast')
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.with_cp = with_cp

    def _forward(self, x: Tensor, geometry: StageGeometry) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), geometry))
        return x + self.drop_path(self.mlp(self.norm2(x), geometry.size))

    def forward(self, x: Tensor, geometry: StageGeometry) -> Tensor:
        return maybe_checkpoint(self._forward, x, geometry, enabled=self.with_cp)


@register_family
class TransNeXt(MultiStageBackbone):
    """TransNeXt backbone returning multi-scale NCHW features at strides 4, 8, 16, 32.

    Args:
        arch: 'micro', 'tiny', 'small', 'base', 'micro_aaaa', or a dict with ``embed_dims``,
            ``num_heads``, ``depths`` and optionally ``sr_ratios``, ``window_size``,
            ``mlp_ratios`` (one value per stage).
        in_channels: input image channels.
        img_size: training image size (int or (h, w)); in interpolation mode the position bias
            is built for it and resized to the actual feature size.
        pretrain_size: image size of pretraining (224 for all released weights); scales the
            relative coordinates. Defaults to ``img_size``.
        is_extrapolation: build the position bias for the actual feature size at every forward
            instead of resizing the one built for ``img_size``.
        embed_dims, num_heads, depths, sr_ratios, window_size, mlp_ratios: per-stage overrides of
            ``arch`` (names as in the official code).
        qkv_bias: bias in the query/key/value projections.
        out_indices: stages (0-based) whose outputs are returned.
        frozen_stages: -1 trains everything, 0 freezes the stem (first patch embed), k >= 1
            freezes the patch embeds, blocks and norms of stages 1..k.
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth
            (linearly increasing over blocks up to ``drop_path_rate``), each in [0, 1).
        with_cp: activation checkpointing in every block.
        attn_impl: attention backend (see :mod:`mmtransnext.ops.dispatch`): 'triton' (fused
            Triton kernels, CUDA or ``TRITON_INTERPRET=1``), 'ext' (compiled sliding-window ops
            or an error), 'torch' (no compiled code at all), or 'auto' (Triton for CUDA tensors
            when triton imports, else the compiled ops when built, else PyTorch with one
            warning).
        attention_mode: 'fast' (default) or 'reference': the official computation step by step
            in pure PyTorch, kept as the oracle (see
            :data:`mmtransnext.models.layers.attention.ATTENTION_MODES`).
        fixed_pool_size: linear inference mode (the official ``fixed_pool_size``): the pooled
            keys of every aggregated-attention stage form a ``fixed_pool_size`` square grid
            whatever the input size, instead of ``H/sr x W/sr``, so attention costs grow
            linearly with the pixel count (full-attention stages are unchanged). The position
            table's key coordinates are the centres of that grid's pooling bins and the
            length scale is ``log(window keys + fixed_pool_size**2)``. With 7 it equals the
            normal mode at 224x224 (56/8 = 28/4 = 14/2 = 7). Every aggregated stage's map
            must be at least that large (a ValueError otherwise). None (default): normal mode.
            Can be changed on a built model (:attr:`fixed_pool_size`); no weight depends on it.
        position_cache_size: entries of the LRU cache of position tables.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an official ImageNet or
            mmdet/mmseg checkpoint (see :func:`mmtransnext.checkpoint.load_pretrained`).
    """

    arch_presets = ARCH_SETTINGS
    main_archs = ('micro', 'tiny', 'small', 'base')
    implementations = {
        'reference': dict(attention_mode='reference', attn_impl='torch'),
        'fast': dict(attention_mode='fast', attn_impl='auto'),
        'fast-torch': dict(attention_mode='fast', attn_impl='torch'),
        'triton': dict(attention_mode='fast', attn_impl='triton'),
    }
    default_implementation = 'fast'
    gpu_implementations = ('triton', )
    size_modes = ('interpolation', 'extrapolation')
    pretrained_weights = ('ImageNet-1K: https://huggingface.co/DaiShiResearch, e.g. '
                          'transnext-tiny-224-1k')
    # The official classifier: norm4 (the backbone's), average pooling, the linear ``head``.
    official_classifier_keys = {'head.': 'head.fc.'}
    attention_adapters = {
        AggregatedAttention: AttentionAdapter(geometry_size, aggregated_attention_weights),
        FullAttention: AttentionAdapter(geometry_size, full_attention_weights),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 img_size: Union[int, Sequence[int]] = 224,
                 pretrain_size: Optional[Union[int, Sequence[int]]] = None,
                 is_extrapolation: bool = False,
                 embed_dims: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 depths: Optional[Sequence[int]] = None,
                 sr_ratios: Optional[Sequence[int]] = None,
                 window_size: Optional[Sequence[Optional[int]]] = None,
                 mlp_ratios: Optional[Sequence[float]] = None,
                 qkv_bias: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 attention_mode: str = 'fast',
                 fixed_pool_size: Optional[int] = None,
                 position_cache_size: int = DEFAULT_CACHE_ENTRIES,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch, embed_dims=embed_dims, num_heads=num_heads, depths=depths,
                                sr_ratios=sr_ratios, window_size=window_size,
                                mlp_ratios=mlp_ratios)
        self.arch_settings = settings
        self.embed_dims: List[int] = settings['embed_dims']
        self.num_heads: List[int] = settings['num_heads']
        self.depths: List[int] = settings['depths']
        self.sr_ratios: List[int] = settings['sr_ratios']
        self.window_size: List[Optional[int]] = settings['window_size']
        self.setup_stages(len(self.depths), in_channels, out_indices, frozen_stages)
        self.is_extrapolation = check_flag('is_extrapolation', is_extrapolation)
        for name, flag in (('qkv_bias', qkv_bias), ('with_cp', with_cp)):
            check_flag(name, flag)
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            check_rate(name, rate)
        check_int('position_cache_size', position_cache_size, 1)
        self.img_size = to_pair(img_size, 'img_size')
        self.pretrain_size = to_pair(pretrain_size if pretrain_size is not None else img_size,
                                     'pretrain_size')
        self._fixed_pool_size = check_fixed_pool_size(fixed_pool_size)
        self._check_sizes()
        self.position_tables = SizeKeyedCache(position_cache_size)

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        cur = 0
        for i in range(self.num_stages):
            first = i == 0
            patch_embed = OverlapPatchEmbed(in_channels if first else self.embed_dims[i - 1],
                                            self.embed_dims[i], 7 if first else 3,
                                            4 if first else 2)
            blocks = nn.ModuleList([
                TransNeXtBlock(self.embed_dims[i], self.num_heads[i], self.window_size[i],
                               self.sr_ratios[i], settings['mlp_ratios'][i], qkv_bias, drop_rate,
                               attn_drop_rate, dpr[cur + j], with_cp, attn_impl,
                               attention_mode)
                for j in range(self.depths[i])
            ])
            cur += self.depths[i]
            setattr(self, f'patch_embed{i + 1}', patch_embed)
            setattr(self, f'block{i + 1}', blocks)
            setattr(self, f'norm{i + 1}', nn.LayerNorm(self.embed_dims[i], eps=1e-6))

        self.apply(self._init_module)
        self.finish_setup(self.embed_dims, [f'norm{i + 1}' for i in range(self.num_stages)])

    # ----------------------------------------------------------------------------- set-up
    def _check_sizes(self) -> None:
        for i in range(self.num_stages):
            stride = 2 ** (i + 2)
            pretrain = [s // stride for s in self.pretrain_size]
            if min(pretrain) < 2:
                raise ValueError(f'pretrain_size {self.pretrain_size} is too small: stage {i + 1} '
                                 f'(stride {stride}) needs at least a 2x2 grid, i.e. '
                                 f'pretrain_size >= {2 * stride}')
            if not self.is_extrapolation and self.window_size[i] is not None and \
                    self._fixed_pool_size is not None:
                trained = [s // stride for s in self.img_size]
                if min(trained) < self._fixed_pool_size:
                    raise ValueError(
                        f'fixed_pool_size {self._fixed_pool_size} is larger than stage {i + 1}\'s '
                        f'{trained[0]}x{trained[1]} map at img_size {self.img_size}: the table '
                        f'of interpolation mode is built there, so img_size must be >= '
                        f'{stride * self._fixed_pool_size} (or use is_extrapolation=True)')
            elif not self.is_extrapolation:
                pooled = [s // (stride * self.sr_ratios[i]) for s in self.img_size]
                if min(pooled) < 1:
                    raise ValueError(
                        f'img_size {self.img_size} is too small for interpolation mode: stage '
                        f'{i + 1} pools by {stride * self.sr_ratios[i]}, so img_size must be '
                        f'>= {stride * self.sr_ratios[i]} (or use is_extrapolation=True)')

    @property
    def fixed_pool_size(self) -> Optional[int]:
        """Side of the pooled-key grid of the aggregated-attention stages in linear inference
        mode, or None (normal mode: ``H/sr x W/sr``). Settable on a built model: only the
        size-dependent geometry changes, no weight (see the class docstring)."""
        return self._fixed_pool_size

    @fixed_pool_size.setter
    def fixed_pool_size(self, value: Optional[int]) -> None:
        previous = self._fixed_pool_size
        self._fixed_pool_size = check_fixed_pool_size(value)
        try:
            self._check_sizes()
        except ValueError:
            self._fixed_pool_size = previous
            raise

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        """Weight initialisation of the official release."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def stem_parts(self) -> List[Part]:
        return [self.patch_embed1]

    def stage_parts(self, stage: int) -> List[Part]:
        parts: List[Part] = [getattr(self, f'block{stage + 1}'), getattr(self, f'norm{stage + 1}')]
        if stage > 0:
            parts.append(getattr(self, f'patch_embed{stage + 1}'))
        return parts

    def token_mixers(self) -> List[List[nn.Module]]:
        return [[block.attn for block in getattr(self, f'block{i + 1}')]
                for i in range(self.num_stages)]

    @classmethod
    def for_input_size(cls, arch: str, size: Size2d, mode: str,
                       img_size: Optional[Union[int, Sequence[int]]] = None,
                       **kwargs) -> 'TransNeXt':
        """TransNeXt with ImageNet (224) position tables, in extrapolation or interpolation
        ``mode``; in interpolation mode built for ``img_size`` (default: 800 for inputs with a
        side >= 800, else 512, as the recipes)."""
        if img_size is None:
            img_size = 800 if max(size) >= 800 else 512
        return cls(arch, img_size=img_size, pretrain_size=224,
                   is_extrapolation=mode == 'extrapolation', **kwargs)

    def export_refusal(self, dynamic: bool) -> Optional[str]:
        """Free height and width are refused in the reference ``attention_mode`` only: its
        official position tables come from ``torch.unique`` over the relative offsets, on the
        host for each input size. The fast path computes its tables (extrapolation mode) or
        resizing taps (interpolation mode) in the graph
        (:class:`~..layers.position_bias.GraphPositionTable`)."""
        if not dynamic:
            return None
        for name, module in self.named_modules():
            if getattr(module, 'attention_mode', None) == 'reference':
                return (f"TransNeXt's {name} has attention_mode='reference', whose official "
                        'position tables (torch.unique over the relative offsets) are built on '
                        'the host for each input size, so height and width cannot be free: '
                        "export without --dynamic (once per serving size) or with "
                        "attention_mode='fast'")
        return None

    def export_position_data(self, dynamic: bool) -> str:
        """How a graph holds the position data: at a fixed size the tables and taps built in
        an eager forward at the export size (:func:`mmtransnext.deployment.prepare`), and each
        block's CPB grid (the MLP's output over its table) that forward computed from the
        weights, are baked in as constants; with free sizes the tables or taps are computed in
        the graph from the input size, and the CPB MLP runs in the graph."""
        mode = 'extrapolation' if self.is_extrapolation else 'interpolation'
        if dynamic:
            held = ('position tables' if self.is_extrapolation else
                    'resizing taps of the fixed tables')
            return (f'TransNeXt ({mode} mode): {held} computed in the graph from the '
                    "input's size; the CPB MLP runs in the graph")
        return (f'TransNeXt ({mode} mode): position tables, taps and the CPB MLP\'s output '
                'baked for the export size')

    def clear_caches(self) -> None:
        """Drop the size-dependent state built lazily by forward passes: position tables and
        their taps, and the CPB grids kept for inference. The next forward rebuilds what it
        needs (e.g. to free memory after evaluating at many sizes)."""
        self.position_tables.clear()
        for module in self.modules():
            if isinstance(module, (AggregatedAttention, FullAttention)):
                module.clear_cache()

    # ----------------------------------------------------------------------------- forward
    def stage_geometry(self, stage: int, size: Size2d, device: torch.device) -> StageGeometry:
        """Sizes, length scale, window mask and position table of ``stage`` for an ``size`` map.

        What depends only on sizes is built on the host once per size and device and kept in
        :attr:`position_tables`, so a forward neither rebuilds it nor waits for the device.
        The reference path's official table is built at its first use in a forward (per
        forward in extrapolation mode, as the official code does; kept in the cache in
        interpolation mode, whose sizes are fixed, as the official buffers are).
        """
        sr = self.sr_ratios[stage]
        stride = 2 ** (stage + 2)
        window = self.window_size[stage]
        fixed = self._fixed_pool_size if window is not None else None
        # Exported with free sizes (dynamo's symbolic ints). TorchScript's tracer (mmengine's
        # FLOP counter) hands 0-dim tensors, which the host-side path below handles.
        symbolic = any(isinstance(s, torch.SymInt) for s in size)
        if fixed is None:
            pool_size = (max(1, size[0] // sr), max(1, size[1] // sr))
        else:
            if not symbolic and min(size) < fixed:
                raise ValueError(
                    f'fixed_pool_size {fixed} is larger than stage {stage + 1}\'s '
                    f'{size[0]}x{size[1]} feature map: linear inference mode pools every '
                    f'aggregated-attention stage to {fixed}x{fixed}, so the input must be at '
                    f'least about {stride * fixed} pixels on its shorter side')
            pool_size = (fixed, fixed)
        pretrain = (self.pretrain_size[0] // stride, self.pretrain_size[1] // stride)
        if symbolic:
            return self._graph_geometry(stage, size, pool_size, fixed, pretrain, device)
        if self.is_extrapolation:
            table_sizes = (size, pool_size)
            official_source = None
        else:
            trained = (self.img_size[0] // stride, self.img_size[1] // stride)
            trained_pool = (trained[0] // sr, trained[1] // sr) if fixed is None else pool_size
            table_sizes = (trained, trained_pool)
            official_source = functools.partial(
                self.position_tables.get, ('official', *table_sizes, pretrain, str(device)),
                functools.partial(official_position_table, *table_sizes, pretrain, device))
        table = cached_position_table(self.position_tables, *table_sizes, pretrain, device)
        num_pool = pool_size[0] * pool_size[1]
        if window is None:
            scale, mask = math.log(num_pool), None
        else:
            scale, mask = self.position_tables.get(
                ('window', size, window, num_pool, str(device)),
                lambda: _window_scale_and_mask(size, window, num_pool, device))
        return StageGeometry(size, pool_size, scale, table, not self.is_extrapolation, mask,
                             official_source)

    def _graph_geometry(self, stage: int, size: SymSize2d, pool_size: SymSize2d,
                        fixed: Optional[int], pretrain: Size2d,
                        device: torch.device) -> StageGeometry:
        """:meth:`stage_geometry` for a graph exported with free height and width: the position
        table (extrapolation mode) or its taps (interpolation mode, whose table has fixed
        sizes), the length scale and the window mask computed in the graph from the symbolic
        sizes (:class:`~..layers.position_bias.GraphPositionTable`), nothing cached."""
        window = self.window_size[stage]
        if self.is_extrapolation:
            table = graph_position_table(size, pool_size, pretrain, device)
        else:
            stride, sr = 2 ** (stage + 2), self.sr_ratios[stage]
            trained = (self.img_size[0] // stride, self.img_size[1] // stride)
            trained_pool = (trained[0] // sr, trained[1] // sr) if fixed is None else pool_size
            table = graph_resized_table(cached_position_table(
                self.position_tables, trained, trained_pool, pretrain, device))
        num_pool = pool_size[0] * pool_size[1]
        if window is None:
            scale, mask = torch.full((1, 1), num_pool, dtype=torch.float32,
                                     device=device).log(), None
        else:
            scale, mask = _window_scale_and_mask(size, window, num_pool, device, device)
        return StageGeometry(size, pool_size, scale, table, not self.is_extrapolation, mask)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``(B, in_channels, H, W)`` -> one ``(B, C_i, ceil(H / 2**(i+2)), ...)`` map per
        stage in ``out_indices``."""
        self.check_input(x)
        batch = x.shape[0]
        outs = []
        for i in range(self.num_stages):
            x, size = getattr(self, f'patch_embed{i + 1}')(x)
            geometry = self.stage_geometry(i, size, x.device)
            for block in getattr(self, f'block{i + 1}'):
                x = block(x, geometry)
            x = getattr(self, f'norm{i + 1}')(x)
            x = x.reshape(batch, size[0], size[1], -1).permute(0, 3, 1, 2).contiguous()
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
