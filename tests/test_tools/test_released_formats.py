"""The official COCO / ADE20K files evaluate here as released: a file in the layout and ``meta`` of
the stack it came from (mmdet 2.28 / mmseg 0.30 on the mmcv 1.x runner, mmdet 3.0 / mmseg 1.0 on
mmengine; see released_files.py), written from a demo model's weights under the official file's
name, goes through ``tools/test.py CONFIG URL`` (served on loopback) and mmdet's
``init_detector`` / ``DetInferencer`` or mmseg's ``init_model`` (local file) with no conversion
and no trust switch: every tensor loads (strictly) with the value written, and the class names
of its ``meta`` become the model's ``dataset_meta``.

The state-dict keys of the heads, necks and detectors of those stacks equal mmdet 3.3's / mmseg
1.2's (compared in their sources: FPN, RPNHead, StandardRoIHead and its bbox / mask heads,
RetinaHead, UperHead, FPNHead, FCNHead, DINO and Mask2Former, mmcv 2.0 -> 2.1 attention), and the
backbones' keys and shapes equal those of the official detection backbone classes (TransNeXt
``transnext_*``, TransXNet ``transxnet_*`` with ``fork_feat``, built from the official
repositories for that comparison), so the files here keep this package's keys; what differs is
the envelope around them.
"""
import copy
import glob
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from loopback_http import serve
from released_files import perturbed_state, write_mmcv1_file, write_mmengine_file
from tool_helpers import ROOT, SHALLOW, TOOLS, ade_options, coco_options, run_tool

from mmtransnext.checkpoint import mmengine_loader

DEMO = osp.join(ROOT, 'configs', 'demo')
COCO_CLASSES = ('square', 'circle', 'triangle')


@dataclass(frozen=True)
class Stack:
    """One released model family: the demo config standing in for its official config, and how
    its file is written."""
    config: str
    task: str  # 'det' or 'seg'
    write: Callable[[str, Dict[str, torch.Tensor], Config], dict]
    released_as: str  # the official file's name (its URL's last part)


def _mmdet2(published: bool = False, fp16: bool = False, apex_amp: bool = False):
    def write(path, state, cfg):
        return write_mmcv1_file(path, state, 'mmdet', COCO_CLASSES, cfg.pretty_text,
                                published=published, fp16=fp16, apex_amp=apex_amp)
    return write


def _mmseg0(published: bool = False, save_best: bool = False):
    def write(path, state, cfg):
        from mmtransnext.datasets.shapes_ade import ShapesADEDataset
        meta = ShapesADEDataset.METAINFO
        return write_mmcv1_file(path, state, 'mmseg', meta['classes'], cfg.pretty_text,
                                meta['palette'], published=published, save_best=save_best)
    return write


def _mmengine(dataset_class: str):
    def write(path, state, cfg):
        import mmtransnext.datasets as datasets
        dataset_meta = dict(getattr(datasets, dataset_class).METAINFO)
        return write_mmengine_file(path, state, dataset_meta, cfg.pretty_text)
    return write


STACKS = {
    # mmdet 2.28, written by the runner (optimizer kept), TransNeXt-Base's fp16 loss-scaler meta
    # and the apex runner's ``amp`` entry: everything such a file can hold at once
    'transnext-mask-rcnn-mmdet2.28': Stack(
        'mask-rcnn_transnext-micro_fpn_shapes-128.py', 'det',
        _mmdet2(fp16=True, apex_amp=True), 'mask_rcnn_transnext_tiny_fpn_1x_coco_in1k.pth'),
    # mmdet 2.28, through mmdet's publish_model.py (no optimizer, legacy serialization)
    'transxnet-mask-rcnn-mmdet2.28': Stack(
        'mask-rcnn_transxnet-tiny_fpn_shapes-128.py', 'det', _mmdet2(published=True),
        'maskrcnn_tiny.pth'),
    'transxnet-retinanet-mmdet2.28': Stack(
        'retinanet_transxnet-tiny_fpn_shapes-128.py', 'det', _mmdet2(published=True),
        'retinanet_tiny.pth'),
    'transnext-upernet-mmseg0.30': Stack(
        'upernet_transnext-micro_shapes-128.py', 'seg', _mmseg0(),
        'upernet_transnext_tiny_512x512_160k_ade20k_in1k.pth'),
    # published, evaluated with save_best: a numpy float64 in meta.hook_msgs
    'transxnet-sem-fpn-mmseg0.30': Stack(
        'fpn_transxnet-tiny_shapes-128.py', 'seg', _mmseg0(published=True, save_best=True),
        'sfpn_transxnet_tiny.pth'),
    'transnext-dino-mmdet3.0': Stack(
        'dino-4scale_transnext-micro_shapes-128.py', 'det', _mmengine('ShapesCocoDataset'),
        'dino_4scale_transnext_tiny_12e_in1k.pth'),
    'transnext-mask2former-mmseg1.0': Stack(
        'mask2former_transnext-micro_shapes-128.py', 'seg', _mmengine('ShapesADEDataset'),
        'mask2former_transnext_tiny_512x512_160k_ade20k_in1k.pth'),
}


DETECTION = sorted(name for name, stack in STACKS.items() if stack.task == 'det')


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    monkeypatch.delenv('MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS', raising=False)


@dataclass
class Released:
    """A released-format file of one stack and what was written into it."""
    stack: Stack
    cfg: Config
    path: str
    saved: dict


