"""What every registered backbone family must do, run over each family and arch preset found in
:func:`mmtransnext.models.backbones.families` (a new family is picked up without editing this
file): the package's own and ToyFormer, the third family the test suite writes itself
(tests/third_family.py). Presets are built with one block per stage and run on tiny inputs;
what only one family has (parity with its official computation, its own options) is tested in
its own file.
"""
import inspect
import math
from typing import Iterator, List, Tuple

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import third_family  # noqa: F401  (registers ToyFormer, the suite's own third family)
from mmtransnext.analysis import attention_map
from mmtransnext.checkpoint import CheckpointError
from mmtransnext.models.backbones import families
from mmtransnext.models.backbones.base import MultiStageBackbone, Part
from reference import perturb_

FAMILIES = [pytest.param(cls, id=name) for name, cls in families().items()]
PRESETS = [pytest.param(cls, arch, id=f'{name}-{arch}')
           for name, cls in families().items() for arch in cls.arch_presets]


def quick(cls, arch: str = None, **kwargs) -> MultiStageBackbone:
    """``arch`` (default: the smallest preset) with one block per stage."""
    arch = arch or next(iter(cls.arch_presets))
    return cls(arch=arch, depths=[1] * len(cls.arch_presets[arch]['depths']), **kwargs)


def takes(cls, argument: str) -> bool:
    return argument in inspect.signature(cls).parameters


def weighted_sum(outs: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A loss whose gradient differs per output element (a plain sum would hide a swap)."""
    return sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)


def parameters_of(parts: List[Part]) -> Iterator[nn.Parameter]:
    for part in parts:
        yield from [part] if isinstance(part, nn.Parameter) else part.parameters()


# ----------------------------------------------------------------------------- registration
def test_the_package_registers_its_families():
    assert {'TransNeXt', 'TransXNet'} <= set(families())


@pytest.mark.parametrize('cls', FAMILIES)
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_registered_and_built_in_each_library(cls, scope):
    registry = pytest.importorskip(f'{scope}.registry').MODELS
    assert registry.get(cls.__name__) is cls
    arch = next(iter(cls.arch_presets))
    model = registry.build(dict(type=cls.__name__, arch=arch,
                                depths=[1] * len(cls.arch_presets[arch]['depths'])))
    assert type(model) is cls


def test_a_class_breaking_the_contract_is_refused_naming_what_is_missing():
    from mmtransnext.models.backbones.base import register_family

    class Incomplete(MultiStageBackbone):
        arch_presets = {'tiny': dict(embed_dims=[8])}

    with pytest.raises(TypeError, match=r'no depths.*stem_parts.*token_mixers'):
        register_family(Incomplete)
    assert 'Incomplete' not in families()

    class BadHooks(third_family.ToyFormer):
        official_classifier_keys = {'logits.': 'fc.'}
        attention_adapters = {'ToyAttention': None}

    with pytest.raises(TypeError, match=r"attention_adapters\['ToyAttention'\] is not an "
                       r"AttentionAdapter.*maps 'logits.' to 'fc.', outside"):
        register_family(BadHooks)
    assert 'BadHooks' not in families()


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize('cls,arch', PRESETS)
def test_output_shapes_at_odd_sizes(cls, arch):
    model = quick(cls, arch).eval()
    for h, w in [(33, 47), (1, 1)]:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, h, w))
        expected = [(1, model.feature_info[i]['num_chs'], math.ceil(h / 2 ** (i + 2)),
                     math.ceil(w / 2 ** (i + 2))) for i in model.out_indices]
        assert [tuple(o.shape) for o in outs] == expected
        assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('cls', FAMILIES)
def test_out_indices_select_stages_and_feature_info_names_real_modules(cls):
    model = quick(cls, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    info = model.feature_info
    assert [o.shape[1] for o in outs] == [info[1]['num_chs'], info[3]['num_chs']]
    assert [f['reduction'] for f in info] == [4, 8, 16, 32]
    assert all(f['module'] in dict(model.named_modules()) for f in info)


@pytest.mark.parametrize('cls', FAMILIES)
def test_gradients_reach_every_parameter(cls):
    model = perturb_(quick(cls)).train()
    weighted_sum(model(torch.randn(2, 3, 40, 36))).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


@pytest.mark.parametrize('cls', FAMILIES)
def test_token_mixers_are_blocks_modules_called_by_the_forward(cls):
    model = quick(cls).eval()
    mixers = model.token_mixers()
    assert len(mixers) == model.num_stages and all(len(stage) == 1 for stage in mixers)
    called = []
    handles = [m.register_forward_pre_hook(lambda m, args: called.append(m))
               for stage in mixers for m in stage]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for handle in handles:
        handle.remove()
    assert called == [m for stage in mixers for m in stage]


@pytest.mark.parametrize('cls', FAMILIES)
def test_every_token_mixer_draws_an_attention_map(cls):
    """The attention-map hooks: the family reads every kind of mixer it lists, and each map
    is one softmax per head (its window and pooled parts sum to 1) for the query's cell."""
    model = perturb_(quick(cls)).eval()
    image = torch.randn(1, 3, 48, 40)
    for stage, mixers in enumerate(model.token_mixers()):
        assert cls.attention_adapter(mixers[0]) is not None, type(mixers[0])
        maps = attention_map(model, image, (47, 0), stage, 0)
        size = (math.ceil(48 / 2 ** (stage + 2)), math.ceil(40 / 2 ** (stage + 2)))
        assert maps['feature_size'].tolist() == list(size)
        assert maps['query'].tolist() == [size[0] - 1, 0]
        total = maps['pooled'].flatten(1).sum(-1)
        if 'window' in maps:
            total = total + maps['window'].flatten(1).sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total))


