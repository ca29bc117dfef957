"""The self-test a kernel backend passes before the chooser trusts it on a device and dtype:
correct kernels pass; a wrong output, wrong gradients or an error fail it, with one warning
naming the error, and 'auto' moves that device and dtype to the next backend; it runs once per
key, only on CUDA by default, never with MMTRANSNEXT_SELF_TEST=0.

The kernels run here on CPU tensors: the Triton ones in Triton's interpreter (the tests'
conftest sets TRITON_INTERPRET=1), with the self-test asked for explicitly."""
import math
import warnings

import pytest
import torch

from mmtransnext.ops import dispatch, load_extension, self_test
from mmtransnext.ops import triton_attention as triton_module

F32 = torch.float32
#: The default case costs about half a minute in the interpreter: one layer, one head, batch 1.
SMALL = self_test.SelfTestCase(batch=1, heads=1, layers=('aggregated',))


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No decision or failure recorded yet (restored after the test); the compiled ops loaded;
    the small case for the chooser's self-tests."""
    assert load_extension().loaded
    monkeypatch.setattr(dispatch, '_decisions', {})
    monkeypatch.setattr(dispatch, '_failures', {})
    monkeypatch.setattr(dispatch, '_passed', {})
    monkeypatch.setattr(self_test, 'CASE', SMALL)


def _backend(name, device='cpu', dtype=F32):
    window = 'ext' if name == 'ext' else 'torch'
    kernel = 'flash' if device == 'cpu' else 'math'
    return dispatch.Backend(name, window, kernel, 'torch', device, dtype)


def _choose(impl, device_type='cpu', index=None, dtype=F32, **kwargs):
    return dispatch.choose_backend(impl, device_type, index, dtype, **kwargs)


def _perturb_output(monkeypatch, factor=1.5):
    """The Triton op as if its forward kernel scaled the output, its gradients right."""
    attention = triton_module._attention

    def wrong(*args):
        out, lse = attention(*args)
        return out + ((factor - 1) * out).detach(), lse

    monkeypatch.setattr(triton_module, '_attention', wrong)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.5


def _perturb_gradients(monkeypatch):
    """Right outputs, wrong gradients (as a faulty backward kernel would give)."""
    attention = triton_module._attention

    def wrong(*args):
        out, lse = attention(*args)
        return _ScaleGrad.apply(out), lse

    monkeypatch.setattr(triton_module, '_attention', wrong)


def test_correct_kernels_pass_the_full_case():
    case = self_test.SelfTestCase()  # what the chooser runs on a GPU
    for name in ('triton', 'ext'):
        result = self_test.run_self_test(_backend(name), case)
        assert result.passed, result.summary()
        assert result.error is None and 0 < result.max_error < 1e-4
    # the oracle against itself: nothing to see
    result = self_test.run_self_test(self_test.oracle_backend(_backend('torch')), case)
    assert result.passed and result.max_error == 0


@pytest.mark.parametrize('fault', [_perturb_output, _perturb_gradients])
def test_wrong_numbers_fail_with_the_max_error(monkeypatch, fault):
    fault(monkeypatch)
    result = self_test.run_self_test(_backend('triton'))
    assert not result.passed and result.error is None
    assert result.max_error > 0.05 and math.isfinite(result.max_error)
    assert result.worst.startswith('aggregated: grad of')  # e.g. of proj.weight after an output
    assert f'max error {result.max_error:.2e} in {result.worst}' in result.summary()


def test_an_error_fails_it(monkeypatch):
    def launch_failure(*args):
        raise RuntimeError('simulated: out of shared memory\nmore lines')

    monkeypatch.setattr(triton_module, '_attention', launch_failure)
    result = self_test.run_self_test(_backend('triton'))
    assert not result.passed and result.max_error == math.inf
    assert result.error == 'RuntimeError: simulated: out of shared memory'
    assert result.worst == 'aggregated'


