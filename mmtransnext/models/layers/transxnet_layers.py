"""TransXNet blocks: the D-Mixer (IDConv + OSRA + STE), the multi-scale FFN and the block.

Paper: "TransXNet: Learning Both Global and Local Dynamics with a Dual Dynamic Token Mixer for
Visual Recognition", Lou et al., IEEE TNNLS (arXiv 2310.19380). Layout is NCHW throughout and
module / parameter names follow the official checkpoints (``token_mixer.local_unit``,
``token_mixer.global_unit``, ``mlp.fc1``, ``layer_scale_1``, ...), so they load unchanged.

``bn_cfg`` is the config of every BatchNorm (``dict(type='BN')``; a config may choose SyncBN,
or GN with ``num_groups``), built through :func:`norm_layer`, which names bad configs.
The block norms are GroupNorm with one group, as in the official release.
"""
import inspect
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks import DropPath, build_activation_layer, build_norm_layer
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS
from torch import Tensor, nn

from ...ops.backend import exporting
from ...ops.pooling import adaptive_avg_pool2d
from .checkpointing import maybe_checkpoint

GELU = dict(type='GELU')
#: Norm of the blocks and of the backbone's output maps (LayerNorm over C, H, W).
BLOCK_NORM = dict(type='GN', num_groups=1)
BN = dict(type='BN')
#: Attention logits per OSRA call of the attention kernel: longer query sequences are attended in
#: chunks of query rows (softmax is per row), so inference never holds all logits of a
#: detection-size stage 1 (60800 x 950 at 800x1216) at once.
CHUNK_ELEMENTS = 1 << 24


#: Norm types TransXNet is tested with ('GN' with a ``num_groups`` dividing every width).
NORM_TYPES = ('BN', 'BN2d', 'SyncBN', 'GN')


def norm_layer(bn_cfg: dict, channels: int) -> nn.Module:
    """``build_norm_layer(bn_cfg, channels)`` with a TypeError / ValueError naming ``norm_cfg``
    (the backbone's argument) when the config is not a dict with a registered type or cannot
    build a layer for ``channels`` (GN without ``num_groups``, or one not dividing ``channels``).
    """
    if not isinstance(bn_cfg, dict):
        raise TypeError(f"norm_cfg must be a dict such as dict(type='BN'), got {bn_cfg!r}")
    if 'type' not in bn_cfg:
        raise ValueError(f'norm_cfg needs a type, one of {NORM_TYPES}, got {bn_cfg!r}')
    layer_type = bn_cfg['type']
    if not isinstance(layer_type, str) and not inspect.isclass(layer_type):
        raise TypeError(f'norm_cfg type must be a registered name, one of {NORM_TYPES}, '
                        f'got {layer_type!r} in {bn_cfg!r}')
    if isinstance(layer_type, str):
        # build_norm_layer looks the name up the same way but reports 'Cannot find None'
        with MODELS.switch_scope_and_registry(None) as registry:
            if registry.get(layer_type) is None:
                raise ValueError(f'norm_cfg type {layer_type!r} is not a registered norm '
                                 f'layer (registry scope {registry.scope!r}); TransXNet '
                                 f'accepts {NORM_TYPES}')
    if layer_type == 'GN' and 'num_groups' not in bn_cfg:
        raise ValueError(f"norm_cfg {bn_cfg!r}: GN needs num_groups dividing every width, "
                         f"e.g. dict(type='GN', num_groups=1)")
    try:
        return build_norm_layer(bn_cfg, channels)[1]
    except Exception as err:
        raise ValueError(f'norm_cfg {bn_cfg!r} cannot build a norm layer for {channels} '
                         f'channels: {type(err).__name__}: {err}') from err


