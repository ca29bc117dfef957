import pickle

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from mmtransnext.checkpoint import (CheckpointError, extract_state_dict, mmengine_loader,
                                    read_checkpoint)
from mmtransnext.models import TransNeXt, TransXNet

ARCH = dict(arch='micro', depths=[1, 1, 1, 1])


def _official_imagenet_file(tmp_path, model):
    state = {k: v.clone() + 0.5 for k, v in model.state_dict().items()}
    state['head.weight'] = torch.randn(1000, 384)
    state['head.bias'] = torch.randn(1000)
    path = tmp_path / 'transnext_micro_224_1k.pth'
    torch.save({'model': state}, path)
    return path, state


def _pretrained(path, **extra):
    return TransNeXt(**ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(path), **extra))


def test_imagenet_file_loads_and_head_is_ignored(tmp_path):
    path, state = _official_imagenet_file(tmp_path, TransNeXt(**ARCH))
    model = _pretrained(path)
    model.init_weights()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_mismatched_arch_fails_naming_the_key(tmp_path):
    path, _ = _official_imagenet_file(tmp_path, TransNeXt('tiny', depths=[1, 1, 1, 1]))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        _pretrained(path).init_weights()


def test_deeper_checkpoint_fails_unless_not_strict(tmp_path):
    path, _ = _official_imagenet_file(tmp_path, TransNeXt('micro', depths=[2, 1, 1, 1]))
    with pytest.raises(CheckpointError, match=r'29 unexpected key'):
        _pretrained(path).init_weights()
    _pretrained(path, strict=False).init_weights()


def test_unrelated_checkpoint_fails(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.randn(3)}}, path)
    with pytest.raises(CheckpointError, match='no key'):
        _pretrained(path).init_weights()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        _pretrained(tmp_path / 'nowhere.pth').init_weights()


def test_bad_init_cfg_key():
    with pytest.raises(ValueError, match='chekpoint'):
        TransNeXt(**ARCH, init_cfg=dict(type='Pretrained', chekpoint='x.pth')).init_weights()


