"""Test oracle: TransNeXt attention written directly from the paper's equations.

Deliberately naive and independent of the package's implementation: the window is visited one
offset at a time on a zero-padded map, the position-bias coordinates are built for every
(query, key) pair and made unique in 2-D, and the pooled and local logits share one softmax over
their concatenation. Only the learned parameters are taken from the module under test.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

Size2d = Tuple[int, int]


def perturb_(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Move every parameter off its init (zeros/ones would hide mistakes)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


#: Largest error of a model cast to a half dtype, as a share of its float32 output's largest
#: value (per output).
HALF_TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def assert_cast_model_close(model: torch.nn.Module, x: torch.Tensor,
                            dtype: torch.dtype) -> None:
    """Run ``model`` on ``x`` in float32, then cast whole with ``.to(dtype)``: every output in
    ``dtype`` and within :data:`HALF_TOLERANCE` of the float32 one."""
    with torch.no_grad():
        expected = model(x)
        outs = model.to(dtype)(x.to(dtype))
    for got, want in zip(outs, expected):
        assert got.dtype == dtype
        error = (got.float() - want).abs().max() / want.abs().max()
        assert error < HALF_TOLERANCE[dtype], f'{dtype}: error {error:.2e}'


def brute_force_table(query_size: Size2d, key_size: Size2d, pretrain_size: Size2d):
    """All (query, key) offsets, made unique row-wise; returns (index (Nq, Nk), coords (T, 2))."""
    qh, qw = query_size
    kh, kw = key_size
    ys = torch.arange(qh, dtype=torch.float32)
    xs = torch.arange(qw, dtype=torch.float32)
    key_ys = F.adaptive_avg_pool1d(ys[None], kh)[0]
    key_xs = F.adaptive_avg_pool1d(xs[None], kw)[0]
    q = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), -1).reshape(-1, 2)
    k = torch.stack(torch.meshgrid(key_ys, key_xs, indexing='ij'), -1).reshape(-1, 2)
    rel = q[:, None, :] - k[None, :, :]
    rel[..., 0] = rel[..., 0] / (pretrain_size[0] - 1) * 8
    rel[..., 1] = rel[..., 1] / (pretrain_size[1] - 1) * 8
    coords, index = torch.unique(rel.reshape(-1, 2), dim=0, return_inverse=True)
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)
    return index.view(qh * qw, kh * kw), coords


def gather_and_resize(values: torch.Tensor, index: torch.Tensor, built: Tuple[Size2d, Size2d],
                      query_size: Size2d, key_size: Size2d) -> torch.Tensor:
    """``(heads, Nq, Nk)`` bias from per-coordinate ``values`` ``(T, heads)`` gathered by the
    ``(Nq', Nk')`` ``index`` of the ``built`` (query grid, key grid) and, when the sizes differ,
    resized bilinearly (keys first, then queries)."""
    build_q, build_k = built
    bias = values.t()[:, index]  # (heads, Nq', Nk')
    if (tuple(build_q), tuple(build_k)) != (tuple(query_size), tuple(key_size)):
        heads = bias.shape[0]
        bias = bias.reshape(heads, -1, *build_k)
        bias = F.interpolate(bias, key_size, mode='bilinear', align_corners=False)
        bias = bias.flatten(2).transpose(1, 2).reshape(heads, -1, *build_q)
        bias = F.interpolate(bias, query_size, mode='bilinear', align_corners=False)
        bias = bias.flatten(2).transpose(1, 2)
    return bias


def reference_bias(attn, query_size: Size2d, key_size: Size2d, pretrain_size: Size2d,
                   trained: Tuple[Size2d, Size2d] = None) -> torch.Tensor:
    """CPB bias ``(heads, Nq, Nk)``; with ``trained`` = (query grid, key grid) it is built there
    and resized bilinearly (keys first, then queries)."""
    built = trained if trained else (query_size, key_size)
    index, coords = brute_force_table(*built, pretrain_size)
    values = attn.cpb_fc2(torch.relu(attn.cpb_fc1(coords)))  # (T, heads)
    return gather_and_resize(values, index, built, query_size, key_size)


def _unit(t):
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def reference_aggregated_attention(attn, x, size: Size2d, pool_size: Size2d, bias):
    """Aggregated attention of module ``attn`` on tokens ``x`` (B, H*W, C)."""
    B, N, C = x.shape
    H, W = size
    h, d, w = attn.num_heads, attn.head_dim, attn.window_size
    r = w // 2
    q = attn.q(x).view(B, H, W, h, d).permute(0, 3, 1, 2, 4)       # B h H W d
    k, v = attn.kv(x).view(B, H, W, 2, h, d).permute(3, 0, 4, 1, 2, 5)
    q_unit, k_unit = _unit(q), _unit(k)

    grid = x.transpose(1, 2).reshape(B, C, H, W)
    pooled = F.adaptive_avg_pool2d(F.gelu(attn.sr(grid)), pool_size).flatten(2).transpose(1, 2)
    pooled = F.layer_norm(pooled, (C,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
    k_pool, v_pool = attn.kv(pooled).view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
    k_pool = _unit(k_pool)
    num_pool = k_pool.shape[2]

    k_pad = F.pad(k_unit, (0, 0, r, r, r, r))
    v_pad = F.pad(v, (0, 0, r, r, r, r))
    ones = F.pad(torch.ones(H, W), (r, r, r, r))
    shifted_k, shifted_v, valid = [], [], []
    for dy in range(w):
        for dx in range(w):
            shifted_k.append(k_pad[:, :, dy:dy + H, dx:dx + W])
            shifted_v.append(v_pad[:, :, dy:dy + H, dx:dx + W])
            valid.append(ones[dy:dy + H, dx:dx + W] > 0)
    valid = torch.stack(valid, -1)                                  # H W L
    length = valid.sum(-1, keepdim=True).float() + num_pool          # H W 1
    temperature = F.softplus(attn.temperature).view(1, h, 1, 1, 1)
    qs = (q_unit + attn.query_embedding.view(1, h, 1, 1, d)) * temperature * torch.log(length)

    local = torch.stack([(qs * ks).sum(-1) for ks in shifted_k], -1)  # B h H W L
    local = local + attn.relative_pos_bias_local.view(1, h, 1, 1, -1)
    local = local.masked_fill(~valid, float('-inf'))
    pool = torch.einsum('bhyxd,bhkd->bhyxk', qs, k_pool) + bias.view(1, h, H, W, -1)
    probs = torch.cat([local, pool], -1).softmax(-1)
    p_local, p_pool = probs[..., :w * w], probs[..., w * w:]
    learned = torch.einsum('bhyxd,hdl->bhyxl', q_unit, attn.learnable_tokens)
    p_local = p_local + learned + attn.learnable_bias.view(1, h, 1, 1, -1)
    out = sum(p_local[..., i:i + 1] * vs for i, vs in enumerate(shifted_v))
    out = out + torch.einsum('bhyxk,bhkd->bhyxd', p_pool, v_pool)
    return attn.proj(out.permute(0, 2, 3, 1, 4).reshape(B, N, C))


def reference_full_attention(attn, x, bias):
    """Full attention of module ``attn`` on tokens ``x`` (B, N, C)."""
    B, N, C = x.shape
    h, d = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
    qs = (_unit(q) + attn.query_embedding) * F.softplus(attn.temperature) * math.log(N)
    probs = (qs @ _unit(k).transpose(-1, -2) + bias).softmax(-1)
    return attn.proj((probs @ v).transpose(1, 2).reshape(B, N, C))


def reference_stages(model, img, grids):
    """Stage outputs of a TransNeXt ``model`` with every attention replaced by the references
    above. ``grids(stage, (H, W))`` gives the stage's pooled-key grid and the (query grid, key
    grid) its position table is built for (resized to ``(H, W)`` and the pool when they
    differ)."""
    from mmtransnext.models.layers.attention import AggregatedAttention
    outs = []
    x = img
    for i in range(model.num_stages):
        embed = getattr(model, f'patch_embed{i + 1}')
        x = embed.proj(x)
        B, _, H, W = x.shape
        x = embed.norm(x.flatten(2).transpose(1, 2))
        stride = 2 ** (i + 2)
        pretrain = (model.pretrain_size[0] // stride, model.pretrain_size[1] // stride)
        pool, built = grids(i, (H, W))
        index, coords = brute_force_table(*built, pretrain)  # weight-free: once per stage
        for blk in getattr(model, f'block{i + 1}'):
            values = blk.attn.cpb_fc2(torch.relu(blk.attn.cpb_fc1(coords)))
            bias = gather_and_resize(values, index, built, (H, W), pool)
            y = blk.norm1(x)
            if isinstance(blk.attn, AggregatedAttention):
                y = reference_aggregated_attention(blk.attn, y, (H, W), pool, bias)
            else:
                y = reference_full_attention(blk.attn, y, bias)
            x = x + y
            x = x + blk.mlp(blk.norm2(x), (H, W))
        x = getattr(model, f'norm{i + 1}')(x)
        x = x.transpose(1, 2).reshape(B, -1, H, W)
        if i in model.out_indices:
            outs.append(x)
    return outs


def reference_backbone(model, img):
    """Forward of a TransNeXt ``model`` in normal mode with the references above."""
    def grids(i, size):
        sr = model.sr_ratios[i]
        pool = (max(1, size[0] // sr), max(1, size[1] // sr))
        if model.is_extrapolation:
            return pool, (size, pool)
        stride = 2 ** (i + 2)
        tq = (model.img_size[0] // stride, model.img_size[1] // stride)
        return pool, (tq, (tq[0] // sr, tq[1] // sr))
    return reference_stages(model, img, grids)


# ------------------------------------------------------------------------------------------
# Linear inference mode and multi-scale evaluation (the official classification code's
# ``fixed_pool_size`` / ``--input-size`` / ``--pretrain-size``).
# ------------------------------------------------------------------------------------------
def reference_linear_mode_backbone(model, img, fixed_pool_size=None, pretrain_size=224,
                                   img_size=None):
    """Stage outputs of a TransNeXt ``model`` (its parameters only) the way the official
    classification model computes them for an ``img_size`` model evaluated on ``img``.

    Official semantics: every aggregated-attention stage pools its keys to ``fixed_pool_size``
    squared (``H/sr x W/sr`` when None; full-attention stages always see every token); the
    position table is built for query grid ``img_size // stride`` and key grid (the pool grid
    of ``img_size``, or ``fixed_pool_size`` squared), offsets scaled by ``pretrain_size //
    stride``; the length scale is ``log(window keys in the map + pooled keys)`` (``log(N)`` for
    full attention). ``img_size`` None builds the tables at the input's own size (the official
    ``--input-size`` equal to the image size); otherwise the bias is resized bilinearly from
    ``img_size``'s grids to the actual ones (the detection/segmentation interpolation mode).
    ``model.pretrain_size`` must be ``pretrain_size``.
    """
    assert tuple(model.pretrain_size) == (pretrain_size, pretrain_size)

    def grids(i, size):
        stride, sr = 2 ** (i + 2), model.sr_ratios[i]
        query = size if img_size is None else (img_size // stride, img_size // stride)
        if sr > 1 and fixed_pool_size is not None:
            assert min(size) >= fixed_pool_size, 'the official code asserts this'
            pool = table_pool = (fixed_pool_size, fixed_pool_size)
        else:
            pool = (size[0] // sr, size[1] // sr)
            table_pool = (query[0] // sr, query[1] // sr)
        return pool, (size, pool) if img_size is None else (query, table_pool)
    return reference_stages(model, img, grids)
def reference_transnext_classifier(backbone, head_weight: torch.Tensor, head_bias: torch.Tensor,
                                   img: torch.Tensor) -> torch.Tensor:
    """The official TransNeXt classifier (``forward_features`` + ``head``, eval): the last
    stage's normed tokens averaged, then the linear head. ``backbone`` (built for ``img``'s
    size, as the official classifier is) must return its last stage."""
    last = reference_backbone(backbone, img)[-1]  # (B, C, H, W), after norm4
    tokens = last.flatten(2).transpose(1, 2)
    return tokens.mean(dim=1) @ head_weight.t() + head_bias
