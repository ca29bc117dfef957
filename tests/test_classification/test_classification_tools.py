"""The tools with mmpretrain configs: tools/test.py's checkpoint check takes official classifier
files in the layout they load in; the CPU demo (tools/demo.py --classification) learns."""
import importlib.util
import os.path as osp

import pytest
import torch

pytest.importorskip('mmpretrain')

TOOLS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools')

from classification_helpers import TRANSXNET_ARCH, build_classifier  # noqa: E402

from mmtransnext.checkpoint import CheckpointError  # noqa: E402
from mmtransnext.cli import check_checkpoint_fits, library_of, load_config  # noqa: E402


def test_checkpoint_check_reads_official_classifier_files(transxnet_file):
    path, _ = transxnet_file
    model = build_classifier('transxnet-tiny_8xb128_in1k', arch=TRANSXNET_ARCH,
                             norm_cfg=dict(type='BN'))
    check_checkpoint_fits(model, str(path))  # fits: no error
    model.head.fc = torch.nn.Linear(128, 10)
    with pytest.raises(CheckpointError, match='head.fc.weight'):
        check_checkpoint_fits(model, str(path))


def test_tools_accept_mmpretrain_configs():
    cfg = load_config(osp.join(osp.dirname(TOOLS), 'configs', 'classification',
                                      'transxnet-tiny_8xb128_in1k.py'))
    assert library_of(cfg) == 'mmpretrain'


@pytest.mark.slow
def test_classification_demo_learns(tmp_path):
    """Both classifiers, trained from scratch for the demo's 40 iterations, well above the
    33.3% of chance (a model that does not learn stays near it)."""
    spec = importlib.util.spec_from_file_location('mmtransnext_tools_demo',
                                                  osp.join(TOOLS, 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(['--classification', '--work-dir', str(tmp_path / 'work'),
                           '--data-root', str(tmp_path / 'shapes_cls'), '--min-top1', '80',
                           # one thread: two threads on two shared cores ran 10x slower here
                           '--threads', '1'])
    assert results['transnext-micro_shapes-cls-64'] >= 80
    assert results['transxnet-tiny_shapes-cls-64'] >= 80