def test_pretrained_refuses_pickled_objects(tmp_path, monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    path = tmp_path / 'evil.pth'
    state = TransNeXt(**ARCH).state_dict()
    torch.save({'model': state, 'extra': np.float64(1.0), 'obj': pickle.PicklingError}, path)
    with pytest.raises(CheckpointError, match=r'needs pickle\.PicklingError') as refusal:
        _pretrained(path).init_weights()
    assert 'MMTRANSNEXT_TRUSTED_CHECKPOINTS=1' in str(refusal.value)
    monkeypatch.setenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', '1')
    _pretrained(path).init_weights()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('hello')
    with pytest.raises(CheckpointError, match='not a readable'):
        read_checkpoint(str(path))


def test_extract_state_dict_layouts():
    t = torch.zeros(1)
    assert list(extract_state_dict({'model': {'a': t}})) == ['a']
    assert list(extract_state_dict({'state_dict': {'module.backbone.a': t, 'head.b': t}})) == ['a']
    assert list(extract_state_dict({'a': t})) == ['a']
    with pytest.raises(CheckpointError, match='decoder'):
        extract_state_dict({'a': t}, prefix='decoder')


def _runner_checkpoint(tmp_path):
    """A checkpoint as mmengine's Runner writes it: numpy scalars, message hub, optimizer."""
    model = torch.nn.Linear(2, 2)
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    optim.step()
    from mmengine.logging import HistoryBuffer
    hub = {'log_scalars': {'train/loss': HistoryBuffer([np.float64(0.5)], [1])}}
    path = tmp_path / 'iter_10.pth'
    torch.save({'meta': {'epoch': 1, 'iter': 10, 'seed': np.int64(3)},
                'state_dict': model.state_dict(), 'optimizer': optim.state_dict(),
                'message_hub': hub}, path)
    return path, model


def test_runner_checkpoint_loads_through_runner(tmp_path, monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    path, source = _runner_checkpoint(tmp_path)
    runner = Runner(model=torch.nn.Linear(2, 2), work_dir=str(tmp_path / 'work'))
    with mmengine_loader():  # as CheckpointReaderHook installs it for a run
        checkpoint = runner.load_checkpoint(str(path))
    assert checkpoint['meta']['iter'] == 10
    torch.testing.assert_close(runner.model.weight, source.weight)


def test_pretrained_reads_a_runner_checkpoint_without_trust(tmp_path, monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_TRUSTED_CHECKPOINTS', raising=False)
    source = TransNeXt(**ARCH)
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'iter_2.pth'
    torch.save({'meta': {'iter': 2, 'seed': np.int64(3)},
                'state_dict': {f'backbone.{k}': v + 1 for k, v in source.state_dict().items()},
                'message_hub': {'log_scalars': {'loss': HistoryBuffer([np.float64(1)], [1])}}},
               path)
    model = _pretrained(path)
    model.init_weights()
    torch.testing.assert_close(model.norm4.weight, source.norm4.weight + 1)


# ----------------------------------------------------------------------------- TransXNet
XNET = dict(arch='tiny', depths=[1, 1, 1, 1])


def _xnet_imagenet_file(tmp_path, model, key='state_dict'):
    """An official TransXNet ImageNet file: unprefixed, a classifier, no output norms."""
    state = {k: v + (0.5 if v.is_floating_point() else 1) for k, v in model.state_dict().items()
             if not k.startswith(('norm0.', 'norm2.', 'norm4.', 'norm6.'))}
    state.update({'classifier.0.weight': torch.randn(448), 'classifier.0.bias': torch.randn(448),
                  'classifier.2.weight': torch.randn(1000, 448, 1, 1),
                  'classifier.2.bias': torch.randn(1000)})
    path = tmp_path / 'transx-t.pth.tar'
    torch.save({key: state, 'epoch': 300}, path)
    return path, state


def _xnet(path, **extra):
    return TransXNet(**XNET, init_cfg=dict(type='Pretrained', checkpoint=str(path), **extra))


@pytest.mark.parametrize('key', ['state_dict', 'model'])
def test_transxnet_imagenet_file_loads_and_output_norms_keep_init(tmp_path, key):
    path, state = _xnet_imagenet_file(tmp_path, TransXNet(**XNET), key)
    model = _xnet(path)
    model.init_weights()
    for name, value in model.state_dict().items():
        if name.startswith('norm'):
            torch.testing.assert_close(value, torch.ones_like(value) if name.endswith('weight')
                                       else torch.zeros_like(value))
        else:
            torch.testing.assert_close(value, state[name])


def test_transxnet_missing_block_key_still_fails_strict_loading(tmp_path):
    path, state = _xnet_imagenet_file(tmp_path, TransXNet(**XNET))
    del state['network.2.0.token_mixer.local_unit.weight']
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError, match=r'1 missing key.*local_unit\.weight'):
        _xnet(path).init_weights()


def test_transxnet_mismatched_arch_fails(tmp_path):
    path, _ = _xnet_imagenet_file(tmp_path, TransXNet('small', depths=[1, 1, 1, 1]))
    with pytest.raises(CheckpointError, match='shape mismatch'):
        _xnet(path).init_weights()


def test_unrelated_checkpoint_names_the_class(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.randn(3)}}, path)
    with pytest.raises(CheckpointError, match='is it a TransXNet checkpoint'):
        _xnet(path).init_weights()


# ------------------------------------------------------------------- non-finite weights
@pytest.fixture
def _no_opt_in(monkeypatch):
    monkeypatch.delenv('MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS', raising=False)


def _poisoned_imagenet_file(tmp_path, poison):
    """An official-layout file of TransNeXt micro with ``poison(state)`` applied."""
    path, state = _official_imagenet_file(tmp_path, TransNeXt(**ARCH))
    poison(state)
    torch.save({'model': state}, path)
    return path, state


