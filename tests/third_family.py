"""ToyFormer: a minimal backbone family that lives only in the test suite.

It proves that the family contract of :class:`mmtransnext.models.backbones.base.MultiStageBackbone`
is the one home of per-family facts: importing this module registers ToyFormer in the OpenMMLab
registries and in :func:`mmtransnext.models.backbones.families`, and with that the shared
contract suite (tests/test_models/test_backbones/test_family_contract.py), official-layout
checkpoints, export and attention maps work for it, while no file of the package names it
(tests/test_models/test_third_family.py).

Four stages at strides 4, 8, 16, 32; a block is ``x + attention(norm(x))``, ``x +
mlp(norm(x))`` on NCHW maps, the token mixer a multi-head softmax attention over every
position with a learned per-head temperature. Its "official" ImageNet files keep the backbone's
keys and a linear classifier under ``logits.`` (after the last stage's ``norm3`` and average
pooling).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtransnext.models.backbones.base import (AttentionAdapter, MultiStageBackbone, Part,
                                               check_flag, register_family,
                                               resolve_stage_settings)
from mmtransnext.models.layers.checkpointing import maybe_checkpoint

PRESETS = {
    'nano': dict(embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], depths=[1, 1, 2, 1]),
    'micro': dict(embed_dims=[16, 16, 32, 32], num_heads=[2, 2, 4, 4], depths=[2, 1, 1, 1]),
}
STAGE_KEYS = ('embed_dims', 'num_heads', 'depths')


class ToyAttention(nn.Module):
    """Softmax attention of every position over every position of an NCHW map."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dims {dim} is not a multiple of num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.temperature = nn.Parameter(torch.full((num_heads, 1, 1), dim ** -0.5 * num_heads))
        self.proj = nn.Conv2d(dim, dim, 1)

    def probabilities(self, x: Tensor) -> Tensor:
        """``(B, heads, HW, HW)`` softmax weights of every query over every key."""
        q, k, _ = self.split(x)
        return (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)

    def split(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        batch, channels = x.shape[:2]
        qkv = self.qkv(x).reshape(batch, 3, self.num_heads, channels // self.num_heads, -1)
        q, k, v = qkv.transpose(-2, -1).unbind(1)  # (B, heads, HW, d)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        _, _, v = self.split(x)
        out = self.probabilities(x) @ v  # (B, heads, HW, d)
        return self.proj(out.transpose(-2, -1).reshape(batch, channels, height, width))


def toy_feature_size(module: nn.Module, inputs: tuple) -> Tuple[int, int]:
    return tuple(inputs[0].shape[-2:])


def toy_attention_weights(attn: ToyAttention, inputs: tuple,
                          query: Tuple[int, int]) -> Dict[str, Tensor]:
    """The query's softmax weights over every position, ``(heads, H, W)``."""
    x = inputs[0]
    height, width = x.shape[-2:]
    row = attn.probabilities(x)[0, :, query[0] * width + query[1]]
    return dict(pooled=row.reshape(attn.num_heads, height, width))


class ToyBlock(nn.Module):

    def __init__(self, dim: int, num_heads: int, with_cp: bool) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = ToyAttention(dim, num_heads)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))
        self.with_cp = with_cp

    def _forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        return maybe_checkpoint(self._forward, x, enabled=self.with_cp)


@register_family
class ToyFormer(MultiStageBackbone):
    """ToyFormer backbone: ``(B, in_channels, H, W)`` -> one map per stage in ``out_indices``.

    Args:
        arch: 'nano', 'micro' or a dict of ``embed_dims``, ``num_heads``, ``depths``.
        depths: per-stage block counts overriding ``arch``.
        in_channels, out_indices, frozen_stages, with_cp, init_cfg: as every family's.
    """

    arch_presets = PRESETS
    official_classifier_keys = {'logits.': 'head.fc.'}
    attention_adapters = {ToyAttention: AttentionAdapter(toy_feature_size, toy_attention_weights)}

    def __init__(self, arch: Union[str, dict] = 'nano', depths: Optional[Sequence[int]] = None,
                 in_channels: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        settings = resolve_stage_settings('ToyFormer', arch, PRESETS, {}, STAGE_KEYS,
                                          STAGE_KEYS, dict(depths=depths))
        dims = settings['embed_dims']
        self.setup_stages(len(dims), in_channels, out_indices, frozen_stages)
        check_flag('with_cp', with_cp)
        for i, dim in enumerate(dims):
            # stride 4 into stage 0, 2 into the others; ceil(size / stride) at any size
            down = nn.Conv2d(in_channels if i == 0 else dims[i - 1], dim, 7 if i == 0 else 3,
                             4 if i == 0 else 2, 3 if i == 0 else 1)
            setattr(self, f'down{i}', down)
            setattr(self, f'stage{i}', nn.ModuleList(
                ToyBlock(dim, settings['num_heads'][i], with_cp)
                for _ in range(settings['depths'][i])))
            setattr(self, f'norm{i}', nn.GroupNorm(1, dim))
        self.finish_setup(dims, [f'norm{i}' for i in range(len(dims))])

    def stem_parts(self) -> List[Part]:
        return [self.down0]

    def stage_parts(self, stage: int) -> List[Part]:
        parts: List[Part] = [getattr(self, f'stage{stage}'), getattr(self, f'norm{stage}')]
        return parts + ([getattr(self, f'down{stage}')] if stage else [])

    def token_mixers(self) -> List[List[nn.Module]]:
        return [[block.attn for block in getattr(self, f'stage{i}')]
                for i in range(self.num_stages)]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        self.check_input(x)
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f'down{i}')(x)
            for block in getattr(self, f'stage{i}'):
                x = block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)


def official_classifier(x: Tensor, state: Dict[str, Tensor], arch: str = 'nano') -> Tensor:
    """Logits of an official ToyFormer ImageNet file ``state`` for images ``x``, computed from
    the file's tensors: the last stage's normalised map, averaged, through ``logits``."""
    model = ToyFormer(arch, out_indices=(3, ))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith('logits.')})
    with torch.no_grad():
        pooled = model.eval()(x)[0].mean(dim=(2, 3))
    return F.linear(pooled, state['logits.weight'], state['logits.bias'])
