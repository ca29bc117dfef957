"""The one chooser of the attention backend: 'auto', 'triton', 'ext', 'torch' per device and
dtype, the pooled chunks' kernel, fallback and its warning, missing builds, one decision per
key, torch.compile, and the backbone giving the same result with either backend."""
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from mmtransnext import TransNeXt
from mmtransnext.ops import (cosine_attention, decisions, dispatch, extension, load_extension,
                             window_av, window_qk)
from mmtransnext.ops.backend import Backend
from mmtransnext.ops.sliding_window import sliding_window_av, sliding_window_qk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def perturb_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Move every parameter off its init (zero biases would hide mistakes)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


@pytest.fixture(scope='module', autouse=True)
def _extension():
    status = load_extension()
    assert status.loaded, f'the compiled ops could not be loaded: {status.error}'


@pytest.fixture
def fresh():
    """No decision or failure recorded yet (and none kept after the test)."""
    dispatch.reset()
    yield
    dispatch.reset()


@pytest.fixture
def unavailable(monkeypatch, fresh):
    """This process as if the compiled ops could not be loaded, before any decision."""
    monkeypatch.setattr(extension, '_status',
                        extension.ExtensionStatus(False, error='simulated: no build'))


def _inputs(size=(6, 7), window=5, heads=2, dim=8):
    length = size[0] * size[1]
    qkv = torch.randn(2, length, 3, heads, dim).permute(2, 0, 3, 1, 4)
    q, k, v = (t.requires_grad_() for t in qkv.detach().unbind(0))
    rpb = torch.randn(heads, window ** 2, requires_grad=True)
    return q, k, v, rpb, size, window


def _attention(impl, q, k, v, rpb, size, window):
    backend = dispatch.backend_for(impl, q)
    weights = window_qk(q, k, rpb, size, window, backend=backend).softmax(-1)
    return window_av(weights, v, size, window, backend=backend)


def test_ext_and_torch_agree_in_forward_and_backward():
    q, k, v, rpb, size, window = _inputs()
    results = []
    for impl in ('ext', 'torch'):
        out = _attention(impl, q, k, v, rpb, size, window)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, rpb))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_auto_uses_the_compiled_op_when_it_is_available(monkeypatch, fresh):
    def reference_must_not_run(*args, **kwargs):
        raise AssertionError('auto fell back although the compiled op is available')

    monkeypatch.setattr(cosine_attention, 'sliding_window_qk', reference_must_not_run)
    monkeypatch.setattr(cosine_attention, 'sliding_window_av', reference_must_not_run)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _attention('auto', *_inputs())


def test_auto_falls_back_to_pytorch_with_one_warning(unavailable):
    q, k, v, rpb, size, window = _inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outs = [_attention('auto', q, k, v, rpb, size, window) for _ in range(3)]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert 'simulated: no build' in messages[0]
    assert 'pip install -e . --no-build-isolation' in messages[0]
    weights = sliding_window_qk(q, k, rpb, size, window).softmax(-1)
    torch.testing.assert_close(outs[-1], sliding_window_av(weights, v, size, window))


def test_ext_when_unavailable_raises_and_says_how_to_build(unavailable):
    with pytest.raises(RuntimeError, match=r"attn_impl='ext'.*simulated: no build.*"
                                           r'pip install -e \. --no-build-isolation'):
        _attention('ext', *_inputs())


@pytest.fixture
def cuda(monkeypatch, fresh):
    """Pretend CUDA devices, without a GPU and without the self-test (it would need one):
    ``cuda['ext']`` / ``cuda['triton']`` set to a reason make those unavailable there."""
    reasons = {}
    monkeypatch.setattr(extension, 'unsupported_reason',
                        lambda device_type, dtype: reasons.get('ext') if device_type == 'cuda'
                        else 'simulated: only cuda')
    monkeypatch.setattr(dispatch, 'triton_unsupported_reason',
                        lambda device_type, dtype=None: reasons.get('triton'))
    monkeypatch.setenv(dispatch.SELF_TEST_ENV, '0')
    return reasons


def _choose(impl, device='cuda:0', dtype=torch.float16, **kwargs):
    device = torch.device(device)
    return dispatch.choose_backend(impl, device.type, device.index, dtype, **kwargs)


