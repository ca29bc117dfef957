import pytest
import torch
from mmengine.config import Config


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_from_config_through_registry(scope):
    registry = pytest.importorskip(f'{scope}.registry')
    cfg = Config(dict(
        custom_imports=dict(imports=['mmtransnext'], allow_failed_imports=False),
        backbone=dict(type='TransNeXt', arch='micro', depths=[1, 1, 1, 1], img_size=128,
                      out_indices=(1, 2, 3))))
    model = registry.MODELS.build(cfg.backbone)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [96, 192, 384]


def test_unknown_key_names_the_key():
    from mmdet.registry import MODELS
    with pytest.raises(TypeError, match='colour'):
        MODELS.build(dict(type='TransNeXt', arch='micro', colour='red'))
