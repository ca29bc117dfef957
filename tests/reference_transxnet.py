"""Test oracle: the official TransXNet dense-prediction forward (eval mode) written out in plain
functional PyTorch from a state dict (shared/reference/transxnet.md §2-§5).

Independent of the package's modules: every step is an explicit ``F.*`` call on the tensors of
the state dict, attention is an explicit softmax, and the relative-position table is resized in
every block call, as the official code does.
"""
import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

State = Dict[str, Tensor]


def _bn(x: Tensor, s: State, p: str) -> Tensor:
    return F.batch_norm(x, s[p + '.running_mean'], s[p + '.running_var'], s[p + '.weight'],
                        s[p + '.bias'], False, 0., 1e-5)


def _gn(x: Tensor, s: State, p: str) -> Tensor:
    return F.group_norm(x, 1, s[p + '.weight'], s[p + '.bias'], 1e-5)


def _conv(x: Tensor, s: State, p: str, stride: int = 1, padding: int = 0,
          groups: int = 1) -> Tensor:
    return F.conv2d(x, s[p + '.weight'], s.get(p + '.bias'), stride, padding, 1, groups)


def _idconv(x: Tensor, s: State, p: str, groups: int) -> Tensor:
    b, c, h, w = x.shape
    k = s[p + '.weight'].shape[-1]

    def proj(t):
        t = F.gelu(_bn(_conv(t, s, p + '.proj.0.conv'), s, p + '.proj.0.bn'))
        return _conv(t, s, p + '.proj.1')

    mix = torch.softmax(proj(F.adaptive_avg_pool2d(x, k)).reshape(b, groups, c, k, k), dim=1)
    kernel = (mix * s[p + '.weight'][None]).sum(1)  # (b, c, k, k)
    mix = torch.softmax(proj(x.mean((2, 3), keepdim=True)).reshape(b, groups, c), dim=1)
    bias = (mix * s[p + '.bias'][None]).sum(1)  # (b, c)
    out = [F.conv2d(x[i:i + 1], kernel[i][:, None], bias[i], padding=k // 2, groups=c)
           for i in range(b)]
    return torch.cat(out)


def _osra(x: Tensor, s: State, p: str, heads: int, sr: int, table: Tensor) -> Tensor:
    b, c, h, w = x.shape
    d = c // heads
    q = _conv(x, s, p + '.q').reshape(b, heads, d, h * w).transpose(-1, -2)
    kv = x
    if sr > 1:
        kv = F.gelu(_bn(_conv(kv, s, p + '.sr.0.conv', sr, (sr + 3) // 2, c), s, p + '.sr.0.bn'))
        kv = _bn(_conv(kv, s, p + '.sr.1.conv', groups=c), s, p + '.sr.1.bn')
    kv = _conv(kv, s, p + '.local_conv', padding=1, groups=c) + kv
    kv = _conv(kv, s, p + '.kv')
    k, v = kv[:, :c], kv[:, c:]
    k = k.reshape(b, heads, d, -1)
    v = v.reshape(b, heads, d, -1).transpose(-1, -2)
    attn = (q @ k) * d ** -0.5
    if attn.shape[2:] != table.shape[2:]:
        table = F.interpolate(table, size=attn.shape[2:], mode='bicubic', align_corners=False)
    attn = torch.softmax(attn + table, dim=-1)
    return (attn @ v).transpose(-1, -2).reshape(b, c, h, w)


def _block(x: Tensor, s: State, p: str, heads: int, groups: int, sr: int,
           table: Tensor) -> Tensor:
    c = x.shape[1]
    x = x + _conv(x, s, p + '.pos_embed', padding=3, groups=c)
    y = _gn(x, s, p + '.norm1')
    m = p + '.token_mixer'
    y = torch.cat([_idconv(y[:, :c // 2], s, m + '.local_unit', groups),
                   _osra(y[:, c // 2:], s, m + '.global_unit', heads, sr, table)], 1)
    z = _bn(F.gelu(_conv(y, s, m + '.proj.0', padding=1, groups=c)), s, m + '.proj.2')
    z = _bn(F.gelu(_conv(z, s, m + '.proj.3')), s, m + '.proj.5')
    y = _bn(_conv(z, s, m + '.proj.6'), s, m + '.proj.7') + y
    x = x + F.conv2d(y, s[p + '.layer_scale_1.weight'], s[p + '.layer_scale_1.bias'], groups=c)
    y = _gn(x, s, p + '.norm2')
    y = _bn(F.gelu(_conv(y, s, p + '.mlp.fc1.0')), s, p + '.mlp.fc1.2')
    hidden = y.shape[1]
    splits = [hidden - hidden // 4 * 3] + [hidden // 4] * 3
    parts = torch.split(y, splits, dim=1)
    y = torch.cat([_conv(t, s, f'{p}.mlp.dwconv.proj.{i}', padding=(2 * i + 1) // 2,
                         groups=t.shape[1]) for i, t in enumerate(parts)], 1) + y
    y = _bn(F.gelu(y), s, p + '.mlp.norm')
    y = _bn(_conv(y, s, p + '.mlp.fc2.0'), s, p + '.mlp.fc2.1')
    return x + F.conv2d(y, s[p + '.layer_scale_2.weight'], s[p + '.layer_scale_2.bias'],
                        groups=c)


def reference_transxnet(state: State, x: Tensor, depths: Sequence[int],
                        heads: Sequence[int], groups: Sequence[int],
                        sr_ratios: Sequence[int] = (8, 4, 2, 1)) -> List[Tensor]:
    """The four normed stage outputs of the official detection backbone (eval mode)."""
    x = _bn(_conv(x, state, 'patch_embed.proj.conv', 4, 3), state, 'patch_embed.proj.bn')
    outs = []
    for i in range(4):
        if i:
            p = f'network.{2 * i - 1}.proj'
            x = _bn(_conv(x, state, p + '.conv', 2, 1), state, p + '.bn')
        for j in range(depths[i]):
            x = _block(x, state, f'network.{2 * i}.{j}', heads[i], groups[i], sr_ratios[i],
                       state[f'relative_pos_enc.{i}'])
        outs.append(_gn(x, state, f'norm{2 * i}'))
    return outs


def ceil_grid(size: int, stage: int) -> int:
    """Side of stage ``stage``'s map for a ``size`` input (ceil(size / 4), then halved)."""
    side = math.ceil(size / 4)
    for _ in range(stage):
        side = math.ceil(side / 2)
    return side


def reference_transxnet_classifier(state: State, x: Tensor, depths: Sequence[int],
                                   heads: Sequence[int], groups: Sequence[int],
                                   sr_ratios: Sequence[int] = (8, 4, 2, 1)) -> Tensor:
    """Logits of the official classification model (``fork_feat=False``, eval) from its state
    dict: the last stage, ``classifier.0`` (GroupNorm with one group), average pooling and the
    1x1 conv ``classifier.2``."""
    dense = dict(state)
    # The dense forward ends each stage with a one-group GroupNorm: the last one is the
    # classifier's; the others are unused here (identity affine).
    for i in range(3):
        width = state[f'network.{2 * i}.0.norm1.weight'].shape[0]
        dense[f'norm{2 * i}.weight'], dense[f'norm{2 * i}.bias'] = torch.ones(width), \
            torch.zeros(width)
    dense['norm6.weight'], dense['norm6.bias'] = state['classifier.0.weight'], \
        state['classifier.0.bias']
    last = reference_transxnet(dense, x, depths, heads, groups, sr_ratios)[-1]
    pooled = F.adaptive_avg_pool2d(last, 1)
    return F.conv2d(pooled, state['classifier.2.weight'], state['classifier.2.bias']).flatten(1)
