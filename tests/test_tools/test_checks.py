"""Tools check their inputs up front and name the file that is missing or wrong."""
import os.path as osp

import pytest
import torch
from tool_helpers import MASK_RCNN_DEMO, ROOT, coco_options, load_tool, run_tool

from mmtransnext.cli import ToolError

MASK_RCNN_TINY = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_transnext-tiny_fpn_1x_coco.py')
UPERNET_MS = osp.join(ROOT, 'configs', 'upernet',
                      'upernet_transnext-tiny_8xb2-160k_ade20k-512x512_ms.py')


@pytest.fixture(scope='module')
def train_tool():
    return load_tool('train')


@pytest.fixture(scope='module')
def test_tool():
    return load_tool('test')


def test_missing_config_is_one_line_on_stderr(tmp_path):
    result = run_tool([osp.join(ROOT, 'tools', 'train.py'), 'configs/no_such_config.py'],
                      cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: config file not found: configs/no_such_config.py')
    assert 'Traceback' not in result.stderr


def test_missing_dataset_files_are_listed(train_tool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ToolError) as err:
        train_tool.setup_train_config(train_tool.parse_args([MASK_RCNN_TINY]))
    message = str(err.value)
    assert 'train_dataloader.dataset.data_root: data/coco/' in message
    assert 'val_evaluator.ann_file: data/coco/annotations/instances_val2017.json' in message


def test_missing_pretrained_checkpoint_is_named(train_tool, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = osp.join(data_dir, 'shapes_coco') + '/'
    options = [f'train_dataloader.dataset.data_root={root}',
               'train_dataloader.dataset.ann_file=annotations/instances_train.json',
               'train_dataloader.dataset.data_prefix.img=train/',
               f'val_dataloader.dataset.data_root={root}',
               'val_dataloader.dataset.ann_file=annotations/instances_val.json',
               'val_dataloader.dataset.data_prefix.img=val/',
               f'val_evaluator.ann_file={root}annotations/instances_val.json',
               # the shipped configs name URLs: a local file that is not there
               'model.backbone.init_cfg.checkpoint=checkpoints/transnext_tiny_224_1k.pth']
    with pytest.raises(ToolError, match=r'model\.backbone\.init_cfg\.checkpoint of .*: checkpoint '
                       r'file not found: checkpoints/transnext_tiny_224_1k\.pth\n.*DaiShiResearch'):
        train_tool.setup_train_config(
            train_tool.parse_args([MASK_RCNN_TINY, '--cfg-options', *options]))
    # The hint names where each family's weights are published.
    xnet = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_transxnet-tiny_fpn_1x_coco.py')
    options[-1] = 'model.backbone.init_cfg.checkpoint=checkpoints/transx-t.pth.tar'
    with pytest.raises(ToolError, match=r'transx-t\.pth\.tar\n.*LMMMEng/TransXNet'):
        train_tool.setup_train_config(train_tool.parse_args([xnet, '--cfg-options', *options]))


def test_evaluation_config_refuses_to_train(train_tool):
    with pytest.raises(ToolError, match='evaluation config'):
        train_tool.setup_train_config(train_tool.parse_args([UPERNET_MS]))


def test_missing_resume_checkpoint_is_named(train_tool, data_dir):
    args = train_tool.parse_args([MASK_RCNN_DEMO, '--resume', '/nonexistent/iter_2.pth',
                                  '--cfg-options', *coco_options(data_dir)])
    with pytest.raises(ToolError, match='--resume checkpoint not found: /nonexistent/iter_2.pth'):
        train_tool.setup_train_config(args)


def test_generated_dataset_is_written_on_first_use(train_tool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = train_tool.setup_train_config(train_tool.parse_args([MASK_RCNN_DEMO]))
    root = tmp_path / 'data' / 'generated' / 'shapes_coco'
    assert (root / 'annotations' / 'instances_train.json').is_file()
    assert len(list((root / 'val').glob('*.jpg'))) == 50
    assert cfg.work_dir == osp.join('work_dirs', 'mask-rcnn_transnext-micro_fpn_shapes-128')


def test_no_cuda_falls_back_to_fp32_and_gloo(train_tool, data_dir):
    if torch.cuda.is_available():
        pytest.skip('the fallbacks apply without CUDA only')
    args = train_tool.parse_args([
        MASK_RCNN_DEMO, '--launcher', 'pytorch', '--cfg-options', *coco_options(data_dir),
        'optim_wrapper.type=AmpOptimWrapper', 'optim_wrapper.loss_scale=512.0'])
    cfg, notes = train_tool.setup_train_config(args)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
    assert len(notes) == 2


def _runner_checkpoint(path, state_dict):
    torch.save(dict(meta=dict(iter=1), state_dict=state_dict, message_hub=dict(x=1.5)), path)


@pytest.fixture(scope='module')
def demo_model():
    from mmtransnext.cli import load_config
    from mmengine.registry import MODELS
    return MODELS.build(load_config(MASK_RCNN_DEMO).model)


@pytest.mark.parametrize('damage,expected', [
    ('drop', r"1 of the model's \d+ tensors missing \[roi_head\.bbox_head\.fc_cls\.weight\]"),
    ('reshape', r'1 with another shape \(checkpoint vs model\) '
                r'\[roi_head\.bbox_head\.fc_cls\.weight: \(5, 256\) vs \(4, 256\)\]'),
    ('extra', r'1 unexpected \[backbone\.block5\.0\.attn\.q\.weight\]'),
])
def test_checkpoint_that_does_not_fit_is_named(demo_model, tmp_path, damage, expected):
    from mmtransnext.cli import check_checkpoint_fits
    state = demo_model.state_dict()
    key = 'roi_head.bbox_head.fc_cls.weight'
    if damage == 'drop':
        del state[key]
    elif damage == 'reshape':
        state[key] = torch.zeros(5, 256)
    else:
        state['backbone.block5.0.attn.q.weight'] = torch.zeros(1)
    path = str(tmp_path / 'model.pth')
    _runner_checkpoint(path, state)
    with pytest.raises(ToolError, match=rf'checkpoint {path} does not fit the model of this '
                       rf'config: {expected}'):
        check_checkpoint_fits(demo_model, path)


def test_checkpoint_that_fits_passes(demo_model, tmp_path):
    from mmtransnext.cli import check_checkpoint_fits
    path = str(tmp_path / 'model.pth')
    _runner_checkpoint(path, demo_model.state_dict())
    check_checkpoint_fits(demo_model, path)


def test_test_tool_checks_the_checkpoint_exists(test_tool, data_dir):
    args = test_tool.parse_args([MASK_RCNN_DEMO, '/nonexistent/model.pth', '--cfg-options',
                                 *coco_options(data_dir)])
    with pytest.raises(ToolError, match='checkpoint file not found: /nonexistent/model.pth'):
        test_tool.setup_test_config(args)
