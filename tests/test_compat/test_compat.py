"""The older-torch paths of :mod:`mmtransnext.utils.compat`, exercised on this torch by
switching its feature flags off (the floor venv runs them for real: test_torch_range.py)."""
import warnings

import pytest
import torch

from mmtransnext.utils import compat

_LIBRARIES = []


@pytest.fixture
def old_torch(monkeypatch):
    """compat as on torch without ``torch.library.custom_op`` (before 2.4)."""
    monkeypatch.setattr(compat, 'HAS_CUSTOM_OP', False)
    monkeypatch.setattr(compat, '_plain_ops', {})


def _setup_context(ctx, inputs, output):
    x, power = inputs
    ctx.save_for_backward(x)
    ctx.power = power


def _backward(ctx, grad_out, grad_extra):
    x, = ctx.saved_tensors
    return grad_out * ctx.power * x ** (ctx.power - 1) + grad_extra, None


def test_plain_op_runs_its_function_and_its_registered_backward(old_torch):
    @compat.custom_op('mmtransnext_compat_test::power', mutates_args=())
    def power(x: torch.Tensor, p: int):
        return [x ** p, x.clone()]  # a list, as the Triton backward op returns

    @power.register_fake
    def _fake(x, p):
        raise AssertionError('no fake kernel runs without torch.compile')

    assert isinstance(power, compat.PlainOp)
    compat.register_autograd('mmtransnext_compat_test::power', _backward,
                             setup_context=_setup_context)
    x = torch.tensor([1.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    out, extra = power(x, 3)
    torch.testing.assert_close(out, x.detach() ** 3)
    (out * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + 5 * extra).sum().backward()
    torch.testing.assert_close(x.grad, 3 * x.detach() ** 2 * torch.tensor([1.0, 2.0, 3.0],
                                                                          dtype=torch.float64) + 5)
    with torch.no_grad():
        assert isinstance(power(x, 2), list)  # the function itself, no autograd.Function


def test_op_defined_in_cpp_gets_its_backward_as_autograd_kernel(old_torch):
    """An op without an autograd kernel (as those of csrc/): the formula becomes one."""
    library = torch.library.Library('mmtransnext_compat_test', 'DEF')
    _LIBRARIES.append(library)  # alive as long as compat's autograd kernel for it
    library.define('twice(Tensor x, int p) -> (Tensor, Tensor)')
    library.impl('twice', lambda x, p: (x ** p, x * 1), 'CPU')
    compat.register_autograd('mmtransnext_compat_test::twice', _backward,
                             setup_context=_setup_context)
    x = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    out, extra = torch.ops.mmtransnext_compat_test.twice(x, 2)
    (out.sum() + 3 * extra.sum()).backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() + 3)


def test_register_fake_is_skipped_on_old_torch(old_torch):
    compat.register_fake('mmtransnext_compat_test::missing', lambda x: x)  # no such op: no error


@pytest.mark.parametrize('device_autocast_api', [True, False])
def test_autocast_dtype_through_either_api(monkeypatch, device_autocast_api):
    if not device_autocast_api and not hasattr(torch, 'get_autocast_cpu_dtype'):
        pytest.skip(f'torch {torch.__version__} no longer has the per-device functions')
    if device_autocast_api and not hasattr(torch, 'get_autocast_dtype'):
        pytest.skip(f'torch {torch.__version__} has only the per-device functions')
    monkeypatch.setattr(compat, 'HAS_DEVICE_AUTOCAST_API', device_autocast_api)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # the per-device functions' deprecation
        assert compat.autocast_dtype('cpu') is None
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert compat.autocast_dtype('cpu') == torch.bfloat16
            assert compat.autocast_dtype('meta') is None


def test_versions_below_the_floor_are_named():
    assert compat.parse_version('2.1.2+cu121') == (2, 1)
    assert compat.parse_version('2.10.0a0+git1234') == (2, 10)
    assert compat.unsupported_torch_reason('2.1.0') is None
    assert compat.unsupported_torch_reason('2.14.1+cu130') is None
    reason = compat.unsupported_torch_reason('1.13.1+cu117')
    assert reason.startswith('mmtransnext needs torch >= 2.1, found torch 1.13.1+cu117: ')
    assert '\n' not in reason
    with pytest.raises(ValueError, match='not a version'):
        compat.parse_version('nightly')


def test_tracing_an_op_on_old_torch_warns_once_per_op(monkeypatch):
    monkeypatch.setattr(compat, 'is_compiling', lambda: True)
    compat.warn_no_compile.cache_clear()
    monkeypatch.setattr(compat, 'HAS_CUSTOM_OP', True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        compat.check_traceable('mmtransnext::a')  # custom ops: nothing to say
    monkeypatch.setattr(compat, 'HAS_CUSTOM_OP', False)
    with pytest.warns(RuntimeWarning, match='mmtransnext::a cannot be traced by torch.compile'):
        compat.check_traceable('mmtransnext::a')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        compat.check_traceable('mmtransnext::a')


class _RecordGrad(torch.autograd.Function):
    """Identity that records the layout of the gradient its backward receives."""
    seen = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _RecordGrad.seen.append(grad.is_contiguous())
        return grad


def test_contiguous_grad_hands_the_producer_a_contiguous_gradient():
    x = torch.randn(2, 6, 5, requires_grad=True)
    for hooked, expected in ((False, False), (True, True)):
        _RecordGrad.seen.clear()
        y = _RecordGrad.apply(x)
        if hooked:
            y = compat.contiguous_grad(y)
        grad = torch.randn(2, 5, 6).transpose(1, 2)  # transposed, as channels-last pooling
        x_grad, = torch.autograd.grad(y, x, grad)
        assert _RecordGrad.seen == [expected]
        torch.testing.assert_close(x_grad, grad, rtol=0, atol=0)
    plain = torch.randn(3)  # no gradient: returned as is, no hook
    assert compat.contiguous_grad(plain) is plain and plain._backward_hooks is None
