"""The self-test a kernel backend passes before the chooser trusts it on a device and dtype:
correct kernels pass; a wrong output, wrong gradients or an error fail it, with one warning
naming the error, and 'auto' moves that device and dtype to the next backend; it runs once per
key, only on CUDA by default (there in a child process), never with MMTRANSNEXT_SELF_TEST=0.
Its default case reaches the kernels' tiles, splits, odd batches and both folds of the bias,
and compares each tensor relative to its own scale: a missing share of a gradient fails it. A
child that crashes, exits or hangs is a failed self-test with one message, and the caller
carries on.

The kernels run here on CPU tensors: the Triton ones in Triton's interpreter (the tests'
conftest sets TRITON_INTERPRET=1, which the child processes inherit), with the self-test asked
for explicitly."""
import functools
import math
import re
import warnings

import pytest
import torch

from mmtransnext.ops import (cosine_attention, decisions, dispatch, load_extension, self_test,
                             self_test_process)
from mmtransnext.ops import triton_attention as triton_module
from mmtransnext.ops.backend import Backend
from mmtransnext.ops.triton_configs import KERNEL_CONFIGS, kernel_config
# The interpreter's bfloat16 tl.dot mended (autouse; this process only, the children run float32).
from test_triton_attention import _interpreted_kernels  # noqa: F401

F32 = torch.float32
#: The case the chooser ran before (5x7 map, 2x3 pooled keys, both axes of the bias resized,
#: batch 2): one query tile and one key tile, one split, one pair of batch items.
OLD = self_test.SelfTestCase(size=(5, 7), pool=(2, 3), table=(6, 8), table_pool=(3, 4),
                             full_size=(5, 7), full_table=(6, 8), batch=2)
#: The default case's odd batch and column-folded bias on the old map, one head, one layer.
MID = self_test.SelfTestCase(size=(5, 7), pool=(2, 3), table=(5, 4), table_pool=(2, 2),
                             batch=3, heads=1, layers=('aggregated',))
#: The old case cut to one layer, one head, one batch item (a few seconds in the interpreter).
SMALL = self_test.SelfTestCase(size=(5, 7), pool=(2, 3), table=(6, 8), table_pool=(3, 4),
                               batch=1, heads=1, layers=('aggregated',))


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No decision or failure recorded yet (and none kept after the test); the compiled ops
    loaded; the small case for the chooser's self-tests."""
    assert load_extension().loaded
    dispatch.reset()
    monkeypatch.setattr(self_test, 'CASE', SMALL)
    yield
    dispatch.reset()


def _backend(name, device='cpu', dtype=F32):
    window = 'ext' if name == 'ext' else 'torch'
    kernel = 'flash' if device == 'cpu' else 'math'
    return Backend(name, window, kernel, 'torch', device, dtype)


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


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_correct_kernels_pass():
    """On the default case's odd batch and column-folded bias (the whole default case, 3-5 min
    in the interpreter, passes too: max relative error 6.2e-6 for 'triton' in float32)."""
    for name in ('triton', 'ext'):
        result = self_test.run_self_test(_backend(name), MID)
        assert result.passed, result.summary()
        assert result.error is None and 0 < result.max_error < 1e-5
    result = self_test.run_self_test(_backend('triton', dtype=torch.bfloat16), MID)
    assert result.passed and result.max_error > 1e-3, result.summary()
    # the oracle against itself: nothing to see
    result = self_test.run_self_test(self_test.oracle_backend(_backend('torch')), MID)
    assert result.passed and result.max_error == 0


