"""Official ImageNet classifier files load, with their heads, into the mmpretrain classifiers of
configs/classification through mmengine's ``load_checkpoint``, and give the official logits
(oracles: tests/reference.py, tests/reference_transxnet.py)."""
import pytest
import torch

pytest.importorskip('mmpretrain')

from mmengine.runner import load_checkpoint  # noqa: E402

from mmtransnext import TransNeXt  # noqa: E402
from mmtransnext.checkpoint import CheckpointError  # noqa: E402
from reference import reference_transnext_classifier  # noqa: E402
from reference_transxnet import reference_transxnet_classifier  # noqa: E402
from classification_helpers import (NUM_CLASSES, TRANSNEXT_ARCH, TRANSXNET_ARCH,  # noqa: E402
                                    build_classifier)


@pytest.mark.parametrize('size', [224, 256])
def test_transnext_official_file_gives_official_logits(transnext_file, size):
    path, source, (weight, bias) = transnext_file
    # the official classifier is built for its input size, pretrain_size 224
    model = build_classifier('transnext-micro_8xb128_in1k', arch=TRANSNEXT_ARCH, img_size=size,
                             pretrain_size=224)
    load_checkpoint(model, str(path), strict=True)
    img = torch.randn(2, 3, size, size)
    source_at_size = TransNeXt(TRANSNEXT_ARCH, out_indices=(3, ), img_size=size,
                               pretrain_size=224, attention_mode='reference')
    source_at_size.load_state_dict(source.state_dict())
    with torch.no_grad():
        expected = reference_transnext_classifier(source_at_size.eval(), weight, bias, img)
        logits = model(img, mode='tensor')
    assert logits.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('size', [224, 201])
def test_transxnet_official_file_gives_official_logits(transxnet_file, size):
    path, state = transxnet_file
    model = build_classifier('transxnet-tiny_8xb128_in1k', arch=TRANSXNET_ARCH,
                             norm_cfg=dict(type='BN'))
    load_checkpoint(model, str(path), strict=True)
    img = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference_transxnet_classifier(state, img, [1, 1, 1, 1], [1, 2, 4, 8],
                                                  [2, 2, 2, 2])
        logits = model(img, mode='tensor')
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_every_tensor_of_the_official_file_is_loaded(transxnet_file):
    path, state = transxnet_file
    model = build_classifier('transxnet-tiny_8xb128_in1k', arch=TRANSXNET_ARCH,
                             norm_cfg=dict(type='BN'))
    load_checkpoint(model, str(path), strict=True)
    loaded = model.state_dict()
    assert len(loaded) == len(state)
    torch.testing.assert_close(loaded['backbone.norm6.weight'], state['classifier.0.weight'])
    torch.testing.assert_close(loaded['head.fc.weight'], state['classifier.2.weight'].flatten(1))
    torch.testing.assert_close(loaded['backbone.network.0.0.mlp.norm.running_var'],
                               state['network.0.0.mlp.norm.running_var'])


@pytest.mark.parametrize('change, match', [
    (dict(num_classes=10), r'head\.fc\.weight: checkpoint \(1000, 128\) vs model \(10, 128\)'),
    (dict(depths=[1, 1, 2, 1]), r'84 missing key.*backbone\.network\.4\.1\.'),
])
def test_a_mismatched_official_file_fails_naming_the_tensors(transxnet_file, change, match):
    path, _ = transxnet_file
    arch = dict(TRANSXNET_ARCH, depths=change.get('depths', TRANSXNET_ARCH['depths']))
    model = build_classifier('transxnet-tiny_8xb128_in1k', arch=arch, norm_cfg=dict(type='BN'))
    if 'num_classes' in change:
        model.head.fc = torch.nn.Linear(128, change['num_classes'])
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(model, str(path))


def test_a_transnext_file_does_not_fit_transxnet(transnext_file):
    model = build_classifier('transxnet-tiny_8xb128_in1k', arch=TRANSXNET_ARCH,
                             norm_cfg=dict(type='BN'))
    with pytest.raises(CheckpointError, match='unexpected key'):
        load_checkpoint(model, str(transnext_file[0]))


def test_mmpretrain_layout_files_load_unchanged(transxnet_file, tmp_path):
    path, _ = transxnet_file
    kwargs = dict(arch=TRANSXNET_ARCH, norm_cfg=dict(type='BN'))
    trained = build_classifier('transxnet-tiny_8xb128_in1k', **kwargs)
    load_checkpoint(trained, str(path), strict=True)
    torch.save({'state_dict': trained.state_dict(), 'meta': {}}, tmp_path / 'runner.pth')
    fresh = build_classifier('transxnet-tiny_8xb128_in1k', **kwargs)
    load_checkpoint(fresh, str(tmp_path / 'runner.pth'), strict=True)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(img, mode='tensor'), trained(img, mode='tensor'))


@pytest.mark.parametrize('family', ['TransNeXt', 'TransXNet'])
def test_backbones_build_through_mmpretrain_registry(family):
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(type=family, arch=dict(TRANSXNET_ARCH if family == 'TransXNet'
                                                     else TRANSNEXT_ARCH), out_indices=(3, )))
    assert type(model).__name__ == family
    assert model.eval()(torch.randn(1, 3, 64, 64))[0].shape == (1, 128, 2, 2)
