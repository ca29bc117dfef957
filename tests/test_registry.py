import pytest
import torch
from mmengine.config import Config


BACKBONES = {
    'TransNeXt': (dict(arch='micro', depths=[1, 1, 1, 1], img_size=128), [96, 192, 384]),
    'TransXNet': (dict(arch='t', depths=[1, 1, 1, 1], norm_cfg=dict(type='SyncBN')),
                  [96, 224, 448]),
}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_build_from_config_through_registry(scope, backbone):
    registry = pytest.importorskip(f'{scope}.registry')
    kwargs, channels = BACKBONES[backbone]
    cfg = Config(dict(
        custom_imports=dict(imports=['mmtransnext'], allow_failed_imports=False),
        backbone=dict(type=backbone, out_indices=(1, 2, 3), **kwargs)))
    model = registry.MODELS.build(cfg.backbone).eval()
    assert type(model).__name__ == backbone
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == channels


def test_unknown_key_names_the_key():
    from mmdet.registry import MODELS
    with pytest.raises(TypeError, match='colour'):
        MODELS.build(dict(type='TransNeXt', arch='micro', colour='red'))
