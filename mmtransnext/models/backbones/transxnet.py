"""TransXNet backbone for MMDetection / MMSegmentation.

Paper: "TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer for
Visual Recognition", Meng Lou et al., IEEE TNNLS (arXiv 2310.19380). The official dense-prediction
backbone (``fork_feat=True``) with module and parameter names of the official checkpoints
(``patch_embed.proj.conv``, ``network.{0..6}``, ``relative_pos_enc.{0..3}``,
``norm{0,2,4,6}``), so official ImageNet files and mmdet/mmseg files load unchanged through
``init_cfg=dict(type='Pretrained', ...)`` (see :func:`mmtransnext.checkpoint.load_pretrained`).

Unlike the official wrapper, weights load in ``init_weights`` (strictly, every key reported),
BatchNorm is whatever ``norm_cfg`` says (SyncBN only if a config asks), and ``out_indices``,
``frozen_stages``, ``norm_eval`` and ``with_cp`` work.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks import build_norm_layer
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.query_attention import map_size, osra_weights
from ..layers.size_cache import SizeKeyedCache
from ..layers.transxnet_layers import (BLOCK_NORM, BN, OSRA, PatchEmbed, TransXNetBlock,
                                       check_norm_cfg)
from ..layers.weight_cache import WeightKeyed, worth_keeping
from .base import (AttentionAdapter, MultiStageBackbone, Part, check_flag, check_int,
                   check_rate, check_real, register_family, resolve_stage_settings, to_pair)

Size2d = Tuple[int, int]

#: Official variants (``TransXNet.arch_settings`` of LMMMEng/TransXNet).
ARCH_SETTINGS: Dict[str, dict] = {
    'tiny': dict(depths=[3, 3, 9, 3], embed_dims=[48, 96, 224, 448], num_heads=[1, 2, 4, 8],
                 num_groups=[2, 2, 2, 2], mlp_ratios=[4, 4, 4, 4]),
    'small': dict(depths=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512], num_heads=[1, 2, 5, 8],
                  num_groups=[2, 2, 3, 4], mlp_ratios=[6, 6, 4, 4]),
    'base': dict(depths=[4, 4, 21, 4], embed_dims=[76, 152, 336, 672],
                 num_heads=[2, 4, 8, 16], num_groups=[2, 2, 4, 4], mlp_ratios=[8, 8, 4, 4]),
}
#: The official short names.
ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'T': 'tiny', 'S': 'small', 'B': 'base'}
_ARCH_DEFAULTS = dict(sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], kernel_size=7,
                      layer_scale_init_value=1e-5)
_STAGE_KEYS = ('depths', 'embed_dims', 'num_heads', 'num_groups', 'sr_ratios', 'mlp_ratios')

#: Default bound of the resized position-bias cache: one input size's four tables. A table at
#: 800x1216 is up to 230 MB (stage 1 of Tiny), so the bound is kept small.
DEFAULT_POSITION_CACHE = 4


def resolve_arch(arch: Union[str, dict], **overrides) -> dict:
    """Per-stage settings of ``arch`` ('tiny' | 'small' | 'base', 't' | 's' | 'b', or a dict of
    :data:`_STAGE_KEYS` plus optional ``kernel_size``, ``layer_scale_init_value``) with the
    non-None ``overrides``."""
    arch = ARCH_ALIASES.get(arch, arch) if isinstance(arch, str) else arch
    settings = resolve_stage_settings('TransXNet', arch, ARCH_SETTINGS, _ARCH_DEFAULTS,
                                      _STAGE_KEYS, ('depths', 'embed_dims', 'num_heads',
                                                    'num_groups'), overrides)
    kernel = check_int('kernel_size', settings['kernel_size'], 1)
    if kernel % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int, got {kernel!r}')
    # 0 starts every residual branch at zero (still trainable); the official value is 1e-5
    check_real('layer_scale_init_value', settings['layer_scale_init_value'], 0)
    for i in range(len(settings['depths'])):
        dim, heads = settings['embed_dims'][i], settings['num_heads'][i]
        if dim < 8 or dim % 2:
            raise ValueError(f'stage {i + 1}: embed_dims {dim} must be even and >= 8 (half '
                             f'goes to IDConv, whose projection is a quarter of that)')
        if (dim // 2) % heads:
            raise ValueError(f'stage {i + 1}: half of embed_dims ({dim // 2}, the OSRA '
                             f'channels) is not divisible by num_heads {heads}')
        if int(dim * settings['mlp_ratios'][i]) < 4:
            raise ValueError(f'mlp_ratios[{i}] = {settings["mlp_ratios"][i]!r}: the MS-FFN '
                             f'width embed_dims x mlp_ratio must be >= 4 (one channel per '
                             f'kernel size), so mlp_ratio >= {4 / dim:g} at embed_dims {dim}')
    return settings


def reduced_size(size: Size2d, sr_ratio: int) -> Size2d:
    """Grid of OSRA's keys for a ``size`` map: the output of its ``sr_ratio + 3`` conv with
    stride ``sr_ratio`` and padding ``(sr_ratio + 3) // 2`` (``ceil(size / sr)`` for even
    ratios); ``size`` itself for ratio 1."""
    if sr_ratio == 1:
        return tuple(size)
    k, p = sr_ratio + 3, (sr_ratio + 3) // 2
    return tuple((s + 2 * p - k) // sr_ratio + 1 for s in size)


@register_family
class TransXNet(MultiStageBackbone):
    """TransXNet backbone returning multi-scale NCHW features at strides 4, 8, 16, 32.

    Args:
        arch: 'tiny', 'small', 'base' (or the official 't', 's', 'b'), or a dict with
            ``depths``, ``embed_dims``, ``num_heads``, ``num_groups`` and optionally
            ``sr_ratios``, ``mlp_ratios`` (one value per stage), ``kernel_size`` (IDConv) and
            ``layer_scale_init_value`` (a number >= 0).
        in_channels: input image channels.
        pretrain_size: image size the relative-position tables are built for (the official
            ``image_size``, 224 for all released weights); at other sizes they are resized
            bicubically, as the official code does.
        depths, embed_dims, num_heads, num_groups, sr_ratios, mlp_ratios: per-stage overrides
            of ``arch``.
        out_indices: stages (0-based) whose outputs are returned; each gets an output norm
            ``norm{2 * i}`` (GroupNorm with one group, as officially).
        frozen_stages: -1 trains everything, 0 freezes the stem, k >= 1 freezes the stem and
            stages 1..k (blocks, downsampling into them, position tables, output norms).
        norm_eval: keep every BatchNorm in eval mode during training (frozen statistics).
        norm_cfg: config of the BatchNorm layers (None: ``dict(type='BN')``; a config may
            choose ``dict(type='SyncBN')``, 'BN2d', or 'GN' with ``num_groups`` dividing every
            width). Checked at construction: types that cannot normalise NCHW maps (LN, IN,
            BN1d, ...) raise a ValueError there.
        drop_rate: dropout in the MS-FFN, in [0, 1).
        drop_path_rate: stochastic depth, linear over all blocks from 0 to this rate, in [0, 1).
        with_cp: activation checkpointing in every block. (BatchNorm running statistics are
            updated again when a block is recomputed in backward.)
        position_cache_size: entries of the bounded cache of resized position tables (one
            entry per stage and input size; see :meth:`position_bias`).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an official ImageNet or
            mmdet/mmseg checkpoint; the output norms, absent from ImageNet files, keep their
            initialisation.
    """

    arch_presets = ARCH_SETTINGS
    pretrained_optional_keys = ('norm0.', 'norm2.', 'norm4.', 'norm6.')
    pretrained_weights = ('ImageNet-1K: the v1.0 release assets of '
                          'https://github.com/LMMMEng/TransXNet, transx-t/s/b.pth.tar')
    # The official classifier: ``classifier.0`` is GroupNorm(1, C) (the backbone's output norm
    # norm6), then average pooling and ``classifier.2``, a 1x1 conv (a linear layer on the
    # pooled vector).
    official_classifier_keys = {'classifier.0.': 'backbone.norm6.', 'classifier.2.': 'head.fc.'}
    attention_adapters = {OSRA: AttentionAdapter(map_size, osra_weights)}

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 pretrain_size: Union[int, Sequence[int]] = 224,
                 depths: Optional[Sequence[int]] = None,
                 embed_dims: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 num_groups: Optional[Sequence[int]] = None,
                 sr_ratios: Optional[Sequence[int]] = None,
                 mlp_ratios: Optional[Sequence[float]] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: Optional[dict] = None,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 position_cache_size: int = DEFAULT_POSITION_CACHE,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        settings = resolve_arch(arch, depths=depths, embed_dims=embed_dims,
                                num_heads=num_heads, num_groups=num_groups,
                                sr_ratios=sr_ratios, mlp_ratios=mlp_ratios)
        self.arch_settings = settings
        self.depths: List[int] = settings['depths']
        self.embed_dims: List[int] = settings['embed_dims']
        self.num_heads: List[int] = settings['num_heads']
        self.sr_ratios: List[int] = settings['sr_ratios']
        if len(self.depths) != 4:
            raise ValueError(f'TransXNet has 4 stages (official checkpoint layout), got '
                             f'{len(self.depths)}')
        self.setup_stages(4, in_channels, out_indices, frozen_stages, norm_eval)
        check_flag('with_cp', with_cp)
        for name, rate in (('drop_rate', drop_rate), ('drop_path_rate', drop_path_rate)):
            check_rate(name, rate)
        check_int('position_cache_size', position_cache_size, 1)
        norm_cfg = dict(BN) if norm_cfg is None else norm_cfg
        check_norm_cfg(norm_cfg, self.embed_dims[0])
        self.pretrain_size = to_pair(pretrain_size, 'pretrain_size')
        self.position_tables = SizeKeyedCache(position_cache_size)

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims[0], 7, 4, 3, norm_cfg)
        total = sum(self.depths)
        network: List[nn.Module] = []
        for i, depth in enumerate(self.depths):
            if i > 0:
                network.append(PatchEmbed(self.embed_dims[i - 1], self.embed_dims[i], 3, 2, 1,
                                          norm_cfg))
            first = sum(self.depths[:i])
            network.append(nn.ModuleList([
                TransXNetBlock(self.embed_dims[i], settings['kernel_size'],
                               settings['num_groups'][i], self.num_heads[i], self.sr_ratios[i],
                               settings['mlp_ratios'][i], drop_rate,
                               drop_path_rate * (first + j) / max(total - 1, 1),
                               settings['layer_scale_init_value'], norm_cfg, with_cp)
                for j in range(depth)
            ]))
        self.network = nn.ModuleList(network)
        self.relative_pos_enc = nn.ParameterList([
            nn.Parameter(torch.zeros(1, self.num_heads[i], *self.table_sizes(i)))
            for i in range(4)
        ])
        for i in self.out_indices:
            self.add_module(f'norm{2 * i}', build_norm_layer(BLOCK_NORM, self.embed_dims[i])[1])
        self.apply(self._init_module)
        # a stage outside out_indices has no output norm: its output is its last block's
        self.finish_setup(self.embed_dims, [f'norm{2 * i}' if i in self.out_indices
                                            else f'network.{2 * i}' for i in range(4)])

    # ----------------------------------------------------------------------------- set-up
    def table_sizes(self, stage: int) -> Size2d:
        """``(queries, keys)`` of ``stage``'s position table at ``pretrain_size``: the official
        ``ceil`` grids (``ceil(size / 4)``, halved per stage; keys ``ceil(grid / sr)``)."""
        h, w = (math.ceil(s / 4) for s in self.pretrain_size)
        for _ in range(stage):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        sr = self.sr_ratios[stage]
        return h * w, math.ceil(h / sr) * math.ceil(w / sr)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        """Weight initialisation of the official release (IDConv kernels, position tables and
        layer scales initialise themselves)."""
        if isinstance(m, nn.Conv2d):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, _BatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def stem_parts(self) -> List[Part]:
        return [self.patch_embed]

    def stage_parts(self, stage: int) -> List[Part]:
        parts: List[Part] = [self.network[2 * stage], self.relative_pos_enc[stage]]
        if stage > 0:
            parts.append(self.network[2 * stage - 1])
        if hasattr(self, f'norm{2 * stage}'):
            parts.append(getattr(self, f'norm{2 * stage}'))
        return parts

    def token_mixers(self) -> List[List[nn.Module]]:
        """The attention half of each D-Mixer, OSRA (the other half, IDConv, is a dynamic
        convolution)."""
        return [[block.token_mixer.global_unit for block in self.network[2 * i]]
                for i in range(self.num_stages)]

    def export_position_data(self, dynamic: bool) -> str:
        """The stored tables are resized in the graph (bicubic ``Resize``), so with free height
        and width they follow the input; the adaptive pooling exports as in-graph averaging
        matrices (:mod:`mmtransnext.ops.pooling`)."""
        return ('TransXNet: position tables resized in the graph (bicubic) from the stored '
                'tables to the ' + ('input\'s' if dynamic else 'export size\'s') +
                ' token counts')

    def clear_caches(self) -> None:
        """Drop the resized position tables kept for inference."""
        self.position_tables.clear()

    # ----------------------------------------------------------------------------- forward
    def position_bias(self, stage: int, size: Size2d) -> Tensor:
        """``stage``'s position table for a ``size`` feature map, ``(1, heads, Nq, Nk)``.

        When the query / key counts differ from the table's, the table is resized bicubically
        over its (query, key) axes, as the official code does in every block call; here it is
        resized once per stage and forward. When no gradient can flow into the table (no
        grad mode, or a frozen table) the resized copy is also kept in :attr:`position_tables`
        (bounded), keyed by stage and counts, with a copy of the table it was resized from
        (:class:`~mmtransnext.models.layers.weight_cache.WeightKeyed`): it is reused only while
        the table is bit for bit the same, however the table changed (in place, through
        ``.data`` as EMA and Mean-Teacher updates do, by a load or a cast). With gradients a
        cached copy would cut the graph to the parameter, so it is recomputed per forward; on a
        GPU too, where the check would be a host synchronisation (see
        :func:`~mmtransnext.models.layers.weight_cache.worth_keeping`).
        """
        table = self.relative_pos_enc[stage]
        n_q = size[0] * size[1]
        kv = reduced_size(size, self.sr_ratios[stage])
        target = (n_q, kv[0] * kv[1])
        if tuple(table.shape[2:]) == target:
            return table

        def resize() -> Tensor:
            return F.interpolate(table, size=target, mode='bicubic', align_corners=False)

        if (torch.is_grad_enabled() and table.requires_grad) or not worth_keeping((table,)):
            return resize()
        key = ('relative_pos_enc', stage, target, table.dtype, str(table.device),
               torch.is_inference_mode_enabled())
        return self.position_tables.get(key, lambda: WeightKeyed.build((table,), resize),
                                        lambda entry: entry.matches((table,))).value

    def _check_batch_norm_batch(self, x: Tensor) -> None:
        if x.shape[0] > 1 or not self.training:
            return
        for module in self.modules():
            if type(module) is nn.BatchNorm2d and module.training:
                raise ValueError(
                    'TransXNet in training mode needs a batch of at least 2 images: its '
                    'BatchNorm layers normalise per-image channel means (IDConv) with batch '
                    'statistics. Use a larger batch, SyncBN across processes, norm_eval=True, '
                    'or eval mode.')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """``(B, in_channels, H, W)`` -> one ``(B, C_i, ceil(H / 2**(i+2)), ...)`` map per
        stage in ``out_indices``."""
        self.check_input(x)
        self._check_batch_norm_batch(x)
        x = self.patch_embed(x)
        outs = []
        for i in range(4):
            if i > 0:
                x = self.network[2 * i - 1](x)
            bias = self.position_bias(i, (x.shape[2], x.shape[3]))
            for block in self.network[2 * i]:
                x = block(x, bias)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{2 * i}')(x))
        return tuple(outs)
