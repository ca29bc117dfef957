"""A runner checkpoint this stack just wrote (demo configs, a short tools/train.py run) loads in
every entry point a user reaches for, with no trust switch: mmdet's init_detector and
DetInferencer, mmseg's init_model and MMSegInferencer (inside ``mmengine_loader()``, the opt-in
for API users: mmengine's own reader refuses runner checkpoints on torch >= 2.6), load_from
(the tools' runner) and init_cfg=Pretrained (the backbone's own reader).
(--resume, and that it is exact: test_train_test.py::test_resume_continues_with_the_saved_state.)
"""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

pytestmark = pytest.mark.slow

SHALLOW_BACKBONE = {'model.backbone.depths': [1, 1, 1, 1]}


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)


@pytest.fixture
def _package_reader():
    """What an API user opts in to (:func:`mmtransnext.checkpoint.mmengine_loader`)."""
    from mmtransnext.checkpoint import mmengine_loader
    with mmengine_loader():
        yield


def _saved_weights(path: str) -> dict:
    """The oracle: torch's own full unpickler (the file was written by this test run)."""
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


def _assert_loaded(model: torch.nn.Module, path: str) -> None:
    saved = _saved_weights(path)
    own = model.state_dict()
    assert own.keys() == saved.keys()
    differ = [k for k, v in own.items() if not torch.equal(v.cpu(), saved[k])]
    assert not differ, f'{len(differ)} tensors differ from the checkpoint, e.g. {differ[:3]}'


def _config(run) -> Config:
    cfg = Config.fromfile(run.config)
    cfg.merge_from_dict(SHALLOW_BACKBONE)
    return cfg


def _image(run) -> str:
    data_root = next(o.split('=', 1)[1] for o in run.options
                     if o.startswith('train_dataloader.dataset.data_root='))
    return sorted(glob.glob(osp.join(data_root, '**', '*.jpg'), recursive=True))[0]


def test_mmdet_init_detector(mask_rcnn_run, _package_reader):
    from mmdet.apis import inference_detector, init_detector
    checkpoint = mask_rcnn_run.checkpoint(4)
    model = init_detector(_config(mask_rcnn_run), checkpoint, device='cpu')
    _assert_loaded(model, checkpoint)
    assert model.dataset_meta['classes'] == ('square', 'circle', 'triangle')
    result = inference_detector(model, _image(mask_rcnn_run))
    assert len(result.pred_instances) > 0


def test_mmdet_det_inferencer(mask_rcnn_run, _package_reader):
    from mmdet.apis import DetInferencer
    checkpoint = mask_rcnn_run.checkpoint(4)
    inferencer = DetInferencer(model=_config(mask_rcnn_run), weights=checkpoint, device='cpu',
                               show_progress=False)
    _assert_loaded(inferencer.model, checkpoint)
    predictions = inferencer(_image(mask_rcnn_run), no_save_vis=True)['predictions']
    assert len(predictions) == 1 and 'bboxes' in predictions[0]


def test_mmseg_init_model(upernet_run, _package_reader):
    from mmseg.apis import inference_model, init_model
    checkpoint = upernet_run.checkpoint(2)
    model = init_model(_config(upernet_run), checkpoint, device='cpu')
    _assert_loaded(model, checkpoint)
    result = inference_model(model, _image(upernet_run))
    assert result.pred_sem_seg.data.shape[-2:] == (128, 128)


def test_mmseg_inferencer(upernet_run, _package_reader):
    from mmseg.apis import MMSegInferencer
    checkpoint = upernet_run.checkpoint(2)
    inferencer = MMSegInferencer(model=_config(upernet_run), weights=checkpoint, device='cpu')
    _assert_loaded(inferencer.model, checkpoint)
    predictions = inferencer(_image(upernet_run), show=False)['predictions']
    assert np.asarray(predictions).shape == (128, 128)


def test_load_from(mask_rcnn_run, tmp_path):
    from mmtransnext.cli import build_runner
    from tool_helpers import load_tool
    train_tool = load_tool('train')
    args = train_tool.parse_args([mask_rcnn_run.config, '--work-dir', str(tmp_path / 'work'),
                                  '--cfg-options', *mask_rcnn_run.options,
                                  f'load_from={mask_rcnn_run.checkpoint(2)}'])
    cfg, _ = train_tool.setup_train_config(args)
    runner = build_runner(cfg)
    runner.call_hook('before_run')  # as Runner.train does first: the tools' checkpoint reader
    runner.load_or_resume()
    runner.call_hook('after_run')
    _assert_loaded(runner.model, mask_rcnn_run.checkpoint(2))
    assert runner.iter == 0  # load_from takes the weights only, not the training state


def test_pretrained_backbone_from_a_detector_checkpoint(mask_rcnn_run):
    from mmtransnext.models import TransNeXt
    checkpoint = mask_rcnn_run.checkpoint(4)
    backbone = TransNeXt('micro', depths=[1, 1, 1, 1], img_size=128, pretrain_size=128,
                         init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    backbone.init_weights()
    saved = _saved_weights(checkpoint)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, saved[f'backbone.{key}']), key
