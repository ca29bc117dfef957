"""tools/train.py and tools/test.py end to end on the generated data, for each config family of
both backbones (a few iterations of the demo configs with a 1-block-per-stage backbone),
resuming, and a 2-process (gloo) run through tools/dist_train.sh / dist_test.sh."""
import copy
import glob
import math
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from tool_helpers import (MASK_RCNN_DEMO, NO_VAL, ROOT, SHALLOW, UPERNET_DEMO, ade_options,
                          coco_options, load_tool, run_tool)

pytestmark = pytest.mark.slow

DEMO = osp.join(ROOT, 'configs', 'demo')
FAMILIES = {
    'mask_rcnn': (MASK_RCNN_DEMO, coco_options, ('coco/bbox_mAP', 'coco/segm_mAP')),
    'dino': (osp.join(DEMO, 'dino-4scale_transnext-micro_shapes-128.py'), coco_options,
             ('coco/bbox_mAP', )),
    'upernet': (UPERNET_DEMO, ade_options, ('mIoU', 'aAcc')),
    'mask2former': (osp.join(DEMO, 'mask2former_transnext-micro_shapes-128.py'), ade_options,
                    ('mIoU', 'aAcc')),
    # TransXNet (Tiny with one block per stage)
    'mask_rcnn_transxnet': (osp.join(DEMO, 'mask-rcnn_transxnet-tiny_fpn_shapes-128.py'),
                            coco_options, ('coco/bbox_mAP', 'coco/segm_mAP')),
    'retinanet_transxnet': (osp.join(DEMO, 'retinanet_transxnet-tiny_fpn_shapes-128.py'),
                            coco_options, ('coco/bbox_mAP', )),
    'sem_fpn_transxnet': (osp.join(DEMO, 'fpn_transxnet-tiny_shapes-128.py'), ade_options,
                          ('mIoU', 'aAcc')),
}
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')


def _metrics(log: str, phase: str) -> dict:
    """Metrics of the last ``Iter(<phase>)`` summary line of an mmengine log."""
    lines = [line for line in log.splitlines() if f'Iter({phase})' in line and 'time' in line]
    assert lines, f'no Iter({phase}) line in the log'
    return {k: float(v) for k, v in re.findall(r'(\S+): (-?[\d.]+(?:e-?\d+)?)', lines[-1])}


