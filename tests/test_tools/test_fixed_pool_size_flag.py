"""``--fixed-pool-size`` of tools/train.py and tools/test.py: switches a config's TransNeXt
backbone to linear inference mode, refuses other backbones."""
import os.path as osp

import pytest
from tool_helpers import MASK_RCNN_DEMO, ROOT, load_tool

from mmtransnext.cli import ToolError, load_config
from mmtransnext.models import TransNeXt

TRANSXNET = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_transxnet-tiny_fpn_1x_coco.py')


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_flag_sets_the_backbone_and_it_builds_in_linear_mode(tool):
    module = load_tool(tool)
    argv = [MASK_RCNN_DEMO] + (['ckpt.pth'] if tool == 'test' else []) + ['--fixed-pool-size',
                                                                        '3']
    cfg = load_config(MASK_RCNN_DEMO, {'model.backbone.depths': [1, 1, 1, 1]})
    module.apply_fixed_pool_size(cfg, module.parse_args(argv).fixed_pool_size, MASK_RCNN_DEMO)
    assert cfg.model.backbone.fixed_pool_size == 3
    if tool == 'train':
        backbone = TransNeXt(**{k: v for k, v in cfg.model.backbone.items() if k != 'type'})
        assert backbone.fixed_pool_size == 3


def test_without_the_flag_the_config_is_unchanged():
    module = load_tool('train')
    cfg = load_config(MASK_RCNN_DEMO)
    module.apply_fixed_pool_size(cfg, module.parse_args([MASK_RCNN_DEMO]).fixed_pool_size,
                                 MASK_RCNN_DEMO)
    assert 'fixed_pool_size' not in cfg.model.backbone


def test_flag_refuses_a_backbone_that_is_not_transnext():
    module = load_tool('test')
    cfg = load_config(TRANSXNET)
    with pytest.raises(ToolError, match='--fixed-pool-size: the backbone of .* is TransXNet'):
        module.apply_fixed_pool_size(cfg, 7, TRANSXNET)


@pytest.mark.parametrize('value', ['0', '-7', '7.5', 'seven'])
def test_flag_refuses_a_bad_value(capsys, value):
    with pytest.raises(SystemExit):
        load_tool('train').parse_args([MASK_RCNN_DEMO, '--fixed-pool-size', value])
    assert '--fixed-pool-size' in capsys.readouterr().err