def check_norm_cfg(bn_cfg: dict, channels: int) -> None:
    """Raise as :func:`norm_layer` does, or a ValueError naming ``norm_cfg`` when its layer
    cannot normalise a ``(2, channels, 1, 1)`` map in eval mode.

    Every norm of TransXNet sees NCHW maps, down to IDConv's 1x1 spatial mean, so LayerNorm
    (last axis), InstanceNorm (needs more than one position) and BN1d / BN3d fail there: this
    says so at construction instead of in the first forward. One trial per backbone, since a
    tiny forward costs more than building the layer.
    """
    layer = norm_layer(bn_cfg, channels)
    try:
        with torch.no_grad():
            layer.eval()(torch.zeros(2, channels, 1, 1))
    except Exception as err:
        raise ValueError(f'norm_cfg {bn_cfg!r} builds {type(layer).__name__}, which cannot '
                         f'normalise the (N, C, H, W) maps of TransXNet (tried a (2, {channels}, '
                         f'1, 1) map, the shape of IDConv\'s spatial mean): {err}') from err


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            padding: int = 0, groups: int = 1, bn_cfg: dict = BN,
            act_cfg: Optional[dict] = None) -> nn.Sequential:
    """Bias-free conv, norm, optional activation: children ``conv``, ``bn`` (whatever the norm
    type, so code and checkpoint keys do not depend on it) and ``activate``, as the official
    ``ConvModule`` names them for BatchNorm."""
    layers = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                       bias=False),
        bn=norm_layer(bn_cfg, out_channels))
    if act_cfg is not None:
        layers['activate'] = build_activation_layer(act_cfg)
    return nn.Sequential(layers)


