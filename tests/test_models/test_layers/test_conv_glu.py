import pytest
import torch

from mmtransnext.models.layers.conv_glu import ConvGLU
from reference import perturb_


def _pair(dim=12, hidden=24, drop=0.):
    fast = perturb_(ConvGLU(dim, hidden, drop, fast=True))
    ref = ConvGLU(dim, hidden, drop, fast=False)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


@pytest.mark.parametrize('size', [(8, 8), (3, 7), (1, 1), (1, 5)])
def test_fast_conv_glu_equals_official_without_grad(size):
    fast, ref = _pair()
    x = torch.randn(2, size[0] * size[1], 12)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x, size), ref.eval()(x, size), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize('size', [(8, 8), (5, 3), (1, 1)])
def test_fast_conv_glu_equals_official_outputs_and_gradients(size):
    fast, ref = _pair()
    x = torch.randn(2, size[0] * size[1], 12)
    weight = torch.randn(2, size[0] * size[1], 12)
    results = []
    for module in (fast, ref):
        inp = x.clone().requires_grad_()
        out = module.train()(inp, size)
        (out * weight).sum().backward()
        results.append((out, inp.grad, {n: p.grad for n, p in module.named_parameters()}))
    (out_f, gx_f, g_f), (out_r, gx_r, g_r) = results
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-5, atol=1e-5)
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fast_conv_glu_with_frozen_fc2_and_dropout():
    fast, ref = _pair()
    fast.fc2.requires_grad_(False)
    x = torch.randn(1, 16, 12, requires_grad=True)
    fast.train()(x, (4, 4)).sum().backward()
    assert fast.fc2.weight.grad is None and fast.fc1.weight.grad is not None
    dropped = ConvGLU(12, 24, drop=0.5, fast=True).train()
    out = dropped(x, (4, 4))
    assert (out != dropped.eval()(x, (4, 4))).any()


def test_fast_conv_glu_saves_less_for_backward():
    fast, ref = _pair(dim=8, hidden=48)  # hidden width 32, four times the input width
    x = torch.randn(2, 64, 8, requires_grad=True)
    _, fast_bytes = _saved_bytes(lambda: fast.train()(x, (8, 8)))
    _, ref_bytes = _saved_bytes(lambda: ref.train()(x, (8, 8)))
    hidden_tensor = 2 * 64 * 32 * 4
    # The official sequence keeps gate/value, the conv output, GELU output and the product;
    # the fast one keeps the conv input and output and the value (and counts x twice).
    assert ref_bytes - fast_bytes >= 1.5 * hidden_tensor, (fast_bytes, ref_bytes)


@pytest.mark.parametrize('budget', [1, 700, None])  # one row per band; ragged bands; one band
@pytest.mark.parametrize('size', [(9, 7), (1, 6), (2, 2)])
def test_conv_glu_bands_equal_whole_map(budget, size):
    fast, ref = _pair()
    x = torch.randn(2, size[0] * size[1], 12)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval().forward_bands(x, size, budget),
                                   ref.eval()(x, size), rtol=1e-5, atol=1e-6)