def _all_nan(state):
    for value in state.values():
        if value.is_floating_point():
            value.fill_(float('nan'))


def test_all_nan_checkpoint_is_refused_naming_tensors_and_counts(tmp_path, _no_opt_in):
    path, state = _poisoned_imagenet_file(tmp_path, _all_nan)
    floating = [k for k, v in state.items() if v.is_floating_point()]
    first = next(iter(state))
    with pytest.raises(CheckpointError) as err:
        _pretrained(path).init_weights()
    message = str(err.value)
    assert f'{len(floating)} of {len(state)} weight tensors hold non-finite values' in message
    size = state[first].numel()
    assert f'{first} ({size} NaN of {size})' in message
    assert f'and {len(floating) - 4} more' in message
    assert 'allow_non_finite=True' in message
    assert 'MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS=1' in message


def test_one_inf_is_refused_and_counted(tmp_path, _no_opt_in):
    def one_inf(state):
        state['norm4.weight'][3] = float('-inf')

    path, _ = _poisoned_imagenet_file(tmp_path, one_inf)
    with pytest.raises(CheckpointError, match=r': 1 of \d+ weight tensors hold non-finite '
                       r'values: norm4\.weight \(1 inf of 384\)\. '):
        _pretrained(path).init_weights()
    with pytest.raises(CheckpointError, match=r'norm4\.weight \(1 inf of 384\)'):
        read_checkpoint(str(path))


def test_non_finite_weights_load_when_allowed_in_init_cfg(tmp_path, _no_opt_in):
    def some_nan(state):
        state['norm4.bias'][:5] = float('nan')

    path, state = _poisoned_imagenet_file(tmp_path, some_nan)
    model = _pretrained(path, allow_non_finite=True)
    model.init_weights()
    assert int(torch.isnan(model.norm4.bias).sum()) == 5
    torch.testing.assert_close(model.norm4.weight, state['norm4.weight'])


def test_mmengine_load_checkpoint_refuses_non_finite_weights(tmp_path, monkeypatch, _no_opt_in):
    """``load_from`` / ``--resume`` / mmengine's Pretrained read through the same check; the env
    variable is their opt-in."""
    from mmengine.runner import load_checkpoint
    path, source = _runner_checkpoint(tmp_path)
    saved = torch.load(path, weights_only=False)
    saved['state_dict']['weight'][0, 0] = float('nan')
    torch.save(saved, path)
    model = torch.nn.Linear(2, 2)
    with mmengine_loader(), pytest.raises(CheckpointError, match=r'weight \(1 NaN of 4\)'):
        load_checkpoint(model, str(path))
    with mmengine_loader(), pytest.raises(CheckpointError, match='weight'):
        Runner(model=model, work_dir=str(tmp_path / 'work')).load_checkpoint(str(path))
    monkeypatch.setenv('MMTRANSNEXT_ALLOW_NON_FINITE_CHECKPOINTS', '1')
    with mmengine_loader():
        load_checkpoint(model, str(path))
    assert bool(torch.isnan(model.weight[0, 0]))


def test_only_model_weights_are_checked_not_optimizer_state(tmp_path, _no_opt_in):
    """A resumed run's optimizer moments or logged losses may hold inf (fp16 overflow steps);
    only the weights that go into the model are refused."""
    path, source = _runner_checkpoint(tmp_path)
    saved = torch.load(path, weights_only=False)
    saved['optimizer']['state'][0]['exp_avg'].fill_(float('inf'))
    torch.save(saved, path)
    checkpoint = read_checkpoint(str(path))
    torch.testing.assert_close(checkpoint['state_dict']['weight'], source.weight)


def test_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(IsADirectoryError, match='is a directory'):
        read_checkpoint(str(tmp_path))
