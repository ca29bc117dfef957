"""tools/analysis/get_flops.py: parameters and FLOPs of a config's model."""
import pytest
import torch
from tool_helpers import MASK_RCNN_DEMO, ROOT, load_tool

from mmtransnext.models import TransNeXt, TransXNet


@pytest.fixture(scope='module')
def get_flops():
    return load_tool('get_flops')


def test_backbone_flops_match_the_reference_measurement(get_flops):
    # TransNeXt-Tiny at 224x224: 5.71 GMACs measured on the official code (reference file).
    model = TransNeXt('tiny', img_size=224, pretrain_size=224).eval()
    flops, params = get_flops.complexity(model, torch.randn(1, 3, 224, 224))
    assert params == sum(p.numel() for p in model.parameters())
    assert flops == pytest.approx(5.71e9, rel=0.01)


@pytest.mark.slow
def test_backbone_flops_at_detection_size(get_flops):
    # 165 GMACs measured at 800x1216 on the official code; attention over the pooled tokens is a
    # third of it here (unlike at 224), so every attention path must be counted.
    model = TransNeXt('tiny', img_size=800, pretrain_size=224).eval()
    flops, _ = get_flops.complexity(model, torch.randn(1, 3, 800, 1216))
    assert flops == pytest.approx(165e9, rel=0.025)


def test_window_ops_are_counted_like_the_pytorch_reference(get_flops):
    x = torch.randn(1, 3, 96, 96)
    counts = [get_flops.complexity(TransNeXt('micro', depths=[1, 1, 1, 1], img_size=96,
                                           attn_impl=impl).eval(), x)[0]
              for impl in ('auto', 'torch')]
    assert counts[0] == counts[1]


def test_table_for_a_config(get_flops, capsys):
    rows = get_flops.main([MASK_RCNN_DEMO, '--shape', '128'])
    backbone, whole = rows
    assert backbone['params'] == pytest.approx(12.42e6, rel=5e-4)
    assert whole['params'] == pytest.approx(15.06e6, rel=1e-3)
    assert 0 < backbone['flops'] < whole['flops']
    out = capsys.readouterr().out
    assert 'input 1x3x128x128' in out and 'backbone (TransNeXt)' in out
    assert 'whole model (MaskRCNN)' in out


@pytest.mark.parametrize('extrapolation', [False, True])
def test_fast_path_is_counted_like_the_reference_computation(get_flops, extrapolation):
    x = torch.randn(1, 3, 96, 128)
    counts = [get_flops.complexity(TransNeXt('micro', depths=[1, 1, 1, 1], img_size=64,
                                             is_extrapolation=extrapolation,
                                             attention_mode=mode).eval(), x)[0]
              for mode in ('fast', 'reference')]
    # Interpolation mode: mmengine also counts the reference's bilinear resizing of the bias.
    assert counts[0] == pytest.approx(counts[1], rel=0 if extrapolation else 2e-3)


def test_transxnet_flops_match_the_official_figure(get_flops):
    # README of the official release: TransXNet-T 1.8 GFLOPs (MACs) at 224x224, printed to one
    # decimal; the classifier head adds under 1 MMAC.
    model = TransXNet('tiny').eval()
    flops, params = get_flops.complexity(model, torch.randn(1, 3, 224, 224))
    assert params == 12_386_544
    assert flops == pytest.approx(1.8e9, abs=0.05e9)


@pytest.mark.slow
def test_table_for_a_transxnet_config(get_flops, capsys):
    config = f'{ROOT}/configs/demo/retinanet_transxnet-tiny_fpn_shapes-128.py'
    backbone, whole = get_flops.main([config, '--shape', '96', '128', '--cfg-options',
                                      'model.backbone.depths=[1,1,1,1]'])
    assert backbone['params'] == sum(p.numel() for p in TransXNet(
        'tiny', depths=[1, 1, 1, 1], pretrain_size=128, out_indices=(1, 2, 3)).parameters())
    assert 0 < backbone['flops'] < whole['flops']
    assert 'backbone (TransXNet)' in capsys.readouterr().out