def channel_affine(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """A 1x1 depthwise convolution (``weight (C, 1, 1, 1)``, ``bias (C,)``) as a per-channel
    multiply-add: the same arithmetic, while PyTorch's CPU convolution runs it as one slow
    kernel call per channel (10x the whole block's time)."""
    out = x * weight.reshape(1, -1, 1, 1)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class PatchEmbed(nn.Module):
    """Strided conv + BatchNorm (``proj``): the stem (7x7, stride 4) and the downsampling
    between stages (3x3, stride 2)."""

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int,
                 padding: int, bn_cfg: dict = BN) -> None:
        super().__init__()
        self.proj = conv_bn(in_channels, embed_dim, kernel_size, stride, padding, bn_cfg=bn_cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class IDConv(nn.Module):
    """Input-dependent depthwise convolution (official ``DynamicConv2d``).

    Each image gets its own ``kernel_size`` x ``kernel_size`` depthwise kernel and bias: a
    softmax over ``num_groups`` learned kernels, weighted per channel and tap by a small
    projection of the adaptively pooled input (and, for the bias, of its spatial mean).

    Args:
        dim: channels.
        kernel_size: side of the dynamic kernel.
        num_groups: learned kernels mixed per image (>= 2).
        reduction_ratio: width of the weight projection's hidden layer is ``dim // ratio``.
        bn_cfg: BatchNorm config.
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2,
                 reduction_ratio: int = 4, bn_cfg: dict = BN) -> None:
        super().__init__()
        if num_groups < 2:
            raise ValueError(f'IDConv needs num_groups >= 2, got {num_groups}')
        if dim // reduction_ratio < 1:
            raise ValueError(f'IDConv: dim {dim} is smaller than reduction_ratio '
                             f'{reduction_ratio}')
        self.num_groups = num_groups
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_groups, dim))
        self.proj = nn.Sequential(
            conv_bn(dim, dim // reduction_ratio, 1, bn_cfg=bn_cfg, act_cfg=GELU),
            nn.Conv2d(dim // reduction_ratio, dim * num_groups, 1))
        trunc_normal_(self.weight, std=.02)
        trunc_normal_(self.bias, std=.02)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        k, groups = self.kernel_size, self.num_groups
        scale = self.proj(adaptive_avg_pool2d(x, k))  # exportable at any size (ops/pooling.py)
        scale = scale.reshape(batch, groups, channels, k, k).softmax(dim=1)
        weight = (scale * self.weight.unsqueeze(0)).sum(dim=1).reshape(-1, 1, k, k)
        # The same projection (and BatchNorm) again on the spatial mean gives the bias mixture.
        scale = self.proj(x.mean(dim=(-2, -1), keepdim=True))
        scale = scale.reshape(batch, groups, channels).softmax(dim=1)
        bias = (scale * self.bias.unsqueeze(0)).sum(dim=1).flatten()
        out = F.conv2d(x.reshape(1, -1, height, width), weight.to(x.dtype), bias.to(x.dtype),
                       padding=k // 2, groups=batch * channels)
        return out.reshape(batch, channels, height, width)


class OSRA(nn.Module):
    """Overlapping spatial-reduction attention (official ``Attention``), no output projection.

    Keys and values come from the input reduced by a depthwise ``sr_ratio + 3`` conv with
    stride ``sr_ratio`` (overlapping windows; skipped for ``sr_ratio`` 1), refined by a 3x3
    depthwise conv with a residual. Heads split the channels in order (channel-major).

    Args:
        dim: channels.
        num_heads: attention heads; ``dim`` must be divisible by it.
        sr_ratio: spatial reduction of keys and values.
        attn_drop: dropout on the attention weights.
        bn_cfg: BatchNorm config.
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1, attn_drop: float = 0.,
                 bn_cfg: dict = BN) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'OSRA: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim * 2, 1)
        if sr_ratio > 1:
            self.sr = nn.Sequential(
                conv_bn(dim, dim, sr_ratio + 3, sr_ratio, (sr_ratio + 3) // 2, groups=dim,
                        bn_cfg=bn_cfg, act_cfg=GELU),
                conv_bn(dim, dim, 1, groups=dim, bn_cfg=bn_cfg))
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        """``x (B, C, H, W)``, ``pos_bias`` broadcastable to ``(B, heads, H*W, H'*W')``."""
        batch, channels, height, width = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, heads, channels // heads, -1).transpose(-1, -2)
        if self.sr_ratio > 1:
            reduce, pointwise = self.sr
            kv = reduce(x)
            kv = pointwise.bn(channel_affine(kv, pointwise.conv.weight, pointwise.conv.bias))
        else:
            kv = x
        kv = self.local_conv(kv) + kv
        k, v = torch.chunk(self.kv(kv), 2, dim=1)
        k = k.reshape(batch, heads, channels // heads, -1).transpose(-1, -2)
        v = v.reshape(batch, heads, channels // heads, -1).transpose(-1, -2)
        if pos_bias is not None:
            pos_bias = pos_bias.to(q.dtype)
        num_q, num_k = q.shape[2], k.shape[2]
        dropout = self.attn_drop if self.training else 0.
        if exporting():  # one chunk: the graph's number of queries may be symbolic
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=pos_bias, scale=self.scale,
                                                 dropout_p=dropout)
            return out.transpose(-1, -2).reshape(batch, channels, height, width)
        step = max(1, CHUNK_ELEMENTS // (batch * heads * num_k))
        outs = [
            F.scaled_dot_product_attention(
                q[:, :, i:i + step], k, v,
                attn_mask=None if pos_bias is None else pos_bias[:, :, i:i + step],
                scale=self.scale, dropout_p=dropout)
            for i in range(0, num_q, step)
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out.transpose(-1, -2).reshape(batch, channels, height, width)


class DMixer(nn.Module):
    """Dual dynamic token mixer (official ``HybridTokenMixer``): IDConv on the first half of
    the channels, OSRA on the second, then the squeezed token enhancer (STE, ``proj``) with a
    residual.

    Args:
        dim: channels (even).
        kernel_size, num_groups: of :class:`IDConv`.
        num_heads, sr_ratio: of :class:`OSRA`.
        reduction_ratio: STE width is ``max(16, dim // reduction_ratio)``.
        bn_cfg: BatchNorm config.
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2, num_heads: int = 1,
                 sr_ratio: int = 1, reduction_ratio: int = 8, bn_cfg: dict = BN) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f'D-Mixer: dim {dim} must be even (it is split in two halves)')
        self.local_unit = IDConv(dim // 2, kernel_size, num_groups, bn_cfg=bn_cfg)
        self.global_unit = OSRA(dim // 2, num_heads, sr_ratio, bn_cfg=bn_cfg)
        inner = max(16, dim // reduction_ratio)
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            build_activation_layer(GELU),
            norm_layer(bn_cfg, dim),
            nn.Conv2d(dim, inner, 1),
            build_activation_layer(GELU),
            norm_layer(bn_cfg, inner),
            nn.Conv2d(inner, dim, 1),
            norm_layer(bn_cfg, dim))

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        x1, x2 = torch.chunk(x, 2, dim=1)
        x = torch.cat([self.local_unit(x1), self.global_unit(x2, pos_bias)], dim=1)
        return self.proj(x) + x


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of several kernel sizes, each on its share of the channels (the first
    share takes the remainder)."""

    def __init__(self, dim: int, scales: Sequence[int] = (1, 3, 5, 7)) -> None:
        super().__init__()
        share = dim // len(scales)
        self.channels = [dim - share * (len(scales) - 1)] + [share] * (len(scales) - 1)
        self.proj = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.channels, scales))

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.channels, dim=1)
        return torch.cat([
            channel_affine(part, conv.weight, conv.bias) if conv.kernel_size == (1, 1)
            else conv(part) for conv, part in zip(self.proj, parts)
        ], dim=1)