@pytest.mark.parametrize('fault', [_perturb_output, _perturb_gradients])
def test_wrong_numbers_fail_with_the_max_error(monkeypatch, fault):
    fault(monkeypatch)
    result = self_test.run_self_test(_backend('triton'))
    assert not result.passed and result.error is None
    assert result.max_error > 0.05 and math.isfinite(result.max_error)
    if fault is _perturb_output:  # the gradients are right
        assert result.worst == 'aggregated: output'
    else:
        assert result.worst.startswith('aggregated: grad of')
    assert f'max relative error {result.max_error:.2e} in {result.worst}' in result.summary()


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
    dispatch.reset()  # as in a fresh process
    _perturb_output(monkeypatch)
    with pytest.raises(RuntimeError, match=r"attn_impl='triton' was requested but the fused "
                                           r'Triton kernels failed their self-test \(max '
                                           r'relative error [0-9.e+-]+ in aggregated: '):
        _choose('triton', self_test=True)
    assert 'triton' in decisions.failures('cpu', F32)
    decisions.state.decisions.clear()  # the failure kept
    monkeypatch.setattr(self_test_process, 'verdict', lambda *a: pytest.fail('tested again'))
    with pytest.raises(RuntimeError, match='failed their self-test'):
        _choose('triton', self_test=True)
    assert _choose('triton', 'cpu', None, torch.float16).name == 'triton'  # another key


def test_auto_moves_on_with_one_warning(monkeypatch):
    """A faulty compiled window op: 'auto' takes PyTorch for that device and dtype, for good."""
    av = cosine_attention.sliding_window_av_ext
    monkeypatch.setattr(cosine_attention, 'sliding_window_av_ext', lambda *a: av(*a) + 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        decision = _choose('auto', self_test=True)
        for _ in range(2):
            assert _choose('auto', self_test=True) is decision
    assert decision.name == 'torch'
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert ('ext: the compiled sliding-window ops failed their self-test (max relative error'
            in messages[0])
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
                                        'aggregated: grad of q_weight', None, 0.1)

    monkeypatch.setattr(self_test_process, 'verdict', verdict)
    with pytest.warns(RuntimeWarning, match=r'triton: the fused Triton kernels failed their '
                                            r'self-test \(max relative error 5.00e-01 in '
                                            r'aggregated'):
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

    monkeypatch.setattr(self_test_process, 'verdict', passing)
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


