"""mmtransnext.analysis.attention_map: the weights it returns are the ones the block uses.

The block's real input and output are recorded by the test's own forward hook; applying the
returned weights to the block's values (computed here from its input, independently of the
package) and projecting must give the block's output at the query, in both attention modes.
"""
import pytest
import torch
import torch.nn.functional as F
from reference import perturb_, reference_aggregated_attention, reference_bias

from mmtransnext.analysis import attention_map, pixel_to_token, token_mixers
from mmtransnext.models import TransNeXt
from mmtransnext.models.layers import AggregatedAttention, FullAttention

ARCH = dict(embed_dims=[16, 32, 48, 64], num_heads=[2, 2, 3, 4], depths=[1, 1, 2, 1])
IMAGE_SIZE = (75, 91)  # odd: stage maps 19x23, 10x12, 5x6, 3x3
POINTS = [(0, 0), (74, 90), (0, 45), (40, 90), (37, 45), (74, 0)]


def _model(mode: str, state=None) -> TransNeXt:
    model = TransNeXt(ARCH, img_size=64, pretrain_size=64, attention_mode=mode)
    if state is None:
        torch.manual_seed(1)
        perturb_(model)
    else:
        model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    fast = _model('fast')
    return dict(fast=fast, reference=_model('reference', fast.state_dict()))


@pytest.fixture(scope='module')
def image():
    return torch.randn(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(3))


def _record(model, image):
    """Inputs and output of every token mixer in a plain forward, by (stage, block)."""
    records, handles = {}, []
    for s, stage in enumerate(token_mixers(model)):
        for b, mixer in enumerate(stage):
            def hook(_, args, out, key=(s, b)):
                records[key] = (args, out)
            handles.append(mixer.register_forward_hook(hook))
    with torch.no_grad():
        model(image)
    for h in handles:
        h.remove()
    return records


