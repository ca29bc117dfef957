"""A third backbone family written in the test suite (ToyFormer, tests/third_family.py) works
with everything the package offers its own families, through the family contract alone: it
registers, passes the shared contract suite (test_backbones/test_family_contract.py picks it
up), loads an official-layout file with its own classifier keys, exports to ONNX (checked in
onnxruntime) and draws attention maps, while no file of the package names it.
"""
import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmtransnext import deployment
from mmtransnext.analysis import attention_map
from mmtransnext.checkpoint import load_pretrained
from mmtransnext.models.backbones import families, family_named, family_of
from reference import perturb_
from third_family import ToyAttention, ToyFormer, official_classifier

PACKAGE = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'mmtransnext')


def small(**kwargs) -> ToyFormer:
    torch.manual_seed(0)
    return perturb_(ToyFormer('nano', **kwargs), std=0.2).eval()


def test_registered_and_named_by_no_package_file():
    assert families()['ToyFormer'] is ToyFormer and family_named('toyformer') is ToyFormer
    assert family_of(small()) is ToyFormer
    naming = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(('.py', '.pyi', '.txt', '.md', '.json', '.yml', '.yaml')):
                with open(osp.join(folder, name), encoding='utf-8') as f:
                    text = f.read()
                if 'ToyFormer' in text or 'ToyAttention' in text:
                    naming.append(name)
    assert not naming


def _official_file(tmp_path, num_classes: int = 5):
    """An official ToyFormer ImageNet file: the backbone's keys as they are, the classifier
    under ``logits.`` (the family's ``official_classifier_keys``)."""
    state = dict(small(out_indices=(3, )).state_dict())
    state['logits.weight'] = torch.randn(num_classes, 32)
    state['logits.bias'] = torch.randn(num_classes)
    path = tmp_path / 'toyformer_in1k.pth'
    torch.save(state, path)
    return str(path), state


def test_official_file_loads_into_the_backbone_and_the_classifier(tmp_path):
    pytest.importorskip('mmpretrain')
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS
    path, state = _official_file(tmp_path)

    backbone = ToyFormer('nano', out_indices=(3, ))
    report = load_pretrained(backbone, path)
    assert sorted(report.ignored) == ['logits.bias', 'logits.weight']
    assert not report.missing and not report.unexpected

    init_default_scope('mmpretrain')
    model = MODELS.build(dict(
        type='OfficialImageClassifier',
        backbone=dict(type='ToyFormer', arch='nano', out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=32))).eval()
    load_checkpoint(model, path, strict=True)
    torch.testing.assert_close(model.head.fc.weight, state['logits.weight'], rtol=0, atol=0)
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        logits = model(x, mode='tensor')
    torch.testing.assert_close(logits, official_classifier(x, state), rtol=0, atol=1e-5)


@pytest.mark.parametrize('dynamic', [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=['fixed', 'dynamic'])
def test_exports_and_matches_in_onnxruntime(tmp_path, dynamic):
    """An ONNX graph of the backbone, at its size or (``dynamic``) with free height and width,
    checked in onnxruntime at its size and, when free, at the odd sizes of every dynamic
    export check."""
    pytest.importorskip('onnxruntime')
    model = small()
    path = str(tmp_path / 'toyformer.onnx')
    result = deployment.export(model, path, (40, 56), part='backbone', dynamic=dynamic,
                               optimize=False)
    assert result.tables == 'ToyFormer: no position tables'
    assert result.output_names == ['stage1', 'stage2', 'stage3', 'stage4']
    sizes = [(40, 56), *(deployment.DYNAMIC_CHECK_SIZES if dynamic else ())]
    errors = deployment.check_onnx(path, model, 'backbone', sizes)
    assert set(errors) == set(sizes) and max(errors.values()) < 1e-4, errors


def test_export_rules_are_the_familys():
    class FixedSizes(ToyFormer):  # not registered: its family is ToyFormer
        def export_refusal(self, dynamic):
            return 'FixedSizes exports at fixed sizes only' if dynamic else None

    model = FixedSizes('nano').eval()
    deployment.check_exportable(model, dynamic=False)
    with pytest.raises(deployment.ExportError, match='FixedSizes exports at fixed sizes only'):
        deployment.check_exportable(model, dynamic=True)


def test_attention_map_is_the_query_rows_softmax():
    """The map of the query holding a pixel, for a block other than the first, against the
    softmax computed here from the mixer's weights and its recorded input."""
    model = small()
    image = torch.randn(1, 3, 50, 38)
    stage, block = 2, 1  # nano: two blocks in stage 2, a 4x3 map
    mixer = model.token_mixers()[stage][block]
    recorded = []
    handle = mixer.register_forward_pre_hook(lambda m, args: recorded.append(args[0]))
    with torch.no_grad():
        model(image)
    handle.remove()
    x = recorded[0]
    heads, (height, width) = mixer.num_heads, x.shape[-2:]
    query = (30 * height // 50, 20 * width // 38)
    qk = F.conv2d(x, mixer.qkv.weight, mixer.qkv.bias)[0, :2 * x.shape[1]]
    q, k = qk.reshape(2, heads, -1, height * width)  # (heads, d, HW) each
    logits = torch.einsum('hd,hdn->hn', q[:, :, query[0] * width + query[1]], k)
    expected = (logits * mixer.temperature[:, 0]).softmax(-1).reshape(heads, height, width)

    maps = attention_map(model, image, (30, 20), stage, block)
    assert maps['query'].tolist() == list(query)
    assert maps['feature_size'].tolist() == [height, width]
    torch.testing.assert_close(maps['pooled'], expected, rtol=1e-5, atol=1e-6)


def test_a_mixer_the_family_cannot_read_is_named():
    class Unread(ToyFormer):
        attention_adapters = {}

    with pytest.raises(ValueError, match="ToyAttention.*Unread's attention_adapters read: none"):
        attention_map(Unread('nano').eval(), torch.randn(1, 3, 32, 32), (0, 0), 0, 0)
    assert isinstance(small().token_mixers()[0][0], ToyAttention)