def test_the_default_case_reaches_what_the_old_one_missed():
    """Several query and key tiles, two runs of the pooled-key backward, a half-filled second
    pair of batch items, and both folds of the bias (columns in the aggregated layer, rows with
    weighted taps in the full one), in every precision the kernels take."""
    case = self_test.SelfTestCase()  # the default (the fixture sets a small one as CASE)
    length, keys = math.prod(case.size), math.prod(case.pool)
    cpu = torch.device('cpu')
    for dtype in KERNEL_CONFIGS:
        forward = kernel_config(dtype, case.window, 'forward')
        query = kernel_config(dtype, case.window, 'query')
        key = kernel_config(dtype, case.window, 'keys')
        assert length > forward.block_m and length > query.block_m and length > key.block_m
        assert keys > key.block_n and keys > forward.block_n
        key_tiles = -(-keys // key.block_n) * case.batch * case.heads
        assert triton_module.key_splits(key_tiles, -(-length // key.block_m), cpu) > 1
        full = kernel_config(dtype, 0, 'forward')
        assert math.prod(case.full_size) > max(full.block_m, full.block_n)
    assert case.batch >= 3 and case.batch % triton_module.QUERY_ITEMS == 1
    taps, _ = self_test.case_taps(case.table, case.table_pool, case.size, case.pool)
    assert taps.fold_axis == 'columns' and taps.weights_h is None  # rows: one tap
    taps, _ = self_test.case_taps(case.full_table, case.full_table, case.full_size,
                                  case.full_size)
    assert taps.fold_axis == 'rows' and taps.weights_w is not None
    assert case.layers == ('aggregated', 'full')


def _lose_the_lone_last_item(monkeypatch):
    """The Triton backward as if the query kernel skipped the lone item of an odd batch's last
    pair (its query gradient left zero), right for even batches."""
    backward = triton_module._attention_backward

    def lossy(grad_out, *args):
        grads = backward(grad_out, *args)
        if grad_out.shape[0] % triton_module.QUERY_ITEMS:
            grads[0] = grads[0].clone()
            grads[0][-1] = 0
        return grads

    monkeypatch.setattr(triton_module, '_attention_backward', lossy)


def _old_check(candidate, case):
    """The former comparison: ``max |got - want| / (1 + |want|)`` over every tensor."""
    return max(((got.float() - want.float()).abs() / (1 + want.float().abs())).max().item()
               for _, got, want in self_test.compare(candidate, case))


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_a_kernel_wrong_on_an_odd_batch_fails_it_and_passed_the_old_case(monkeypatch):
    _lose_the_lone_last_item(monkeypatch)
    assert _old_check(_backend('triton'), OLD) <= 2e-3  # the former case and float32 check
    result = self_test.run_self_test(_backend('triton'), MID)
    assert not result.passed and result.error is None, result.summary()
    assert result.errors['aggregated: grad of the input'] > 0.1
    assert result.errors['aggregated: output'] < 1e-5  # the forward is right


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_in_a_child_process_it_gives_the_numbers_of_this_process(monkeypatch):
    """The child inherits the environment (TRITON_INTERPRET, the MMTRANSNEXT_* variables) and
    runs the same case on the same device and dtype."""
    monkeypatch.setenv('MMTRANSNEXT_SELF_TEST_PROBE', 'from the parent')
    probe = ("import os\n"
             "assert os.environ['MMTRANSNEXT_SELF_TEST_PROBE'] == 'from the parent'\n")
    here = self_test.run_self_test(_backend('triton'), SMALL)
    child = self_test_process.run_in_child(_backend('triton'), SMALL, child_setup=probe)
    assert child.passed and child.process == 'child process', child.summary()
    assert list(child.errors) == list(here.errors) and len(here.errors) == 14  # output, 13 grads
    # the same numbers up to summation order: the child's thread count and math settings are
    # its own (earlier tests of this process may have changed this process's)
    assert child.errors == pytest.approx(here.errors, rel=0.5, abs=1e-6)


#: Child setup: the compiled window op kills the process when the self-test calls it, as a
#: kernel's illegal memory access would (the parent's op is untouched).
_ABORT_IN_THE_OP = ('import os\n'
                    'from mmtransnext.ops import cosine_attention\n'
                    'cosine_attention.sliding_window_qk_ext = lambda *args: os.abort()\n')


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_a_child_that_crashes_gives_the_next_backend_and_one_message(monkeypatch):
    monkeypatch.setattr(self_test_process, 'CHILD_DEVICE_TYPES', ('cpu',))
    monkeypatch.setattr(self_test_process, 'run_in_child', functools.partial(
        self_test_process.run_in_child, child_setup=_ABORT_IN_THE_OP))
    crash = r'the self-test process was killed by signal \d+ \(SIGABRT\)'
    with pytest.raises(RuntimeError, match=r"attn_impl='ext' was requested but the compiled "
                                           r'sliding-window ops failed their self-test \(' +
                                           crash):
        _choose('ext', self_test=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        decision = _choose('auto', self_test=True)
    assert decision.name == 'torch'
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and re.search(crash, messages[0]), messages
    # this process carries on, its compiled ops included
    assert self_test.run_self_test(_backend('ext'), SMALL).passed


@pytest.mark.parametrize('setup, how', [
    ('1 / 0', r"exited with status 1 without a result; its last output line: "
              r"'ZeroDivisionError: division by zero'"),
    ('import time\ntime.sleep(600)', r'did not finish within 1 s and was killed')])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_a_child_that_exits_or_hangs_fails_it_saying_how(setup, how):
    result = self_test_process.run_in_child(_backend('triton'), SMALL, timeout=1 if 'sleep' in
                                            setup else 60, child_setup=setup)
    assert not result.passed and result.max_error == math.inf
    assert re.search('^the self-test process ' + how, result.summary()), result.summary()