def test_auto_on_cuda_prefers_triton_then_the_compiled_ops(cuda):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert _choose('auto') == Backend('triton', 'torch', 'efficient', 'torch',
                                                   'cuda:0', torch.float16)
        cuda['triton'] = 'simulated: no triton'
        assert _choose('auto', dtype=torch.float16).name == 'triton'  # decided, kept
        assert _choose('ext') == Backend('ext', 'ext', 'efficient', 'torch', 'cuda:0',
                                                  torch.float16)
    with pytest.warns(RuntimeWarning, match=r"attn_impl='auto' on cuda:1 torch.bfloat16: the "
                                            r"compiled sliding-window ops \(triton: simulated: "
                                            r"no triton\)\. Pass attn_impl='ext'"):
        assert _choose('auto', 'cuda:1', torch.bfloat16).name == 'ext'


def test_auto_on_cuda_without_any_compiled_code_falls_back_once(cuda):
    cuda['triton'] = 'simulated: no triton'
    cuda['ext'] = 'simulated: not built for cuda tensors'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        choices = {_choose('auto', dtype=torch.float32) for _ in range(3)}
    assert choices == {Backend('torch', 'torch', 'efficient', 'torch', 'cuda:0',
                                        torch.float32)}
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert 'simulated: no triton' in message and 'simulated: not built for cuda' in message
    assert 'pip install -e . --no-build-isolation' in message
    with pytest.raises(RuntimeError, match="attn_impl='ext'.*simulated: not built"):
        _choose('ext', dtype=torch.float32)
    with pytest.raises(RuntimeError, match="attn_impl='triton'.*simulated: no triton"):
        _choose('triton', dtype=torch.float32)


def test_decisions_on_cpu_and_other_devices(fresh):
    assert _choose('auto', 'cpu', torch.float32) == Backend(
        'ext', 'ext', 'flash', 'compiled', 'cpu', torch.float32)
    assert _choose('torch', 'cpu', torch.bfloat16) == Backend(
        'torch', 'torch', 'flash', 'torch', 'cpu', torch.bfloat16)
    # CPU tensors run the Triton kernels only in its interpreter (set by the tests' conftest)
    assert _choose('triton', 'cpu', torch.float32).name == 'triton'
    with pytest.raises(RuntimeError, match=r"attn_impl='triton'.*not on meta"):
        _choose('triton', 'meta', torch.float32)
    with pytest.raises(RuntimeError, match=r"attn_impl='triton'.*float64"):
        _choose('triton', 'cpu', torch.float64)
    with pytest.warns(RuntimeWarning, match='not built for meta tensors'):
        assert _choose('auto', 'meta', torch.float32) == Backend(
            'torch', 'torch', 'math', 'torch', 'meta', torch.float32)


def test_the_decision_names_its_reason_in_the_log(fresh, monkeypatch):
    logged = []
    monkeypatch.setattr(decisions, 'print_log',
                        lambda msg, logger=None, level=None: logged.append((msg, level, logger)))
    _choose('auto', 'cpu', torch.float32)
    _choose('auto', 'cpu', torch.float32)
    assert logged == [("attn_impl='auto' on cpu torch.float32: the compiled sliding-window ops",
                       logging.INFO, 'current')]


def test_torch_never_asks_for_the_compiled_ops(monkeypatch, fresh):
    monkeypatch.setattr(extension, 'unsupported_reason',
                        lambda *a: pytest.fail('torch consulted the compiled ops'))
    monkeypatch.setattr(dispatch, 'triton_unsupported_reason',
                        lambda *a: pytest.fail('torch consulted triton'))
    for device_type in ('cpu', 'cuda', 'meta'):
        assert _choose('torch', device_type, torch.float32).name == 'torch'


def _layer():
    """An aggregated attention layer and the geometry of a 5x6 map with 2x3 pooled keys."""
    from mmtransnext.models.layers.attention import AggregatedAttention, StageGeometry
    from mmtransnext.models.layers.position_bias import build_position_table
    from mmtransnext.ops.sliding_window import window_lengths, window_padding_mask

    cpu = torch.device('cpu')
    size, pool = (5, 6), (2, 3)
    geometry = StageGeometry(size, pool, torch.log(window_lengths(size, 3, cpu) + 6),
                             build_position_table(size, pool, (14, 14), cpu), False,
                             window_padding_mask(size, 3, cpu))
    return perturb_(AggregatedAttention(16, 2, 3, 2)), geometry


