"""Every config of configs/classification builds, through mmpretrain's registry, the official
classifier: its parameter count and the official recipe's settings."""
import glob
import os.path as osp

import pytest
import torch

pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402

from classification_helpers import CONFIGS, build_classifier  # noqa: E402
from model_index import indexed_parameters  # noqa: E402

#: Parameters of the official ImageNet classifiers (1000-class head): TransNeXt as its README
#: rounds them (12.8 / 28.2 / 49.7 / 89.7 M, A-A-A-A 13.1 M), TransXNet exactly as the official
#: model code builds them (shared/reference/transxnet.md §6).
PARAMETERS = {
    'transnext-micro_8xb128_in1k': 12.8e6,
    'transnext-tiny_8xb128_in1k': 28.2e6,
    'transnext-small_8xb128_in1k': 49.7e6,
    'transnext-base_8xb128_in1k': 89.7e6,
    'transnext-small_8xb128_in1k-384px': 49.7e6,
    'transnext-base_8xb128_in1k-384px': 89.7e6,
    'transnext-micro-aaaa_8xb128_in1k-256px': 13.1e6,
    'transxnet-tiny_8xb128_in1k': 12_834_808,
    'transxnet-small_8xb128_in1k': 26_864_068,
    'transxnet-base_8xb128_in1k': 48_009_002,
}


def test_every_config_is_listed():
    found = {osp.basename(p)[:-3] for p in glob.glob(osp.join(CONFIGS, '*.py'))}
    assert found == set(PARAMETERS)


@pytest.fixture
def no_weight_init(monkeypatch):
    """Skip the random initialisation (most of the build time; counts do not depend on it)."""
    from mmtransnext.models.backbones import transnext, transxnet
    for module in (transnext, transxnet):
        monkeypatch.setattr(module, 'trunc_normal_', lambda tensor, **kwargs: tensor)
    monkeypatch.setattr(torch.nn.init, 'normal_', lambda tensor, *args, **kwargs: tensor)


@pytest.mark.parametrize('name', sorted(PARAMETERS))
def test_config_builds_the_official_parameter_count(name, no_weight_init):
    model = build_classifier(name)
    count = sum(p.numel() for p in model.parameters())
    expected = PARAMETERS[name]
    if isinstance(expected, int):
        assert count == expected
    else:  # the README's rounding (TransNeXt-Tiny: 28,258,960 is given as 28.2M)
        assert abs(count - expected) < 0.07e6, count
    assert count == indexed_parameters(f'classification/{name}.py')  # the model index's
    assert type(model).__name__ == 'OfficialImageClassifier'
    assert model.head.fc.out_features == 1000


def _scheduled_lrs(cfg, epochs):
    from mmengine.optim.scheduler import LinearLR, CosineAnnealingLR, ConstantLR
    kinds = dict(LinearLR=LinearLR, CosineAnnealingLR=CosineAnnealingLR, ConstantLR=ConstantLR)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                                lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [kinds[s['type']](optimizer, **{k: v for k, v in s.items() if k != 'type'})
                  for s in cfg.param_scheduler]
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return lrs


@pytest.mark.parametrize('name, base_lr, epochs', [
    ('transnext-tiny_8xb128_in1k', 1e-3, 300), ('transxnet-tiny_8xb128_in1k', 2e-3, 310)])
def test_schedule_follows_timm_warmup_and_cosine(name, base_lr, epochs):
    cfg = Config.fromfile(osp.join(CONFIGS, name + '.py'))
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.auto_scale_lr.base_batch_size == 1024
    lrs = _scheduled_lrs(cfg, epochs)
    # timm: warm-up from 1e-6 linearly per epoch over 5 epochs
    for epoch in range(5):
        assert lrs[epoch] == pytest.approx(1e-6 + epoch * (base_lr - 1e-6) / 5, rel=1e-6)
    assert lrs[5] == pytest.approx(base_lr)
    assert lrs[150] == pytest.approx(1e-5 + (base_lr - 1e-5) * 0.5, rel=0.03)
    assert lrs[299] == pytest.approx(1e-5, rel=0.01)
    assert all(lr == pytest.approx(1e-5) for lr in lrs[300:])  # TransXNet's cool-down


def test_no_weight_decay_follows_the_official_filters():
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(osp.join(CONFIGS, 'transnext-micro_8xb128_in1k.py'))
    model = build_classifier('transnext-micro_8xb128_in1k',
                             arch=dict(embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8],
                                       depths=[1, 1, 1, 1]))
    cfg.optim_wrapper.type = 'OptimWrapper'
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            decay[names[id(p)]] = group['weight_decay']
    keywords = ('query_embedding', 'relative_pos_bias_local', 'cpb', 'temperature')
    for name, p in model.named_parameters():
        # optimizer.py of the official release
        official = not (p.dim() == 1 or name.endswith('.bias') or
                        any(k in name for k in keywords))
        assert decay[name] == (0.05 if official else 0.), name