class MultiScaleFFN(nn.Module):
    """MS-FFN (official ``Mlp``): 1x1 expansion, multi-scale depthwise convs with a residual,
    1x1 projection; GELU and BatchNorm after each stage.

    Args:
        dim: input and output channels.
        hidden_dim: expanded channels.
        drop: dropout rate.
        bn_cfg: BatchNorm config.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0., bn_cfg: dict = BN) -> None:
        super().__init__()
        if hidden_dim < 4:
            raise ValueError(f'MS-FFN: hidden width {hidden_dim} is below 4 (one channel per '
                             f'kernel size)')
        self.fc1 = nn.Sequential(nn.Conv2d(dim, hidden_dim, 1, bias=False),
                                 build_activation_layer(GELU),
                                 norm_layer(bn_cfg, hidden_dim))
        self.dwconv = MultiScaleDWConv(hidden_dim)
        self.act = build_activation_layer(GELU)
        self.norm = norm_layer(bn_cfg, hidden_dim)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1, bias=False),
                                 norm_layer(bn_cfg, dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        x = self.norm(self.act(self.dwconv(x) + x))
        return self.drop(self.fc2(self.drop(x)))


class LayerScale(nn.Module):
    """Per-channel scale and bias (``weight (C, 1, 1, 1)``, ``bias (C,)``; officially a grouped
    1x1 convolution)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), float(init_value)))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return channel_affine(x, self.weight, self.bias)


class TransXNetBlock(nn.Module):
    """Dynamic position encoding (7x7 depthwise conv, residual), then D-Mixer and MS-FFN, each
    pre-normed, layer-scaled and with stochastic depth.

    Args:
        dim: channels.
        kernel_size, num_groups: of :class:`IDConv`.
        num_heads, sr_ratio: of :class:`OSRA`.
        mlp_ratio: MS-FFN hidden width over ``dim``.
        drop, drop_path: dropout and stochastic depth rates.
        layer_scale_init_value: initial layer scale.
        bn_cfg: BatchNorm config.
        with_cp: recompute the block in backward (activation checkpointing).
    """

    def __init__(self, dim: int, kernel_size: int = 7, num_groups: int = 2, num_heads: int = 1,
                 sr_ratio: int = 1, mlp_ratio: float = 4., drop: float = 0.,
                 drop_path: float = 0., layer_scale_init_value: float = 1e-5, bn_cfg: dict = BN,
                 with_cp: bool = False) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm1 = build_norm_layer(BLOCK_NORM, dim)[1]
        self.token_mixer = DMixer(dim, kernel_size, num_groups, num_heads, sr_ratio,
                                  bn_cfg=bn_cfg)
        self.norm2 = build_norm_layer(BLOCK_NORM, dim)[1]
        self.mlp = MultiScaleFFN(dim, int(dim * mlp_ratio), drop, bn_cfg=bn_cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = LayerScale(dim, layer_scale_init_value)
        self.layer_scale_2 = LayerScale(dim, layer_scale_init_value)
        self.with_cp = with_cp

    def _forward(self, x: Tensor, pos_bias: Optional[Tensor]) -> Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(self.norm1(x), pos_bias)))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))

    def forward(self, x: Tensor, pos_bias: Optional[Tensor] = None) -> Tensor:
        return maybe_checkpoint(self._forward, x, pos_bias, enabled=self.with_cp)
