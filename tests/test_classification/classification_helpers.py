"""Building the classification configs' models in the tests."""
import os.path as osp

from mmengine.config import Config

#: Small archs of both families (official-layout files of these are the conftest fixtures).
NUM_CLASSES = 1000
TRANSNEXT_ARCH = dict(embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8], depths=[1, 1, 1, 1])
TRANSXNET_ARCH = dict(embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8], depths=[1, 1, 1, 1],
                      num_groups=[2, 2, 2, 2])

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs',
                   'classification')


def build_classifier(config: str, **backbone):
    """The model of ``configs/classification/<config>.py`` built through mmpretrain's registry,
    with ``backbone`` overrides (and a head matching a changed width), in eval mode, batch
    augmentations dropped."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(osp.join(CONFIGS, config + '.py'))
    cfg.model.backbone.update(backbone)
    arch = backbone.get('arch')
    if isinstance(arch, dict):
        cfg.model.head.in_channels = arch['embed_dims'][-1]
    cfg.model.train_cfg = None
    return MODELS.build(cfg.model).eval()
