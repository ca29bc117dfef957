import pytest
import torch
from torch import nn

from mmtransnext.models import TransXNet
from mmtransnext.models.backbones import transxnet
from mmtransnext.models.layers import transxnet_layers
from reference import perturb_
from reference_transxnet import reference_transxnet

# Backbone parameter counts of the official detection/segmentation TransXNet (fork_feat, with the
# four output GroupNorms), measured by building the official code (shared/reference §6).
OFFICIAL_PARAMS = {'tiny': 12_386_544, 'small': 26_352_092, 'base': 47_337_130}
SMALL = dict(arch='tiny', depths=[1, 1, 2, 1])


def _perturbed(model: TransXNet) -> TransXNet:
    """Parameters and BatchNorm statistics off their init, position tables far from zero."""
    perturb_(model, std=0.05)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('running_var'):
                t.copy_(torch.rand_like(t) * 0.5 + 0.75)
            elif name.endswith('running_mean'):
                t.copy_(torch.randn_like(t) * 0.1)
            elif name.startswith('relative_pos_enc') or 'layer_scale' in name:
                t.copy_(torch.randn_like(t) * 0.3)
    return model


@pytest.mark.parametrize('arch', sorted(OFFICIAL_PARAMS))
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_official_parameter_count(arch):
    model = TransXNet(arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[arch]


def test_official_short_names():
    for short, name in (('t', 'tiny'), ('s', 'small'), ('b', 'base'), ('B', 'base')):
        assert transxnet.resolve_arch(short) == transxnet.resolve_arch(name)
    assert TransXNet('b', depths=[1, 1, 1, 1]).embed_dims == [76, 152, 336, 672]


def _assert_matches_oracle(model: TransXNet, x: torch.Tensor) -> None:
    with torch.no_grad():
        outs = model(x)
        expected = reference_transxnet(model.state_dict(), x, model.depths, model.num_heads,
                                       model.arch_settings['num_groups'])
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size', [(56, 56), (224 // 4 * 4, 224), (75, 101), (33, 47), (1, 1)])
def test_matches_the_official_computation(size):
    """Against the functional oracle: tables used as is (56x56 input: the 224-size grids of
    pretrain_size 56) and resized bicubically (other sizes), BatchNorm in eval mode."""
    model = _perturbed(TransXNet(**SMALL, pretrain_size=56)).eval()
    _assert_matches_oracle(model, torch.randn(2, 3, *size))


def test_attention_in_query_chunks_matches_the_official_computation(monkeypatch):
    monkeypatch.setattr(transxnet_layers, 'CHUNK_ELEMENTS', 1000)  # ragged chunks everywhere
    _assert_matches_oracle(_perturbed(TransXNet(**SMALL)).eval(), torch.randn(2, 3, 75, 101))


def test_output_norms_only_for_out_indices_and_feature_info_names_them():
    model = TransXNet(**SMALL, out_indices=(1, 3))
    assert hasattr(model, 'norm2') and hasattr(model, 'norm6') and not hasattr(model, 'norm0')
    # the output norm where there is one, else the stage's blocks
    assert [f['module'] for f in model.feature_info] == ['network.0', 'norm2', 'network.4',
                                                         'norm6']


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_resized_tables_are_cached_without_grad_only_and_bounded():
    model = TransXNet(**SMALL, position_cache_size=6).eval()
    cache = model.position_tables
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = model(x)
        assert cache.misses == 4 and len(cache) == 4
        again = model(x)
        assert cache.misses == 4 and cache.hits == 4
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # An in-place update of a table is seen at once (the version is part of the key).
    with torch.no_grad():
        model.relative_pos_enc[0].add_(torch.randn_like(model.relative_pos_enc[0]))
        changed = model(x)
    assert not torch.equal(changed[0], first[0])
    # With gradients nothing is cached: the resized table stays in the graph.
    misses, size = cache.misses, len(cache)
    model(x)[0].square().sum().backward()
    assert cache.misses == misses and len(cache) == size
    assert model.relative_pos_enc[0].grad.abs().sum() > 0
    with torch.no_grad():
        for side in range(40, 120, 8):
            model(torch.randn(1, 3, side, side))
    assert len(cache) == 6
    model.clear_caches()
    assert len(cache) == 0


def test_table_is_resized_once_per_stage_and_forward(monkeypatch):
    calls = []
    real = transxnet.F.interpolate

    def counting(*args, **kwargs):
        calls.append(kwargs.get('mode'))
        return real(*args, **kwargs)

    monkeypatch.setattr(transxnet.F, 'interpolate', counting)
    model = TransXNet('tiny').train()  # 3, 3, 9, 3 blocks
    model(torch.randn(2, 3, 64, 96))
    assert calls == ['bicubic'] * 4


def test_sync_bn_is_chosen_by_config_only():
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in TransXNet(**SMALL).modules())
    model = TransXNet(**SMALL, norm_cfg=dict(type='SyncBN'))
    syncs = [n for n, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    assert 'patch_embed.proj.bn' in syncs and 'network.0.0.mlp.norm' in syncs
    assert set(model.state_dict()) == set(TransXNet(**SMALL).state_dict())


def test_single_image_training_batch_is_refused_clearly():
    with pytest.raises(ValueError, match='batch of at least 2'):
        TransXNet(**SMALL).train()(torch.randn(1, 3, 32, 32))
    TransXNet(**SMALL, norm_eval=True).train()(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), 'unknown TransXNet arch'),
    (dict(arch=dict(depths=[1] * 4, embed_dims=[48] * 4, num_heads=[1] * 4,
                    num_groups=[2] * 4, colour=[1])), 'colour'),
    (dict(arch=dict(depths=[1] * 4, embed_dims=[48] * 4)), 'lacks'),
    (dict(depths=[1, 1, 1]), 'one value per stage'),
    (dict(arch=dict(depths=[1] * 3, embed_dims=[48] * 3, num_heads=[1] * 3, num_groups=[2] * 3,
                    sr_ratios=[4, 2, 1], mlp_ratios=[4] * 3)), '4 stages'),
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(num_heads=[5, 2, 4, 8]), 'divisible by num_heads'),
    (dict(num_groups=[1, 2, 2, 2]), 'num_groups'),
    (dict(embed_dims=[47, 96, 224, 448]), 'even'),
    (dict(sr_ratios=[0, 4, 2, 1]), 'sr_ratio'),
    (dict(pretrain_size=(224, 224, 3)), 'pretrain_size'),
    (dict(drop_path_rate=1.5), 'drop_path_rate'),
    (dict(norm_cfg=dict(type='LN')), 'norm_cfg'),
    (dict(position_cache_size=0), 'position_cache_size'),
])
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransXNet(**kwargs)
