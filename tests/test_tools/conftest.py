import os.path as osp
from dataclasses import dataclass
from typing import List

import pytest
from tool_helpers import (MASK_RCNN_DEMO, NO_VAL, SHALLOW, TOOLS, UPERNET_DEMO, ade_options,
                          coco_options, run_tool)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
    """A directory holding both generated sets (as data/generated/ holds them)."""
    from mmtransnext.datasets import ensure_shapes_ade, ensure_shapes_coco
    root = str(tmp_path_factory.mktemp('generated'))
    ensure_shapes_coco(osp.join(root, 'shapes_coco'))
    ensure_shapes_ade(osp.join(root, 'shapes_ade'))
    return root


@dataclass
class TrainedRun:
    """A short tools/train.py run of a demo config: what it was given and what it wrote."""
    config: str
    options: List[str]  # --cfg-options
    work_dir: str
    log: str

    def checkpoint(self, iteration: int) -> str:
        return osp.join(self.work_dir, f'iter_{iteration}.pth')


def _train(config: str, options: List[str], work_dir: str) -> TrainedRun:
    result = run_tool([osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir,
                       '--cfg-options', *options], cwd=osp.dirname(work_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return TrainedRun(config, options, work_dir, result.stdout + result.stderr)


@pytest.fixture(scope='session')
def mask_rcnn_run(data_dir, tmp_path_factory) -> TrainedRun:
    """The demo Mask R-CNN (1-block backbone) trained 4 iterations; checkpoints at 2 and 4."""
    options = [*SHALLOW, *coco_options(data_dir), 'train_cfg.max_iters=4', *NO_VAL,
               'default_hooks.checkpoint.interval=2', 'default_hooks.checkpoint.max_keep_ckpts=3',
               'default_hooks.logger.interval=1', 'train_dataloader.batch_size=2']
    return _train(MASK_RCNN_DEMO, options, str(tmp_path_factory.mktemp('mask_rcnn') / 'work'))


@pytest.fixture(scope='session')
def upernet_run(data_dir, tmp_path_factory) -> TrainedRun:
    """The demo UperNet (1-block backbone) trained 2 iterations; checkpoint at 2."""
    options = [*SHALLOW, *ade_options(data_dir), 'train_cfg.max_iters=2', *NO_VAL,
               'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
               'train_dataloader.batch_size=2']
    return _train(UPERNET_DEMO, options, str(tmp_path_factory.mktemp('upernet') / 'work'))