@pytest.fixture(scope='module', params=sorted(STACKS))
def released(request, tmp_path_factory) -> Released:
    from mmengine.registry import DefaultScope, MODELS
    from mmengine.utils import import_modules_from_strings
    stack = STACKS[request.param]
    cfg = Config.fromfile(osp.join(DEMO, stack.config))
    cfg.merge_from_dict({'model.backbone.depths': [1, 1, 1, 1]})
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(copy.deepcopy(cfg.model))  # DINO edits its config in place
    # DINO's ``level_embed`` is ``torch.Tensor(...)``: memory as found until ``init_weights``
    torch.manual_seed(0)
    model.init_weights()
    path = str(tmp_path_factory.mktemp(request.param) / stack.released_as)
    saved = stack.write(path, perturbed_state(model), cfg)
    _check_envelope(saved, path)
    return Released(stack, cfg, path, saved)


def _check_envelope(saved: dict, path: str) -> None:
    """The writers' own check: the old envelopes really are what the tests read (the mmcv 1.x
    stacks' config text and ``CLASSES``, mmseg 0.30's numpy ``best_score``, mmdet 2.28's
    published files in the legacy serialization; mmengine's message hub)."""
    import zipfile
    meta = saved['meta']
    if 'CLASSES' in meta:
        assert isinstance(meta['CLASSES'], tuple) and isinstance(meta['config'], str)
        if 'best_score' in meta['hook_msgs']:
            assert isinstance(meta['hook_msgs']['best_score'], np.floating)
        published_by_mmdet = 'PALETTE' not in meta and 'optimizer' not in saved
        assert zipfile.is_zipfile(path) != published_by_mmdet
    else:
        assert isinstance(meta['cfg'], str) and 'message_hub' in saved


def _assert_holds_the_file(model: torch.nn.Module, released: Released) -> None:
    """Strict: the same keys as the file, every tensor equal to the one written."""
    written = released.saved['state_dict']
    own = model.state_dict()
    assert own.keys() == written.keys()
    differ = [k for k, v in own.items() if not torch.equal(v.cpu(), written[k])]
    assert not differ, f'{len(differ)} tensors differ from the file, e.g. {differ[:3]}'


def _image(data_dir: str, task: str) -> str:
    folder = 'shapes_coco' if task == 'det' else 'shapes_ade'
    return sorted(glob.glob(osp.join(data_dir, folder, '**', '*.jpg'), recursive=True))[0]


def _classes_in_meta(saved: dict) -> tuple:
    meta = saved['meta']
    return tuple(meta['dataset_meta']['classes'] if 'dataset_meta' in meta else meta['CLASSES'])


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_init_api_loads_the_file_and_its_classes(released):
    """mmdet's init_detector / mmseg's init_model: every weight, and the classes of the file's
    meta (``CLASSES`` of the mmcv 1.x stacks, ``dataset_meta`` of mmengine's), read through
    the package's reader as docs/usage.md tells users (``mmengine_loader``): the runner files'
    ``HistoryBuffer`` and numpy meta need it on torch >= 2.6."""
    if released.stack.task == 'det':
        from mmdet.apis import init_detector
        with mmengine_loader():
            model = init_detector(copy.deepcopy(released.cfg), released.path, device='cpu')
    else:
        from mmseg.apis import init_model
        with mmengine_loader():
            model = init_model(copy.deepcopy(released.cfg), released.path, device='cpu')
        assert [list(c) for c in model.dataset_meta['palette']] == \
            [list(c) for c in (released.saved['meta'].get('PALETTE')
                               or released.saved['meta']['dataset_meta']['palette'])]
    _assert_holds_the_file(model, released)
    assert tuple(model.dataset_meta['classes']) == _classes_in_meta(released.saved)


@pytest.mark.parametrize('released', DETECTION, indirect=True)
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_det_inferencer_loads_the_file_and_predicts(released, data_dir):
    from mmdet.apis import DetInferencer
    with mmengine_loader():
        inferencer = DetInferencer(model=copy.deepcopy(released.cfg), weights=released.path,
                                   device='cpu', show_progress=False)
    _assert_holds_the_file(inferencer.model, released)
    assert tuple(inferencer.model.dataset_meta['classes']) == _classes_in_meta(released.saved)
    predictions = inferencer(_image(data_dir, 'det'), no_save_vis=True)['predictions']
    assert len(predictions) == 1 and 'bboxes' in predictions[0]


@pytest.mark.slow
def test_tools_test_evaluates_the_released_url(released, data_dir, tmp_path, monkeypatch):
    """What a user runs, ``tools/test.py CONFIG URL``, the file served under its official name
    by a loopback server (downloaded into torch hub's cache, then read), on 4 images of the demo
    set. tools/test.py refuses a file that does not fit the model exactly, so a pass means every
    key loaded."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    options = coco_options(data_dir) if released.stack.task == 'det' else ade_options(data_dir)
    with serve(osp.dirname(released.path)) as server:
        url = f'{server.url}/{released.stack.released_as}?download=true'
        result = run_tool([osp.join(TOOLS, 'test.py'), osp.join(DEMO, released.stack.config),
                           url, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                           *SHALLOW, *options, 'test_dataloader.dataset.indices=4'],
                          cwd=str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert server.requests == [f'/{released.stack.released_as}?download=true']
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / released.stack.released_as
    assert cached.read_bytes() == open(released.path, 'rb').read()
    metric = 'coco/bbox_mAP' if released.stack.task == 'det' else 'mIoU'
    assert metric in output, output[-2000:]