def test_the_decision_is_made_once_per_key(monkeypatch, fresh):
    """A layer asks once per forward; the chooser decides once per (attn_impl, device, dtype)."""
    keys = []
    decide = dispatch._decide
    monkeypatch.setattr(dispatch, '_decide', lambda *args: keys.append(args[:4]) or decide(*args))
    layer, geometry = _layer()
    for dtype in (torch.float32, torch.float64, torch.float32):
        layer.to(dtype)
        for _ in range(2):
            layer(torch.randn(1, 30, 16, dtype=dtype), geometry).sum().backward()
    with torch.autocast('cpu', torch.bfloat16):
        layer.float()(torch.randn(1, 30, 16), geometry)
    assert keys == [('auto', 'cpu', None, torch.float32), ('auto', 'cpu', None, torch.float64),
                    ('auto', 'cpu', None, torch.bfloat16)]


def test_a_refused_pooled_kernel_changes_the_decision_for_that_key_only(cuda):
    assert _choose('ext').pooled_kernel == 'efficient'
    with pytest.warns(RuntimeWarning, match=r'No available kernel \(simulated\)\); using '
                                            r'unfused matmuls for cuda:0 torch.float16'):
        decisions.report_failure('cuda:0', torch.float16, 'efficient',
                                 'the kernel refused (No available kernel (simulated))')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once
        decisions.report_failure('cuda:0', torch.float16, 'efficient', 'again')
    for impl in ('ext', 'torch', 'auto'):
        decision = _choose(impl)
        assert decision.pooled_kernel == 'math' and 'No available kernel' in decision.reason
    assert _choose('ext', 'cuda:0', torch.float32).pooled_kernel == 'efficient'
    assert _choose('ext', 'cuda:1', torch.float16).pooled_kernel == 'efficient'
    assert set(decisions.failures('cuda:0', torch.float16)) == {'efficient'}