def _train_options(data_dir, options, iters=2, extra=()):
    return ['--cfg-options', *SHALLOW, *options(data_dir), f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters}', f'default_hooks.checkpoint.interval={iters}',
            'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2',
            'val_dataloader.dataset.indices=3', *extra]


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_train_then_test(family, data_dir, tmp_path):
    config, options, keys = FAMILIES[family]
    work_dir = str(tmp_path / 'work')
    result = run_tool([TRAIN, config, '--work-dir', work_dir,
                       *_train_options(data_dir, options)], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train_log = result.stdout + result.stderr
    losses = [_metrics(line, 'train')['loss'] for line in train_log.splitlines()
              if 'Iter(train)' in line]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert all(k in _metrics(train_log, 'val') for k in keys)
    checkpoint = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(checkpoint)

    show_dir = str(tmp_path / 'vis')
    result = run_tool([TEST, config, checkpoint, '--work-dir', work_dir, '--show-dir', show_dir,
                       '--cfg-options', *SHALLOW, *options(data_dir),
                       'test_dataloader.dataset.indices=2'], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = _metrics(result.stdout + result.stderr, 'test')
    assert all(k in metrics and math.isfinite(metrics[k]) for k in keys)
    rendered = glob.glob(osp.join(show_dir, '**', '*.*g'), recursive=True)
    assert len(rendered) == 2


def test_multi_scale_flip_test(data_dir, tmp_path):
    """--tta with the UperNet recipe's ms+flip protocol (scaled to the 128 px demo)."""
    config, options, _ = FAMILIES['upernet']
    work_dir = str(tmp_path / 'work')
    result = run_tool([TRAIN, config, '--work-dir', work_dir,
                       *_train_options(data_dir, options, iters=1, extra=NO_VAL)],
                      cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_tool([TEST, config, osp.join(work_dir, 'iter_1.pth'), '--work-dir', work_dir,
                       '--tta', '--cfg-options', *SHALLOW, *options(data_dir),
                       'test_dataloader.dataset.indices=2'], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'mIoU' in _metrics(result.stdout + result.stderr, 'test')


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, HistoryBuffer):
        return isinstance(b, HistoryBuffer) and _same(vars(a), vars(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_continues_with_the_saved_state(mask_rcnn_run, tmp_path, monkeypatch):
    """--resume restores iteration, optimizer, lr schedule and message hub exactly, from a file
    read without any trust switch (the restricted unpickler)."""
    from mmengine.hooks import Hook
    from mmtransnext.checkpoint import read_checkpoint
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    straight_lr = {int(m.group(1)): float(m.group(2)) for m in re.finditer(
        r'Iter\(train\) \[(\d)/4\]\s+base_lr: \S+ lr: (\S+)', mask_rcnn_run.log)}
    saved = read_checkpoint(mask_rcnn_run.checkpoint(2))

    class Capture(Hook):
        def before_train(self, runner) -> None:
            self.iter = runner.iter
            self.optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())
            self.lr = runner.optim_wrapper.get_lr()['lr'][0]
            self.hub = copy.deepcopy(runner.message_hub.state_dict())

    train_tool = load_tool('train')
    args = train_tool.parse_args([MASK_RCNN_DEMO, '--work-dir', str(tmp_path / 'resumed'),
                                  '--resume', mask_rcnn_run.checkpoint(2),
                                  '--cfg-options', *mask_rcnn_run.options])
    cfg, _ = train_tool.setup_train_config(args)
    from mmtransnext.cli import build_runner
    runner = build_runner(cfg)
    capture = Capture()
    runner.register_hook(capture)
    runner.train()
    assert capture.iter == 2 == saved['meta']['iter']
    assert _same(capture.optimizer, saved['optimizer'])
    assert capture.optimizer['state'], 'the optimizer state is empty'
    # the message hub's loss histories (HistoryBuffer: numpy arrays) come back as saved
    scalars = saved['message_hub']['log_scalars']
    assert 'train/loss' in scalars and len(scalars['train/loss'].data[0]) == 2
    assert _same(capture.hub['log_scalars'], scalars)
    # the lr of the 3rd iteration (the log prints 5 digits)
    assert capture.lr == pytest.approx(straight_lr[3], rel=1e-4)
    assert runner.iter == 4
    resumed_log = open(glob.glob(str(tmp_path / 'resumed' / '*' / '*.log'))[0]).read()
    assert re.search(r'Iter\(train\) \[3/4\]', resumed_log)
    assert not re.search(r'Iter\(train\) \[[12]/4\]', resumed_log)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_with_gloo(data_dir, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()),
               PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    work_dir = str(tmp_path / 'work')
    options = [*SHALLOW, *coco_options(data_dir), 'train_cfg.max_iters=2', *NO_VAL,
               'default_hooks.checkpoint.interval=2',
               'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2']
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), MASK_RCNN_DEMO,
                             '2', '--work-dir', work_dir, '--cfg-options', *options],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert re.search(r'Distributed training: True', log)
    assert re.search(r'no CUDA: distributed backend gloo', log) or torch.cuda.is_available()
    assert 'Iter(train) [2/2]' in log
    checkpoint = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(checkpoint)

    env['PORT'] = str(_free_port())
    result = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), MASK_RCNN_DEMO,
                             checkpoint, '2', '--work-dir', work_dir, '--cfg-options', *SHALLOW,
                             *coco_options(data_dir), 'test_dataloader.dataset.indices=4'],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # 4 images over 2 processes: each runs 2 test iterations, the metric gathers all 4
    assert 'Iter(test) [2/2]' in log
    assert 'coco/bbox_mAP' in _metrics(log, 'test')


USER_CONFIG = '''
# A config of a user's own project: mmdet's Mask R-CNN with mmtransnext's backbone.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmtransnext', 'mmtransnext.datasets'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='TransNeXt', arch='micro', depths=[1, 1, 1, 1],
                  img_size=128),
    neck=dict(in_channels=[48, 96, 192, 384]),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))
data = dict(type='ShapesCocoDataset', data_root='{root}', test_mode=False,
            ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'))
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                        dataset=dict(_delete_=True, **data, pipeline=[
                            dict(type='LoadImageFromFile'),
                            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                            dict(type='PackDetInputs')]))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1, val_interval=100)
val_cfg = None
val_dataloader = None
val_evaluator = None
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1))
'''


def test_tools_run_a_config_from_another_project(data_dir, tmp_path):
    project = tmp_path / 'my_project'
    project.mkdir()
    (project / 'my_config.py').write_text(
        USER_CONFIG.replace('{root}', osp.join(data_dir, 'shapes_coco') + '/'))
    result = run_tool([TRAIN, 'my_config.py'], cwd=str(project))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / 'work_dirs' / 'my_config' / 'iter_1.pth').is_file()