# ----------------------------------------------------------------------------- freezing
@pytest.mark.parametrize('cls', FAMILIES)
def test_stem_and_stages_hold_every_parameter_once(cls):
    model = quick(cls)
    parts = list(model.stem_parts())
    for stage in range(model.num_stages):
        parts += model.stage_parts(stage)
    held = [id(p) for p in parameters_of(parts)]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize('cls', FAMILIES)
@pytest.mark.parametrize('frozen', [0, 2])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_frozen_stages_survive_train(cls, frozen):
    model = quick(cls, frozen_stages=frozen)
    model.train()
    frozen_parts = list(model.stem_parts())
    for stage in range(frozen):
        frozen_parts += model.stage_parts(stage)
    frozen_ids = {id(p) for p in parameters_of(frozen_parts)}
    for name, param in model.named_parameters():
        assert param.requires_grad == (id(param) not in frozen_ids), name
    for part in frozen_parts:
        if isinstance(part, nn.Module):
            assert not any(m.training for m in part.modules())
    for part in model.stage_parts(frozen):
        if isinstance(part, nn.Module):
            assert part.training
    # a training step changes neither the frozen weights nor their running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weighted_sum(model(torch.randn(2, 3, 32, 24))).backward()
    assert all(p.grad is None for p in parameters_of(frozen_parts))
    frozen_tensors = {id(t) for part in frozen_parts for t in (
        part.state_dict(keep_vars=True).values() if isinstance(part, nn.Module) else [part])}
    checked = 0
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in frozen_tensors:
            torch.testing.assert_close(value.detach(), before[key], rtol=0, atol=0)
            checked += 1
    assert checked == len(frozen_tensors) > 0