def test_backend_for_decides_for_the_tensor(cuda):
    """What a layer asks once per forward: the chooser's decision for the tensor's device and
    dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        tensor = torch.empty(1, device='cuda', dtype=torch.float16)  # metadata only, no GPU

    def triton(impl, tensor):
        return dispatch.backend_for(impl, tensor).name == 'triton'

    assert triton('auto', tensor) and triton('triton', tensor)
    assert not triton('ext', tensor) and not triton('torch', tensor)
    with pytest.warns(RuntimeWarning, match='simulated: only cuda'):
        assert not triton('auto', torch.zeros(1))  # 'auto' never takes triton on CPU


def test_chunks_are_sized_per_device(monkeypatch):
    from types import SimpleNamespace

    from mmtransnext.ops import budget
    from mmtransnext.ops import pooled_attention as pa
    assert pa.chunk_budget(torch.device('cpu')) == pa.CHUNK_ELEMENTS
    assert pa.chunk_budget(torch.device('meta')) is None  # whole map at once
    monkeypatch.setattr(torch.cuda, 'get_device_properties',
                        lambda index: SimpleNamespace(total_memory=(index + 1) * 16 << 30))
    budget._cuda_memory.cache_clear()
    try:
        # 1/16 of 16 GB (device 0) or 32 GB (device 1) shared by four float32 buffers, not
        # the CPU constant
        assert pa.chunk_budget(torch.device('cuda', 0)) == (1 << 30) // 16
        assert pa.chunk_budget(torch.device('cuda', 1)) == (2 << 30) // 16
        assert budget.element_budget(torch.device('cuda', 0), 7, buffers=1) == (1 << 30) // 4
    finally:
        budget._cuda_memory.cache_clear()
    with budget.gpu_budgets(16 << 30):  # CPU tensors sized as on a 16 GB GPU
        assert pa.chunk_budget(torch.device('cpu')) == (1 << 30) // 16
    assert pa.chunk_budget(torch.device('cpu')) == pa.CHUNK_ELEMENTS
    with pytest.raises(ValueError, match='total_memory'):
        with budget.gpu_budgets(0):
            pass
    assert pa.chunk_rows(2, 3, 128, 256, None) is None


def test_gpu_budgets_run_loops_whole():
    """Under GPU budgets the CPB MLP and the ConvGLU bands run in one chunk (their launches do
    not grow with the input); on CPU they are chunked. Same numbers either way."""
    from mmtransnext.models.layers import conv_glu, position_bias
    from mmtransnext.ops import budget
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func in (torch.ops.aten._addmm_activation.default,
                               torch.ops.aten.gelu_.default)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    fc1, fc2 = torch.nn.Linear(2, 512), torch.nn.Linear(512, 3)
    table = position_bias.build_position_table((96, 80), (12, 10), (7, 7), torch.device('cpu'))
    glu = conv_glu.ConvGLU(16, 192).eval()
    x = torch.randn(1, 64 * 90, 16)
    results = {}
    for simulate in (False, True):
        with torch.no_grad(), Count() as count, \
                (budget.gpu_budgets(80 << 30) if simulate else contextlib.nullcontext()):
            grid = position_bias.cpb_grid(fc1, fc2, table)
            out = glu.forward_bands(x, (64, 90))
        results[simulate] = count.n, grid, out
    assert results[True][0] == 2 < results[False][0]
    torch.testing.assert_close(results[True][1], results[False][1])
    torch.testing.assert_close(results[True][2], results[False][2])


def test_attn_impl_torch_runs_no_compiled_code(monkeypatch):
    """'torch' means no compiled code at all, bias expansion included, forward and backward;
    same numbers as the compiled ops."""
    from mmtransnext.ops import bias_ops

    arch = dict(embed_dims=[16, 32, 32, 64], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1])
    models = {impl: TransNeXt(arch, img_size=64, attn_impl=impl) for impl in ('auto', 'torch')}
    perturb_(models['auto'])
    models['torch'].load_state_dict(models['auto'].state_dict())
    x = torch.randn(1, 3, 80, 72)
    results = {}
    for impl in ('auto', 'torch'):
        if impl == 'torch':
            for module, name in [(extension, 'load_extension'),
                                 (extension, 'expand_bias_available'),
                                 (bias_ops, 'register'),
                                 (cosine_attention, 'sliding_window_qk_ext'),
                                 (cosine_attention, 'sliding_window_av_ext')]:
                monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail('compiled code'))
        outs = models[impl](x)
        loss = sum(out.square().mean() for out in outs)
        results[impl] = (outs, torch.autograd.grad(loss, list(models[impl].parameters())))
    for got, want in zip(results['torch'][0], results['auto'][0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(results['torch'][1], results['auto'][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_unsupported_device_type_is_a_reason_to_fall_back():
    reason = extension.unsupported_reason('mps', torch.float32)
    assert reason is not None and 'not built for mps tensors' in reason


def test_the_ops_take_a_backend_not_an_attn_impl():
    """The layer decides once per forward and passes the decision down; an op given an
    ``attn_impl`` string says so instead of deciding again."""
    from mmtransnext.ops.pooled_attention import pooled_attention

    q, k, v, rpb, size, window = _inputs()
    with pytest.raises(TypeError, match=r"window_qk takes the Backend decided for this forward, "
                                        r"got str 'ext'"):
        window_qk(q, k, rpb, size, window, backend='ext')
    with pytest.raises(TypeError, match=r"window_av takes the Backend .* got str 'torch'"):
        window_av(torch.zeros(2, 2, 42, window ** 2), v, size, window, backend='torch')
    folded, rows = torch.zeros(2, 6, 1, 3), torch.zeros(7, 1, 1, dtype=torch.long)
    with pytest.raises(TypeError, match=r"pooled_attention takes the Backend .* got str 'auto'"):
        pooled_attention(q, k[:, :, :1], v[:, :, :1], folded, rows, None, backend='auto')


def test_bad_impl_is_rejected():
    with pytest.raises(ValueError,
                       match=r"attn_impl must be one of \('auto', 'triton', 'ext', 'torch'\)"):
        _attention('cuda', *_inputs())


def test_failed_jit_build_is_reported_not_raised(monkeypatch):
    from torch.utils import cpp_extension

    def broken_load(*args, **kwargs):
        raise RuntimeError('Error building extension: simulated compiler failure')

    monkeypatch.setattr(cpp_extension, 'load', broken_load)
    status = extension._jit_build()
    assert not status.loaded
    assert 'JIT build failed: Error building extension: simulated' in status.error


def test_jit_build_can_be_disabled(monkeypatch):
    monkeypatch.setattr(extension, '_status', None)
    monkeypatch.setattr(extension.window_ops, 'op_defined', lambda *a: False)
    monkeypatch.setattr(extension, '_import_built',
                        lambda: extension.ExtensionStatus(False, error='mmtransnext._ext missing'))
    monkeypatch.setattr(extension, '_jit_build', lambda: pytest.fail('JIT build attempted'))
    monkeypatch.setenv(extension.JIT_ENV, '0')
    status = extension.load_extension()
    assert not status.loaded
    assert status.error == 'mmtransnext._ext missing; JIT build disabled by MMTRANSNEXT_JIT_BUILD=0'


def test_a_process_without_any_build_imports_and_falls_back():
    # A fresh interpreter in which neither the built module nor a JIT build is available.
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules['mmtransnext._ext'] = None  # makes `import mmtransnext._ext` fail
        import torch
        import mmtransnext
        from mmtransnext.ops import backend_for, load_extension, window_qk
        status = load_extension()
        assert not status.loaded, status
        q = torch.randn(1, 1, 6, 4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            window_qk(q, q, torch.zeros(1, 9), (2, 3), 3, backend=backend_for('auto', q))
            window_qk(q, q, torch.zeros(1, 9), (2, 3), 3, backend=backend_for('auto', q))
        assert len(caught) == 1, [str(w.message) for w in caught]
        try:
            window_qk(q, q, torch.zeros(1, 9), (2, 3), 3, backend=backend_for('ext', q))
        except RuntimeError as exc:
            print(exc)
        """)
    env = dict(os.environ, MMTRANSNEXT_JIT_BUILD='0',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "attn_impl='ext' was requested but" in result.stdout
    assert 'JIT build disabled by MMTRANSNEXT_JIT_BUILD=0' in result.stdout


class LocalAttention(nn.Module):
    """The local half of aggregated attention, enough to trace both ops and their backward."""

    def __init__(self, heads: int, window: int, impl: str) -> None:
        super().__init__()
        self.rpb = nn.Parameter(torch.randn(heads, window ** 2))
        self.window = window
        self.impl = impl

    def forward(self, q, k, v, size):
        backend = dispatch.backend_for(self.impl, q)
        weights = window_qk(q, k, self.rpb, size, self.window, backend=backend).softmax(-1)
        return window_av(weights, v, size, self.window, backend=backend)


@pytest.mark.parametrize('impl', ['ext', 'auto'])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_torch_compile_fullgraph(impl):
    torch._dynamo.reset()
    model = LocalAttention(2, 3, impl)
    reference = LocalAttention(2, 3, 'torch')
    reference.load_state_dict(model.state_dict())
    q, k, v, _, size, _ = _inputs(size=(5, 6), window=3)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager' if impl == 'auto'
                             else 'inductor')
    out = compiled(q, k, v, size)
    expected = reference(q, k, v, size)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v, model.rpb))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v, reference.rpb))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_a_layer_under_torch_compile_sees_the_decision_as_a_constant(monkeypatch, fresh):
    """The whole fast path of a layer in one graph: the decision is made once, while tracing,
    and the graph runs the chosen ops (same numbers and gradients as eager)."""
    torch._dynamo.reset()
    keys = []
    decide = dispatch._decide
    monkeypatch.setattr(dispatch, '_decide', lambda *args: keys.append(args[:4]) or decide(*args))
    layer, geometry = _layer()
    x = torch.randn(2, 30, 16, requires_grad=True)
    compiled = torch.compile(lambda x: layer(x, geometry), backend='aot_eager', fullgraph=True)
    outs = [compiled(x), compiled(x), layer(x, geometry)]
    assert keys == [('auto', 'cpu', None, torch.float32)]
    torch.testing.assert_close(outs[0], outs[2])
    grads = [torch.autograd.grad(out.square().sum(), [x, *layer.parameters()]) for out in outs]
    for got, want in zip(grads[0], grads[2]):
        torch.testing.assert_close(got, want)


