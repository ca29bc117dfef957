"""Linear inference mode (``fixed_pool_size``) and multi-scale evaluation with
``pretrain_size``, against the plain-PyTorch oracle of the official classification code."""
import pytest
import torch

from mmtransnext.models import TransNeXt
from reference import (perturb_, reference_aggregated_attention, reference_bias,
                       reference_linear_mode_backbone)

#: A narrow TransNeXt (head width 16, one block per stage; Tiny's sr_ratios and windows).
ARCH = dict(embed_dims=[16, 32, 64, 128], num_heads=[1, 2, 4, 8], depths=[1, 1, 1, 1])
#: Stage maps 56/28/14/7 at 224x224, as in the official classification.
SMALL = dict(arch=ARCH)
#: Stage maps 24/12/6/3 at 96x96, where ``fixed_pool_size=3`` equals the normal mode
#: (24/8 = 12/4 = 6/2 = 3) and 2 does not.
NARROW = dict(arch=ARCH, pretrain_size=96)


def _pair(fixed, **kwargs):
    """A model in linear mode and the same weights in normal mode."""
    linear = perturb_(TransNeXt(fixed_pool_size=fixed, **kwargs)).eval()
    normal = TransNeXt(**kwargs).eval()
    normal.load_state_dict(linear.state_dict())
    return linear, normal


@pytest.mark.parametrize('extrapolation', [False, True])
def test_equals_normal_mode_at_224_and_differs_above(extrapolation):
    linear, normal = _pair(7, **SMALL, img_size=224, pretrain_size=224,
                           is_extrapolation=extrapolation)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        for a, b in zip(linear(x), normal(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        x = torch.randn(1, 3, 288, 288)
        outs = list(zip(linear(x), normal(x)))
    for stage, (a, b) in enumerate(outs):
        assert (a - b).abs().max() > 1e-2, f'stage {stage + 1} did not change'


@pytest.mark.parametrize('fixed', [None, 7])
@pytest.mark.parametrize('size', [224, 288])
def test_extrapolation_is_the_official_classifier_at_any_input_size(fixed, size):
    """``--input-size size --pretrain-size 224 [--fixed-pool-size 7]``: the official code
    builds its tables at the input size, which extrapolation mode does at every forward."""
    model = perturb_(TransNeXt(**SMALL, pretrain_size=224, is_extrapolation=True,
                               fixed_pool_size=fixed)).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        outs, expected = model(x), reference_linear_mode_backbone(model, x, fixed, 224)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('fixed', [None, 7])
def test_interpolation_with_img_size_at_the_input_is_the_official_classifier(fixed):
    model = perturb_(TransNeXt(**SMALL, img_size=256, pretrain_size=224,
                               fixed_pool_size=fixed)).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        outs, expected = model(x), reference_linear_mode_backbone(model, x, fixed, 224)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('size', [(256, 288), (125, 203)])
def test_interpolation_resizes_the_linear_table_of_img_size(size):
    """Interpolation mode (detection / segmentation): the table of ``img_size`` with
    ``fixed_pool_size`` keys, resized bilinearly over the queries to the actual map."""
    model = perturb_(TransNeXt(**SMALL, img_size=224, pretrain_size=224,
                               fixed_pool_size=7)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
        expected = reference_linear_mode_backbone(model, x, 7, 224, img_size=224)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _outputs_and_grads(model, x, forward):
    model.zero_grad(set_to_none=True)
    outs = forward(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}


def _assert_grads_close(grads, ref_grads):
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        if name.startswith('block4.') and name.endswith('cpb_fc2.bias'):
            continue  # shifts every logit of a softmax equally: true gradient zero, both noise
        error = (grads[name] - grad).abs().max().item()
        assert error <= 1e-4 * grad.abs().max().item() + 1e-6, (name, error)


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.parametrize('impl', ['reference', 'torch', 'ext'])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_every_backend_matches_the_oracle_outputs_and_gradients(impl, extrapolation):
    kwargs = dict(attention_mode='reference') if impl == 'reference' else dict(attn_impl=impl)
    model = perturb_(TransNeXt(**NARROW, img_size=96, is_extrapolation=extrapolation,
                               fixed_pool_size=2, **kwargs)).train()
    x = torch.randn(2, 3, 77, 83)  # odd sizes: maps 20x21, 10x11, 5x6, 3x3
    outs, grads = _outputs_and_grads(model, x, model)
    ref_outs, ref_grads = _outputs_and_grads(
        model, x, lambda t: reference_linear_mode_backbone(
            model, t, 2, 96, img_size=None if extrapolation else 96))
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize('extrapolation', [False, True])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_triton_attention_matches_the_oracle_outputs_and_gradients(extrapolation):
    """The Triton kernels (in the interpreter: one aggregated-attention layer, the part
    linear mode changes) with the linear geometry, against the oracle."""
    model = perturb_(TransNeXt(arch=ARCH, img_size=48, pretrain_size=64, fixed_pool_size=2,
                               is_extrapolation=extrapolation, attn_impl='triton')).train()
    attn, size = model.block1[0].attn, (9, 11)  # a 33x41 input's first stage
    geometry = model.stage_geometry(0, size, torch.device('cpu'))
    assert geometry.pool_size == (2, 2)
    x = torch.randn(2, size[0] * size[1], 16)
    trained = None if extrapolation else ((12, 12), (2, 2))

    def oracle(t):
        bias = reference_bias(attn, size, (2, 2), (16, 16), trained)
        return [reference_aggregated_attention(attn, t, size, (2, 2), bias)]

    outs, grads = _outputs_and_grads(attn, x, lambda t: [attn(t, geometry)])
    ref_outs, ref_grads = _outputs_and_grads(attn, x, oracle)
    torch.testing.assert_close(outs[0], ref_outs[0], rtol=1e-4, atol=1e-4)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize('impl', ['torch', 'ext'])
def test_every_backend_equals_normal_mode_where_the_grids_agree(impl):
    linear, normal = _pair(3, **NARROW, img_size=96, attn_impl=impl)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(linear(x), normal(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('value, error', [(0, ValueError), (-7, ValueError), (7.0, TypeError),
                                          (True, TypeError), ('7', TypeError)])
def test_bad_fixed_pool_size_raises(value, error):
    with pytest.raises(error, match='fixed_pool_size'):
        TransNeXt(**SMALL, fixed_pool_size=value)
    model = TransNeXt(**SMALL)
    with pytest.raises(error, match='fixed_pool_size'):
        model.fixed_pool_size = value
    assert model.fixed_pool_size is None


def test_pool_larger_than_a_stage_map_raises():
    model = TransNeXt(**SMALL, is_extrapolation=True, fixed_pool_size=7).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 112))  # stage 3 is 7x7: fine
        with pytest.raises(ValueError, match=r"fixed_pool_size 7 is larger than stage 3's "
                           r'6x7 feature map'):
            model(torch.randn(1, 3, 96, 112))
    with pytest.raises(ValueError, match='img_size must be >= 128'):
        TransNeXt(**SMALL, img_size=96, fixed_pool_size=8)


def test_switching_a_built_model_changes_only_the_geometry():
    model = perturb_(TransNeXt(**NARROW, img_size=96)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        normal = model(x)
        model.fixed_pool_size = 3
        linear = model(x)
        expected = reference_linear_mode_backbone(model, x, 3, 96, img_size=96)
        model.fixed_pool_size = None
        again = model(x)
    for a, b, c, d in zip(normal, linear, expected, again):
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, d, rtol=0, atol=0)
    assert model.state_dict().keys() == state.keys()