@pytest.mark.parametrize('cls', FAMILIES)
def test_everything_frozen_leaves_nothing_to_train(cls):
    stages = len(next(iter(cls.arch_presets.values()))['depths'])
    model = quick(cls, frozen_stages=stages).train()
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('cls', [p for p in FAMILIES if takes(p.values[0], 'norm_eval')])
def test_norm_eval_survives_train(cls):
    model = quick(cls, norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert all(m.training for m in model.modules() if not isinstance(m, _BatchNorm))
    assert all(m.training for m in quick(cls).train().modules())


# ----------------------------------------------------------------------------- with_cp
@pytest.mark.parametrize('cls', FAMILIES)
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_with_cp_gives_same_outputs_and_gradients(cls):
    plain = perturb_(quick(cls)).train()
    ckpt = quick(cls, with_cp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 24)
    results = []
    for model in (plain, ckpt):
        calls = []
        handles = [m.register_forward_pre_hook(lambda m, args: calls.append(m))
                   for stage in model.token_mixers() for m in stage]
        outs = model(x)
        weighted_sum(outs).backward()
        for handle in handles:
            handle.remove()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}, len(calls)))
    (plain_outs, plain_grads, plain_calls), (cp_outs, cp_grads, cp_calls) = results
    # checkpointing really happened: every block ran again in backward
    assert cp_calls == 2 * plain_calls
    for a, b in zip(cp_outs, plain_outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cp_grads[name], grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- checkpoints
def _official_file(tmp_path, model: MultiStageBackbone) -> Tuple[str, dict]:
    """The model's weights, moved off its init, as an official ImageNet file holds them: its
    own key names, without the keys such files lack, with a classifier (a generic ``head.``
    and one under each of the family's official classifier prefixes)."""
    state = {k: v + (0.5 if v.is_floating_point() else 1) for k, v in model.state_dict().items()
             if not k.startswith(tuple(model.pretrained_optional_keys))}
    state.update({'head.weight': torch.randn(10, 8), 'head.bias': torch.randn(10)})
    state.update({prefix + 'weight': torch.randn(10, 8)
                  for prefix in model.official_classifier_keys})
    path = tmp_path / 'official.pth'
    torch.save({'state_dict': state}, path)
    return str(path), state


@pytest.mark.parametrize('cls', FAMILIES)
def test_official_layout_checkpoint_loads(tmp_path, cls):
    path, state = _official_file(tmp_path, quick(cls))
    model = quick(cls, init_cfg=dict(type='Pretrained', checkpoint=path))
    fresh = quick(cls).state_dict()
    model.init_weights()
    for key, value in model.state_dict().items():
        if key in state:
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        else:  # an optional key: its initialisation kept
            assert key.startswith(cls.pretrained_optional_keys), key
            assert value.shape == fresh[key].shape


@pytest.mark.parametrize('cls', FAMILIES)
def test_downstream_checkpoint_with_backbone_prefix_loads(tmp_path, cls):
    """An mmdet / mmseg checkpoint (the backbone's keys under ``backbone.``, a neck's beside
    them, training metadata) gives the backbone every one of its weights."""
    state = {f'backbone.{k}': v + (0.5 if v.is_floating_point() else 1)
             for k, v in quick(cls).state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(4, 4)
    path = tmp_path / 'downstream.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 12}}, path)
    model = quick(cls, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[f'backbone.{key}'], rtol=0, atol=0)


@pytest.mark.parametrize('cls', FAMILIES)
def test_checkpoint_of_another_arch_fails_naming_the_mismatch(tmp_path, cls):
    first, last = list(cls.arch_presets)[0], list(cls.arch_presets)[-1]
    largest = quick(cls, last)
    if largest.feature_info[0]['num_chs'] != quick(cls).feature_info[0]['num_chs']:
        path, _ = _official_file(tmp_path, largest)
        with pytest.raises(CheckpointError, match='shape mismatch'):
            quick(cls, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()
    deeper = cls(arch=first, depths=[2] + [1] * (len(cls.arch_presets[first]['depths']) - 1))
    path, _ = _official_file(tmp_path, deeper)
    with pytest.raises(CheckpointError, match='unexpected key'):
        quick(cls, init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize('cls', FAMILIES)
@pytest.mark.parametrize('bad,match', [
    (torch.randn(3, 32, 32), '4-D'),
    (torch.randn(1, 4, 32, 32), '3 input channels'),
    (torch.randn(0, 3, 32, 32), 'empty'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 'floating-point'),
    ('image', 'tensor'),
])
def test_bad_inputs_raise_clear_errors(cls, bad, match):
    model = quick(cls).eval()
    with pytest.raises(ValueError, match=match):
        model(bad)


@pytest.mark.parametrize('cls', FAMILIES)
def test_bf16_autocast_forward_and_backward_are_finite(cls):
    model = perturb_(quick(cls)).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.randn(2, 3, 32, 24))
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
