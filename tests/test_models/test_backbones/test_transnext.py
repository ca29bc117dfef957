import pytest
import torch

from mmtransnext.models import TransNeXt
from mmtransnext.models.layers import conv_glu, position_bias
from mmtransnext.ops import pooled_attention
from reference import perturb_, reference_backbone

# Backbone-only parameter counts of the official implementation, measured by building the
# official detection/segmentation TransNeXt class; shared/reference rounds them to
# 12.42M / 27.68M / 49.16M / 88.95M.
OFFICIAL_PARAMS = {
    'micro': 12_424_304,
    'tiny': 27_681_960,
    'small': 49_164_564,
    'base': 88_952_496,
}

SMALL = dict(arch='tiny', depths=[1, 1, 2, 1])


@pytest.mark.parametrize('arch', sorted(OFFICIAL_PARAMS))
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_parameter_counts_equal_official(arch):
    model = TransNeXt(arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[arch]


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.parametrize('size', [(64, 64), (97, 123), (40, 200), (8, 8), (1, 1)])
def test_backbone_matches_reference(extrapolation, size):
    model = perturb_(TransNeXt(**SMALL, img_size=128, pretrain_size=224,
                               is_extrapolation=extrapolation)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
        expected = reference_backbone(model, x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.parametrize('size', [(97, 123), (128, 64), (1, 1)])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_fast_path_equals_reference_outputs_and_gradients(extrapolation, size):
    fast = perturb_(TransNeXt(**SMALL, img_size=96, pretrain_size=224,
                              is_extrapolation=extrapolation))
    ref = TransNeXt(**SMALL, img_size=96, pretrain_size=224, is_extrapolation=extrapolation,
                    attention_mode='reference')
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, *size)
    results = []
    for model in (fast, ref):
        outs = model.train()(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (fast_outs, fast_grads), (ref_outs, ref_grads) = results
    for a, b in zip(fast_outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        # Compared relative to the tensor's largest entry: summation order differs between the
        # paths, so tiny entries of large accumulated gradients differ by rounding. (The
        # full-attention cpb_fc2.bias shifts every logit of a softmax equally: its true gradient
        # is zero and both paths return rounding noise, checked to be small.)
        if name.startswith('block4.') and name.endswith('cpb_fc2.bias'):
            assert fast_grads[name].abs().max() < 1e-5 and grad.abs().max() < 1e-5, name
            continue
        error = (fast_grads[name] - grad).abs().max().item()
        assert error <= 1e-4 * grad.abs().max().item() + 1e-6, (name, error)


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_fast_path_in_many_chunks_equals_reference(monkeypatch, extrapolation):
    """Small budgets split the pooled attention, the CPB MLP and the inference ConvGLU into
    many chunks (ragged ends included), as detection-size inputs do with the defaults."""
    monkeypatch.setattr(pooled_attention, 'CHUNK_ELEMENTS', 3000)
    monkeypatch.setattr(position_bias, 'CPB_CHUNK_ELEMENTS', 5000)
    monkeypatch.setattr(conv_glu, 'BAND_ELEMENTS', 2000)
    fast = perturb_(TransNeXt(**SMALL, img_size=96, pretrain_size=224,
                              is_extrapolation=extrapolation))
    ref = TransNeXt(**SMALL, img_size=96, pretrain_size=224, is_extrapolation=extrapolation,
                    attention_mode='reference')
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 75, 101)
    with torch.no_grad():
        for a, b in zip(fast.eval()(x), ref.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    grads = []
    for model in (fast, ref):
        outs = model.train()(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[1].items():
        if name.startswith('block4.') and name.endswith('cpb_fc2.bias'):
            continue  # true gradient zero (see above)
        error = (grads[0][name] - grad).abs().max().item()
        assert error <= 1e-4 * grad.abs().max().item() + 1e-6, (name, error)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), 'unknown TransNeXt arch'),
    (dict(arch=dict(embed_dims=[8], num_heads=[1], depths=[1], colour=[1])), 'colour'),
    (dict(arch='tiny', depths=[1, 1, 1]), 'one value per stage'),
    (dict(arch='tiny', out_indices=(4,)), 'out_indices'),
    (dict(arch='tiny', img_size=32), 'too small'),
    (dict(arch='tiny', pretrain_size=48), 'pretrain_size'),
    (dict(arch='tiny', window_size=[3, 4, 3, None]), 'odd'),
    (dict(arch='tiny', frozen_stages=7), 'frozen_stages'),
])
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransNeXt(**kwargs)


def test_position_tables_are_cached_per_size():
    model = TransNeXt(**SMALL, is_extrapolation=True).eval()
    cache = model.position_tables
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        misses = cache.misses
        model(torch.randn(1, 3, 64, 64))
        assert cache.misses == misses and cache.hits >= 4
        model(torch.randn(1, 3, 96, 64))
        assert cache.misses > misses


def test_clear_caches_drops_lazy_state_and_keeps_outputs():
    model = TransNeXt(**SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = model(x)
        grids = [m._grid_cache for m in model.modules() if hasattr(m, '_grid_cache')]
        assert len(model.position_tables) and grids and all(g is not None for g in grids)
        model.clear_caches()
        assert len(model.position_tables) == 0
        assert all(m._grid_cache is None for m in model.modules() if hasattr(m, '_grid_cache'))
        again = model(x)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_position_cache_is_bounded():
    model = TransNeXt(**SMALL, is_extrapolation=True, position_cache_size=6).eval()
    with torch.no_grad():
        for side in range(32, 128, 8):
            model(torch.randn(1, 3, side, side))
    assert len(model.position_tables) == 6


def test_interpolation_mode_builds_one_table_per_stage():
    model = TransNeXt(**SMALL).eval()
    with torch.no_grad():
        for side in (32, 64, 96):
            model(torch.randn(1, 3, side, side))
    tables = [key for key in model.position_tables.keys() if key[0] == 'table']
    assert len(tables) == model.num_stages
