"""Official-layout ImageNet classifier files of small archs, written once per session."""
import pytest
import torch

from mmtransnext import TransNeXt, TransXNet
from reference import perturb_

from classification_helpers import NUM_CLASSES, TRANSNEXT_ARCH, TRANSXNET_ARCH


def _perturb_statistics_(model: torch.nn.Module) -> None:
    """Running statistics away from 0 / 1, so that a BatchNorm that does not load shows."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)


@pytest.fixture(scope='session')
def transnext_file(tmp_path_factory):
    """An official-layout TransNeXt ImageNet file ({'model': ...} with head.*) and its source."""
    torch.manual_seed(1)
    source = perturb_(TransNeXt(TRANSNEXT_ARCH, out_indices=(3, ), attention_mode='reference'))
    head = torch.randn(NUM_CLASSES, 128) * 0.05, torch.randn(NUM_CLASSES) * 0.05
    state = dict(source.state_dict(), **{'head.weight': head[0], 'head.bias': head[1]})
    path = tmp_path_factory.mktemp('official') / 'transnext_official.pth'
    torch.save({'model': state}, path)
    return path, source.eval(), head


@pytest.fixture(scope='session')
def transxnet_file(tmp_path_factory):
    """An official-layout TransXNet ImageNet file (timm: {'state_dict': ...} with
    classifier.{0,2}.*) and its state."""
    torch.manual_seed(2)
    source = perturb_(TransXNet(TRANSXNET_ARCH, out_indices=(3, )))
    with torch.no_grad():
        _perturb_statistics_(source)
    state = {('classifier.0.' + k[len('norm6.'):] if k.startswith('norm6.') else k): v
             for k, v in source.state_dict().items()}
    state['classifier.2.weight'] = torch.randn(NUM_CLASSES, 128, 1, 1) * 0.05
    state['classifier.2.bias'] = torch.randn(NUM_CLASSES) * 0.05
    path = tmp_path_factory.mktemp('official') / 'transx-t.pth.tar'
    torch.save({'epoch': 300, 'arch': 'transxnet_t', 'state_dict': state}, path)
    return path, state