def test_backbone_with_ext_equals_backbone_with_torch():
    models = {impl: TransNeXt('tiny', depths=[1, 1, 1, 1], attn_impl=impl)
              for impl in ('ext', 'torch')}
    perturb_(models['ext'])
    models['torch'].load_state_dict(models['ext'].state_dict())
    x = torch.randn(1, 3, 224, 320)
    outs = {}
    for impl, model in models.items():
        model.eval()
        with torch.no_grad():
            outs[impl] = model(x)
    for got, want in zip(outs['ext'], outs['torch']):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_backbone_gradients_with_ext_equal_gradients_with_torch():
    models = {impl: TransNeXt('tiny', depths=[1, 1, 1, 1], attn_impl=impl)
              for impl in ('ext', 'torch')}
    perturb_(models['ext'])
    models['torch'].load_state_dict(models['ext'].state_dict())
    x = torch.randn(1, 3, 96, 128)
    grads = {}
    for impl, model in models.items():
        loss = sum(out.square().mean() for out in model(x))
        grads[impl] = dict(zip([n for n, _ in model.named_parameters()],
                               torch.autograd.grad(loss, list(model.parameters()))))
    for name, want in grads['torch'].items():
        torch.testing.assert_close(grads['ext'][name], want, rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f'{name}: {m}')