def _window_values(attn, x, size, query):
    """``(heads, w*w, d)`` values of the query's window, zero off the map."""
    (height, width), w = size, attn.window_size
    v = attn.kv(x)[0, :, attn.dim:].view(height, width, attn.num_heads, attn.head_dim)
    v = F.pad(v.permute(2, 3, 0, 1), (w // 2,) * 4)  # (heads, d, H + 2r, W + 2r)
    patch = v[:, :, query[0]:query[0] + w, query[1]:query[1] + w]
    return patch.flatten(2).transpose(1, 2)


def _pooled_values(attn, x, size, pool_size):
    channels = x.shape[-1]
    grid = x.transpose(1, 2).reshape(1, channels, *size)
    pooled = F.adaptive_avg_pool2d(F.gelu(attn.sr(grid)), pool_size).flatten(2).transpose(1, 2)
    pooled = F.layer_norm(pooled, (channels,), attn.norm.weight, attn.norm.bias, attn.norm.eps)
    return attn.kv(pooled)[0, :, channels:].view(-1, attn.num_heads, attn.head_dim).transpose(0, 1)


def _apply(attn, x, geometry, maps):
    """The block's output at the query rebuilt from the returned weights."""
    query = tuple(maps['query'].tolist())
    heads = attn.num_heads
    if isinstance(attn, AggregatedAttention):
        local = (maps['window'] + maps['tokens']).reshape(heads, 1, -1)
        out = (local @ _window_values(attn, x, geometry.size, query))[:, 0]
        out = out + (maps['pooled'].reshape(heads, 1, -1) @ _pooled_values(
            attn, x, geometry.size, geometry.pool_size))[:, 0]
    else:
        v = attn.qkv(x)[0, :, 2 * attn.dim:].view(-1, heads, attn.head_dim).transpose(0, 1)
        out = (maps['pooled'].reshape(heads, 1, -1) @ v)[:, 0]
    return attn.proj(out.reshape(-1))


@pytest.mark.parametrize('mode', ['fast', 'reference'])
def test_weights_reproduce_block_output(models, image, mode):
    model = models[mode]
    records = _record(model, image)
    mixers = token_mixers(model)
    checked = 0
    for (stage, block), (args, out) in records.items():
        x, geometry = args
        for point in POINTS:
            maps = attention_map(model, image, point, stage, block)
            query = pixel_to_token(point, IMAGE_SIZE, geometry.size)
            assert tuple(maps['query'].tolist()) == query
            assert tuple(maps['feature_size'].tolist()) == geometry.size
            index = query[0] * geometry.size[1] + query[1]
            with torch.no_grad():
                rebuilt = _apply(mixers[stage][block], x, geometry, maps)
            torch.testing.assert_close(rebuilt, out[0, index], atol=2e-5, rtol=1e-4)
            checked += 1
    assert checked == 5 * len(POINTS)


def test_weights_reproduce_the_oracle(models, image):
    """Against tests/reference.py (the paper's equations) at the stage-1 block."""
    model = models['fast']
    (x, geometry), _ = _record(model, image)[(0, 0)]
    attn = token_mixers(model)[0][0]
    bias = reference_bias(attn, geometry.size, geometry.pool_size, (16, 16), ((16, 16), (2, 2)))
    with torch.no_grad():
        oracle = reference_aggregated_attention(attn, x, geometry.size, geometry.pool_size, bias)
    for point in POINTS:
        maps = attention_map(model, image, point, 0, 0)
        y, x_ = maps['query'].tolist()
        with torch.no_grad():
            rebuilt = _apply(attn, x, geometry, maps)
        torch.testing.assert_close(rebuilt, oracle[0, y * geometry.size[1] + x_],
                                   atol=2e-5, rtol=1e-4)


def test_modes_give_the_same_maps(models, image):
    for stage, block in [(0, 0), (1, 0), (2, 1), (3, 0)]:
        for point in POINTS[:3]:
            fast = attention_map(models['fast'], image, point, stage, block)
            ref = attention_map(models['reference'], image, point, stage, block)
            assert fast.keys() == ref.keys()
            for key in fast:
                torch.testing.assert_close(fast[key], ref[key], atol=1e-6, rtol=1e-5)


def test_window_and_pooled_are_one_softmax(models, image):
    for stage, block in [(0, 0), (1, 0), (2, 0), (2, 1)]:
        maps = attention_map(models['fast'], image, (37, 45), stage, block)
        heads = maps['pooled'].shape[0]
        total = maps['window'].sum((1, 2)) + maps['pooled'].sum((1, 2))
        torch.testing.assert_close(total, torch.ones(heads))
        assert maps['window'].shape == (heads, 3, 3) and maps['tokens'].shape == (heads, 3, 3)
        assert bool((maps['window'] > 0).all()) and bool((maps['pooled'] > 0).all())
    full = attention_map(models['fast'], image, (37, 45), 3, 0)
    assert set(full) == {'pooled', 'query', 'feature_size'}
    assert full['pooled'].shape == (4, 3, 3)
    torch.testing.assert_close(full['pooled'].sum((1, 2)), torch.ones(4))


@pytest.mark.parametrize('point,dead_rows,dead_cols', [
    ((0, 0), [0], [0]), ((74, 90), [2], [2]), ((0, 45), [0], []), ((40, 90), [], [2]),
    ((74, 0), [2], [0])])
def test_window_weights_at_borders(models, image, point, dead_rows, dead_cols):
    """Window positions off the map carry no weight (softmax or token); the others do."""
    maps = attention_map(models['fast'], image, point, 0, 0)
    outside = torch.zeros(3, 3, dtype=torch.bool)
    outside[dead_rows, :] = True
    outside[:, dead_cols] = True
    for key in ('window', 'tokens'):
        assert bool((maps[key][:, outside] == 0).all()), key
    assert bool((maps['window'][:, ~outside] > 0).all())
    assert bool((maps['tokens'][:, ~outside] != 0).all())
    torch.testing.assert_close(maps['window'].sum((1, 2)) + maps['pooled'].sum((1, 2)),
                               torch.ones(2))


def test_leaves_model_untouched(models, image):
    model = models['fast']
    with torch.no_grad():
        before = model(image)
    model.train()
    attention_map(model, image, (10, 10), 2, 1)
    assert model.training
    model.eval()
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    with torch.no_grad():
        after = model(image)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_any_input_size_and_wrapped_model(models):
    holder = torch.nn.Module()
    holder.backbone = models['fast']
    for size in [(33, 33), (64, 128), (129, 47)]:
        image = torch.randn(1, 3, *size)
        maps = attention_map(holder, image, (size[0] - 1, size[1] // 2), 1, 0)
        torch.testing.assert_close(maps['window'].sum((1, 2)) + maps['pooled'].sum((1, 2)),
                                   torch.ones(2))


def test_bad_arguments(models, image):
    model = models['fast']
    with pytest.raises(ValueError, match='image must be'):
        attention_map(model, image[0], (0, 0), 0, 0)
    with pytest.raises(ValueError, match='image must be'):
        attention_map(model, image.expand(2, -1, -1, -1), (0, 0), 0, 0)
    with pytest.raises(ValueError, match='outside the 75x91 image'):
        attention_map(model, image, (75, 0), 0, 0)
    with pytest.raises(ValueError, match='point must be'):
        attention_map(model, image, (1, 2, 3), 0, 0)
    with pytest.raises(ValueError, match='stage 4 out of range'):
        attention_map(model, image, (0, 0), 4, 0)
    with pytest.raises(ValueError, match='block 2 out of range'):
        attention_map(model, image, (0, 0), 2, 2)
    with pytest.raises(ValueError, match='TransNeXt, TransXNet backbones, got Conv2d'):
        attention_map(torch.nn.Conv2d(3, 3, 1), image, (0, 0), 0, 0)


def test_mixer_kinds(models):
    kinds = [type(stage[0]) for stage in token_mixers(models['fast'])]
    assert kinds == [AggregatedAttention] * 3 + [FullAttention]


def test_osra_weights_reproduce_block_output(image):
    """TransXNet: OSRA's weights on its reduced-map values give its output at the query."""
    from mmtransnext.models import TransXNet
    torch.manual_seed(2)
    model = perturb_(TransXNet('tiny', depths=[1, 1, 2, 1], pretrain_size=56)).eval()
    records = _record(model, image)
    assert len(records) == 5
    mixers = token_mixers(model)
    for (stage, block), (args, out) in records.items():
        osra, x = mixers[stage][block], args[0]
        assert args[1] is not None and bool(args[1].abs().sum() > 0)  # a real position bias
        reduced = osra.sr(x)
        v = torch.chunk(osra.kv(osra.local_conv(reduced) + reduced), 2, dim=1)[1]
        heads, channels = osra.num_heads, x.shape[1]
        v = v.reshape(heads, channels // heads, -1).transpose(1, 2)  # (heads, P, d)
        for point in POINTS[:4]:
            maps = attention_map(model, image, point, stage, block)
            assert set(maps) == {'pooled', 'query', 'feature_size'}
            assert maps['pooled'].shape[1:] == reduced.shape[-2:]
            torch.testing.assert_close(maps['pooled'].sum((1, 2)), torch.ones(heads))
            y, x_ = maps['query'].tolist()
            rebuilt = (maps['pooled'].reshape(heads, 1, -1) @ v)[:, 0].reshape(-1)
            torch.testing.assert_close(rebuilt, out[0, :, y, x_], atol=2e-5, rtol=1e-4)