def test_a_requested_backend_that_fails_raises_and_is_not_retried(monkeypatch):
    assert _choose('triton', self_test=True).name == 'triton'  # the real kernels pass
    monkeypatch.setattr(dispatch, '_decisions', {})  # as in a fresh process
    monkeypatch.setattr(dispatch, '_passed', {})
    _perturb_output(monkeypatch)
    with pytest.raises(RuntimeError, match=r"attn_impl='triton' was requested but the fused "
                                           r'Triton kernels failed their self-test \(max error '
                                           r'[0-9.e+-]+ in aggregated: '):
        _choose('triton', self_test=True)
    assert 'triton' in dispatch.failures('cpu', F32)
    monkeypatch.setattr(dispatch, '_decisions', {})
    monkeypatch.setattr(self_test, 'run_self_test', lambda *a: pytest.fail('tested again'))
    with pytest.raises(RuntimeError, match='failed their self-test'):
        _choose('triton', self_test=True)
    assert _choose('triton', 'cpu', None, torch.float16).name == 'triton'  # another key


def test_auto_moves_on_with_one_warning(monkeypatch):
    """A faulty compiled window op: 'auto' takes PyTorch for that device and dtype, for good."""
    av = dispatch.sliding_window_av_ext
    monkeypatch.setattr(dispatch, 'sliding_window_av_ext', lambda *a: av(*a) + 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        decision = _choose('auto', self_test=True)
        for _ in range(2):
            assert _choose('auto', self_test=True) is decision
    assert decision.name == 'torch'
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert 'ext: the compiled sliding-window ops failed their self-test (max error' in messages[0]
    assert 'in aggregated: ' in messages[0]
    with pytest.raises(RuntimeError, match='failed their self-test'):
        _choose('ext')
    assert _choose('auto', dtype=torch.float64).name == 'ext'  # other dtypes are not affected


def test_auto_on_cuda_moves_from_triton_to_the_compiled_ops(monkeypatch):
    """The order on CUDA (simulated: no GPU here), each candidate tested once."""
    monkeypatch.setattr(dispatch.extension, 'unsupported_reason', lambda *a: None)
    monkeypatch.setattr(dispatch, 'triton_unsupported_reason', lambda *a: None)
    tested = []

    def verdict(candidate):
        tested.append((candidate.name, candidate.device, candidate.dtype))
        passed = candidate.name != 'triton'
        return self_test.SelfTestResult(passed, 0.01 if passed else 0.5, 0.02,
                                        'aggregated: grad of q.weight', None, 0.1)

    monkeypatch.setattr(self_test, 'run_self_test', verdict)
    with pytest.warns(RuntimeWarning, match=r'triton: the fused Triton kernels failed their '
                                            r'self-test \(max error 5.00e-01 in aggregated'):
        decision = _choose('auto', 'cuda', 0, torch.bfloat16)
    assert decision.name == 'ext' and 'self-test passed' in decision.reason
    for _ in range(3):
        assert _choose('auto', 'cuda', 0, torch.bfloat16) is decision
        assert _choose('ext', 'cuda', 0, torch.bfloat16).name == 'ext'
    assert tested == [('triton', 'cuda:0', torch.bfloat16), ('ext', 'cuda:0', torch.bfloat16)]


def test_it_runs_on_cuda_by_default_and_the_env_var_turns_it_off(monkeypatch):
    monkeypatch.setattr(dispatch, 'triton_unsupported_reason', lambda *a: None)
    calls = []

    def passing(candidate):
        calls.append(candidate.device)
        return self_test.SelfTestResult(True, 0., 0.02, 'aggregated: output', None, 0.)

    monkeypatch.setattr(self_test, 'run_self_test', passing)
    _choose('triton')  # CPU (interpreter): not by default
    monkeypatch.delenv(dispatch.SELF_TEST_ENV, raising=False)
    _choose('triton', 'cuda', 0)
    monkeypatch.setenv(dispatch.SELF_TEST_ENV, '0')
    _choose('triton', 'cuda', 1)
    _choose('triton', 'cuda', 2, self_test=False)
    _choose('triton', 'cuda', 3, self_test=True)  # an argument wins over the variable
    assert calls == ['cuda:0', 'cuda:3']


def test_it_leaves_the_caller_state_alone():
    """Under no_grad / inference mode and autocast, without touching the random state."""
    state = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16):
        result = self_test.run_self_test(_backend('triton'))
        assert torch.is_inference_mode_enabled() and torch.is_autocast_enabled('cpu')
    assert result.passed, result.summary()
    assert torch.equal(torch.get_rng_state(), state)
