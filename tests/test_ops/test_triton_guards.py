"""What the Triton attention wrapper decides before the kernels run: the TF32 choice read
through either torch API, the autocast rule (the dtypes the op receives, on fake CUDA tensors,
and the numbers under CPU autocast in the interpreter), deterministic mode in the backward, and
the device and int32-offset checks (on meta tensors: no memory)."""
import contextlib
import dataclasses
import re
import types
import warnings

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

from triton_launches import LaunchRecorder

from mmtransnext import TransNeXt
from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention
from mmtransnext.models.layers.position_bias import cpb_grid, fold_rows
from mmtransnext.ops import dispatch
from mmtransnext.ops import triton_attention as ta
from mmtransnext.ops.amp import autocast_dtype, cuda_matmul_allows_tf32
from mmtransnext.ops.device import DeviceProperties, assume_device
from mmtransnext.ops.triton_attention import triton_attention
from mmtransnext.ops.triton_configs import TRITON_FLOOR
from reference import perturb_, reference_bias
# The interpreter check and its bfloat16 tl.dot mend (autouse), the oracle and its inputs.
from test_triton_attention import _interpreted_kernels  # noqa: F401
from test_triton_attention import PRETRAIN, _case_inputs, _geometry, naive_attention

META = torch.device('meta')
OP = torch.ops.mmtransnext.triton_attention.default
OP_BACKWARD = torch.ops.mmtransnext.triton_attention_backward.default


class OpCalls(TorchDispatchMode):
    """Records the arguments, by name, of each call of the attention op (and of its backward)
    as the dispatcher hands them to the kernels, i.e. after autograd and autocast."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (OP, OP_BACKWARD):
            names = [a.name for a in func._schema.arguments]
            self.calls.append((func, dict(zip(names, args), **(kwargs or {}))))
        return func(*args, **(kwargs or {}))

    def forward_args(self):
        return [args for func, args in self.calls if func is OP]


# --- TF32 -----------------------------------------------------------------------------------

@pytest.fixture
def tf32_state():
    """Restores the precision settings the tests change (the legacy
    ``set_float32_matmul_precision`` sets the CUDA and oneDNN matmul ones)."""
    settings = [('generic', 'all'), ('cuda', 'matmul'), ('mkldnn', 'matmul')]
    saved = [torch._C._get_fp32_precision_getter(*s) for s in settings]
    yield
    for setting, value in zip(settings, saved):
        torch._C._set_fp32_precision_setter(*setting, value)


def _set_matmul(value):
    torch.backends.cuda.matmul.fp32_precision = value


def _set_global(value):
    torch.backends.fp32_precision = value


def _set_legacy(value):
    torch.backends.cuda.matmul.allow_tf32 = value


TF32_SETTINGS = {
    'matmul tf32': ([lambda: _set_matmul('tf32')], True),
    'matmul ieee': ([lambda: _set_matmul('ieee')], False),
    'global tf32': ([lambda: _set_matmul('none'), lambda: _set_global('tf32')], True),
    'global ieee': ([lambda: _set_matmul('none'), lambda: _set_global('ieee')], False),
    'matmul ieee over global tf32': ([lambda: _set_global('tf32'), lambda: _set_matmul('ieee')],
                                     False),
    'legacy allow_tf32': ([lambda: _set_legacy(True)], True),
    'legacy high precision': ([lambda: torch.set_float32_matmul_precision('high')], True),
    'legacy off': ([lambda: _set_legacy(False)], False),
}


def _small_attention(full=False, dtype=torch.float32, device=None):
    """Inputs of a small interpreted call: (q, kp, vp, folded grid, column taps..., size, pool)
    and the window keyword arguments."""
    size, pool = (3, 4), (2, 2)
    attn, table, q, keys, values, tok = _case_inputs(size, pool, None, 1, 3, full=full)
    taps = table.taps(size, pool)
    grid = cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table).detach()
    args = [q.to(dtype), keys[1].to(dtype), values[1].to(dtype),
            *fold_rows(grid, table, size, pool), size, pool]
    local = {} if full else dict(k_local=keys[0].to(dtype), v_local=values[0].to(dtype),
                                 token_weights=tok.to(dtype),
                                 local_bias=attn.relative_pos_bias_local.detach())
    return args, local


@pytest.mark.parametrize('setting', list(TF32_SETTINGS))
def test_tf32_choice_is_read_through_the_current_api(setting, tf32_state, monkeypatch):
    """Each way of setting TF32, the new API's included (reading ``allow_tf32`` after it
    raises): the helper's answer and the precision the float32 kernels are given."""
    steps, allowed = TF32_SETTINGS[setting]
    for step in steps:
        step()
    assert cuda_matmul_allows_tf32() is allowed
    precisions = []
    original = ta._precision

    def recording(dtype, tf32):
        precisions.append(original(dtype, tf32))
        return precisions[-1]

    monkeypatch.setattr(ta, '_precision', recording)
    args, local = _small_attention(full=True)
    with OpCalls() as calls:
        out = triton_attention(*args, **local)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert [a['tf32'] for a in calls.forward_args()] == [allowed]
    assert precisions == ['tf32' if allowed else 'ieee']


def test_tf32_choice_on_torch_without_the_new_api(monkeypatch):
    """torch < 2.9: no ``fp32_precision`` attribute, the legacy flag decides."""
    for flag in (True, False):
        monkeypatch.setattr(torch.backends.cuda, 'matmul', types.SimpleNamespace(allow_tf32=flag))
        assert cuda_matmul_allows_tf32() is flag


def test_sixteen_bit_kernels_ignore_tf32():
    assert ta._precision(torch.bfloat16, False) == ta._precision(torch.float16, False) == 'tf32'
    assert ta._precision(torch.float32, False) == 'ieee'


# --- autocast --------------------------------------------------------------------------------

@pytest.fixture
def cuda_autocast(monkeypatch):
    """``torch.autocast('cuda', dtype)`` as on a GPU: without one it turns itself off (and
    refuses bfloat16); the fake CUDA tensors below need it on. The chunk budgets read the
    device's memory: an 80 GB one."""
    monkeypatch.setattr(torch.cuda.amp.common, 'amp_definitely_not_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *args, **kwargs: True)
    dispatch.reset()

    def enter(dtype):
        return torch.autocast('cuda', dtype=dtype)

    # The backend's self-test would run the kernels, which fake tensors cannot.
    with assume_device(DeviceProperties(total_memory=80 << 30, self_test=False)):
        yield enter
    dispatch.reset()  # decisions made without the self-test are not kept


def _fake_mode():
    return FakeTensorMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def _quiet_fake_data_ptr():
    # The layers key their CPB-grid cache on data_ptr(), which fake tensors only warn about.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Accessing the data pointer of FakeTensor')
        yield


def _to_fake_cuda(module: nn.Module) -> nn.Module:
    """``module`` with fake CUDA parameters and buffers (to be called inside a fake mode).
    ``Module.to`` cannot do it: it swaps the real tensors for fake ones in place, which the
    fake mode's memo of the real tensors forbids."""
    cuda = torch.device('cuda')
    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(p.to(cuda), p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = b.to(cuda)
    return module


def _geometry_to_fake_cuda(geometry):
    """``geometry`` built on the host (with its taps) as fake CUDA tensors (inside a fake mode):
    the host code that builds tables and taps reads tensor values, which fake tensors lack."""
    cuda = torch.device('cuda')
    table = geometry.table
    with unset_fake_temporarily():
        taps = table.taps(geometry.size, geometry.pool_size)
    fake = dataclasses.replace(table, values_h=table.values_h.to(cuda),
                               values_w=table.values_w.to(cuda), index_h=table.index_h.to(cuda),
                               index_w=table.index_w.to(cuda), coords=table.coords.to(cuda))
    fake_taps = taps.to(cuda)
    fake._taps.get((tuple(geometry.size), tuple(geometry.pool_size)), lambda: fake_taps)
    scale, mask = geometry.seq_length_scale, geometry.padding_mask
    return dataclasses.replace(
        geometry, table=fake, seq_length_scale=scale.to(cuda) if torch.is_tensor(scale) else scale,
        padding_mask=None if mask is None else mask.to(cuda))


def _fake_cuda_args(full, mode):
    """:func:`_small_attention`'s float32 inputs as fake CUDA tensors, with a query transform."""
    args, local = _small_attention(full=full)
    heads, dim = args[0].shape[1], args[0].shape[3]
    local.update(query_embedding=torch.randn(heads, dim), head_scale=torch.rand(heads) + 0.5,
                 query_scale=torch.rand(args[0].shape[2]) + 1)
    with mode:
        cuda = torch.device('cuda')
        args = [a.to(cuda) if torch.is_tensor(a) else a for a in args]
        local = {name: t.to(cuda) for name, t in local.items()}
    return args, local


def _assert_autocast_dtypes(op_args, dtype, window=True):
    """The attention inputs in ``dtype``; the query transform, CPB grid, tap weights and local
    bias in float32."""
    attention = ('q', 'kp', 'vp') + (('k', 'v', 'tok') if window else ())
    for name in attention:
        assert op_args[name].dtype == dtype, name
    for name in ('qe', 'head_scale', 'query_scale', 'folded') + (('rpb',) if window else ()):
        assert op_args[name].dtype == torch.float32, name
    assert op_args['weights_w'] is None or op_args['weights_w'].dtype == torch.float32


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('full', [False, True])
def test_op_receives_the_cuda_autocast_dtype(full, dtype, cuda_autocast):
    mode = _fake_mode()
    args, local = _fake_cuda_args(full, mode)
    with mode, cuda_autocast(dtype), OpCalls() as calls:
        out = triton_attention(*args, **local)
    assert out.dtype == dtype and out.device.type == 'cuda'
    (op_args,) = calls.forward_args()
    _assert_autocast_dtypes(op_args, dtype, window=not full)


def test_without_autocast_the_dtypes_are_kept(cuda_autocast):
    """No autocast: float32 stays float32; mixed inputs promote. Autocast for another device
    type than the inputs' changes nothing either."""
    mode = _fake_mode()
    args, local = _fake_cuda_args(False, mode)
    with mode, OpCalls() as calls:
        assert triton_attention(*args, **local).dtype == torch.float32
        local['v_local'] = local['v_local'].bfloat16()
        assert triton_attention(*args, **local).dtype == torch.float32
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert triton_attention(*args, **local).dtype == torch.float32
        args[0] = args[0].bfloat16()
        local['k_local'], local['token_weights'] = (local[name].bfloat16()
                                                    for name in ('k_local', 'token_weights'))
        args[1], args[2] = args[1].half(), args[2].half()
        assert triton_attention(*args, **local).dtype == torch.float32  # bf16 + fp16
    for op_args in calls.forward_args():
        for name in ('q', 'kp', 'vp', 'k', 'v', 'tok'):
            assert op_args[name].dtype == torch.float32, name


@pytest.mark.parametrize('full', [False, True])
def test_layers_hand_the_op_the_cuda_autocast_dtype(full, cuda_autocast):
    """The layers under CUDA autocast on fake CUDA tensors: ``F.normalize`` returns float32
    there, yet the kernels must get bfloat16 queries and keys (tensor cores)."""
    size, pool, trained = (7, 9), (3, 4), ((8, 8), (4, 4))
    if full:
        pool = size
        attn = perturb_(FullAttention(48, 2, attn_impl='triton'))
    else:
        attn = perturb_(AggregatedAttention(48, 2, 3, 2, attn_impl='triton'))
    geometry = _geometry(size, pool, None if full else 3, trained)
    mode = _fake_mode()
    with mode, _quiet_fake_data_ptr():
        attn = _to_fake_cuda(attn)
        geometry = _geometry_to_fake_cuda(geometry)
        x = torch.empty(2, 63, 48, device='cuda')
        with cuda_autocast(torch.bfloat16), OpCalls() as calls:
            out = attn(x, geometry)
    assert out.shape == (2, 63, 48) and out.dtype == torch.bfloat16
    (op_args,) = calls.forward_args()
    _assert_autocast_dtypes(op_args, torch.bfloat16, window=not full)


def test_backbone_hands_the_op_the_cuda_autocast_dtype(cuda_autocast):
    arch = dict(embed_dims=[16, 32, 32, 32], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1])
    model = perturb_(TransNeXt(arch, img_size=64, pretrain_size=64, attn_impl='triton')).eval()
    host_geometry = model.stage_geometry

    def geometry(stage, size, device):
        with unset_fake_temporarily():
            built = host_geometry(stage, size, torch.device('cpu'))
        assert device.type == 'cuda'
        return _geometry_to_fake_cuda(built)

    model.stage_geometry = geometry
    mode = _fake_mode()
    with mode, _quiet_fake_data_ptr():
        model = _to_fake_cuda(model)
        img = torch.empty(1, 3, 45, 70, device='cuda')
        with cuda_autocast(torch.bfloat16), OpCalls() as calls:
            outs = model(img)
    assert len(outs) == 4
    calls = calls.forward_args()
    assert len(calls) == 4  # one block per stage
    for op_args in calls:
        window = op_args['k'] is not None
        _assert_autocast_dtypes(op_args, torch.bfloat16, window=window)


def test_cpu_autocast_numerics_match_the_oracle():
    """In the interpreter under CPU autocast: float32 inputs, bfloat16 kernels, bfloat16 output,
    float32 gradients, all within bfloat16 tolerances of the float32 oracle."""
    size, pool, trained = (7, 9), (3, 4), ((8, 8), (4, 4))
    attn, table, q, keys, values, tok = _case_inputs(size, pool, trained, 1, 3)
    leaves = [t.clone().requires_grad_() for t in (q, keys[1], values[1], keys[0], values[0],
                                                   tok)]
    folded = fold_rows(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table).detach(), table, size, pool)
    rpb = attn.relative_pos_bias_local.detach()
    with torch.autocast('cpu', dtype=torch.bfloat16), OpCalls() as calls:
        out = triton_attention(*leaves[:3], *folded, size, pool, k_local=leaves[3],
                               v_local=leaves[4], token_weights=leaves[5], local_bias=rpb)
    assert out.dtype == torch.bfloat16
    _assert_autocast_dtypes(calls.forward_args()[0], torch.bfloat16)
    grad_out = torch.randn(out.shape)
    got = [out] + list(torch.autograd.grad(out, leaves, grad_out.bfloat16()))

    ref = [t.detach().clone().requires_grad_() for t in leaves]
    bias = reference_bias(attn, size, pool, PRETRAIN, trained).detach()
    expected = naive_attention(ref[0], ref[1], ref[2], bias, size, (*ref[3:], rpb))
    want = [expected] + list(torch.autograd.grad(expected, ref, grad_out))
    names = ['out', 'dq', 'dk_pool', 'dv_pool', 'dk_local', 'dv_local', 'dtoken']
    for name, g, w in zip(names, got, want):
        assert g.dtype == (torch.bfloat16 if name == 'out' else torch.float32), name
        error = (g.float() - w).abs().max().item()
        assert error <= 3e-2 * max(w.abs().max().item(), 0.1), f'{name}: max error {error:.3g}'
    # And a real difference from the float32 kernels: the inputs were rounded to bfloat16.
    with torch.no_grad():
        plain = triton_attention(*leaves[:3], *folded, size, pool, k_local=leaves[3],
                                 v_local=leaves[4], token_weights=leaves[5], local_bias=rpb)
    assert plain.dtype == torch.float32 and not torch.equal(plain.bfloat16(), out.detach())


def test_autocast_rule_holds_under_torch_compile():
    """Compiled (fullgraph), the op gets the autocast dtype under autocast and float32 without:
    the autocast state read in the wrapper is part of what a graph is guarded on."""
    args, local = _small_attention()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    @torch.compile(backend=backend, fullgraph=True)
    def attend(q, kp, vp, k, v, tok):
        return triton_attention(q, kp, vp, *args[3:], k_local=k, v_local=v, token_weights=tok,
                                local_bias=local['local_bias'])

    inputs = args[:3] + [local['k_local'], local['v_local'], local['token_weights']]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert attend(*inputs).dtype == torch.bfloat16
    assert attend(*inputs).dtype == torch.float32
    assert len(graphs) == 2
    for gm, dtype in zip(graphs, (torch.bfloat16, torch.float32)):
        (node,) = [n for n in gm.graph.nodes if 'triton_attention' in str(n.target)]
        names = [a.name for a in OP._schema.arguments]
        op_args = {name: a.meta['example_value'] if isinstance(a, torch.fx.Node) else a
                   for name, a in zip(names, node.args)}
        _assert_autocast_dtypes(op_args, dtype)


def test_autocast_dtype_helper():
    assert autocast_dtype('cpu') is None and autocast_dtype('meta') is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert autocast_dtype('cpu') == torch.bfloat16
        assert autocast_dtype('cuda') is None and autocast_dtype('meta') is None


# --- deterministic mode ----------------------------------------------------------------------

@pytest.fixture
def determinism():
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def _meta_call(requires_grad=True):
    """A window attention call on meta tensors (shapes only) and its differentiable inputs."""
    size, pool, heads, dim = (7, 9), (3, 4), 2, 24
    shapes = [(2, heads, n, dim) for n in (63, 12, 12, 63, 63)] + [(2, heads, 63, 9)]
    leaves = [torch.empty(s, device=META, requires_grad=requires_grad) for s in shapes]
    folded = torch.empty(heads, 7, 3, 12, device=META, requires_grad=requires_grad)
    rows_w = torch.empty(9, 4, 2, dtype=torch.long, device=META)
    rpb = torch.empty(heads, 9, device=META)
    out = triton_attention(*leaves[:3], folded, rows_w, torch.empty(9, 4, 2, device=META), size,
                           pool, k_local=leaves[3], v_local=leaves[4], token_weights=leaves[5],
                           local_bias=rpb)
    return out, leaves + [folded]


def test_deterministic_mode_refuses_the_atomic_backward(determinism):
    torch.use_deterministic_algorithms(True)
    out, inputs = _meta_call()  # the forward has no atomics: allowed
    with pytest.raises(RuntimeError, match='mmtransnext::triton_attention_backward'):
        torch.autograd.grad(out.sum(), inputs)


def test_deterministic_warn_only_warns_and_runs(determinism):
    torch.use_deterministic_algorithms(True, warn_only=True)
    out, inputs = _meta_call()
    with pytest.warns(UserWarning, match='mmtransnext::triton_attention_backward'):
        grads = torch.autograd.grad(out.sum(), inputs)
    assert [g.shape for g in grads] == [t.shape for t in inputs]
    torch.use_deterministic_algorithms(False)
    out, inputs = _meta_call()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        torch.autograd.grad(out.sum(), inputs)


# --- the triton release ----------------------------------------------------------------------

def test_a_triton_below_the_floor_is_never_asked_to_compile(monkeypatch):
    """Below ``TRITON_FLOOR`` the kernels are never compiled in this process: 'auto' passes
    over them once with the reason (installed and needed release), 'triton' raises it, and a
    direct call of the op is refused before any launch."""
    import triton
    floor = '.'.join(map(str, TRITON_FLOOR))
    dispatch.reset()
    monkeypatch.setattr(dispatch.extension, 'unsupported_reason',
                        lambda *args: 'simulated: no CUDA build')
    monkeypatch.setenv(dispatch.SELF_TEST_ENV, '0')
    monkeypatch.setattr(triton, '__version__', '3.0.0')
    needs = rf'the Triton kernels need triton >= {floor}, but triton 3\.0\.0 is installed'
    assert re.match(needs, dispatch.triton_unsupported_reason('cuda', torch.float16))
    with pytest.warns(RuntimeWarning, match=r"attn_impl='auto' on cuda:0 .*triton: " + needs):
        assert dispatch.choose_backend('auto', 'cuda', 0, torch.float16).name == 'torch'
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # said once
        assert dispatch.choose_backend('auto', 'cuda', 0, torch.float16).name == 'torch'
    with pytest.raises(RuntimeError, match=r"attn_impl='triton' was requested but " + needs):
        dispatch.choose_backend('triton', 'cuda', 0, torch.float16)
    args, local = _small_attention()
    with LaunchRecorder() as recorder, pytest.raises(RuntimeError, match=needs):
        triton_attention(*args, **local)
    assert recorder.launches == []
    monkeypatch.setattr(triton, '__version__', floor + '.0')
    assert dispatch.triton_unsupported_reason('cuda', torch.float16) is None


# --- devices and int32 offsets ---------------------------------------------------------------

def test_inputs_on_another_device_raise():
    args, local = _small_attention()
    for name in ('k_pool', 'folded', 'rows_w', 'token_weights', 'local_bias'):
        call = dict(zip(('q', 'k_pool', 'v_pool', 'folded', 'rows_w', 'weights_w', 'size',
                         'pool_size'), args), **local)
        call[name] = call[name].to(META)
        with pytest.raises(ValueError, match=f'{name} is on meta but q is on cpu'):
            triton_attention(**call)
    with pytest.raises(ValueError, match='query_scale is on meta but q is on cpu'):
        triton_attention(*args, **local, query_scale=torch.ones((), device=META))
    mode = _fake_mode()
    with mode:
        q = args[0].to('cuda')
        with pytest.raises(ValueError, match=r'v_pool is on cpu but q is on cuda:0'):
            triton_attention(q, args[1].to('cuda'), *args[2:], **local)


def test_queries_on_a_device_the_kernels_cannot_run_on_raise(monkeypatch):
    args, local = _small_attention()
    monkeypatch.setenv('TRITON_INTERPRET', '0')  # CPU tensors need the interpreter
    with pytest.raises(ValueError, match='runs on CUDA tensors.*q is on cpu'):
        triton_attention(*args, **local)


def _overflow_call(q_shape, window=3, pool=(1, 1), **views):
    """A call on meta tensors with queries of ``q_shape`` (the map one row of ``N`` queries)."""
    batch, heads, length, dim = q_shape
    size = (1, length)
    kp = torch.empty(batch, heads, pool[0] * pool[1], dim, device=META)
    folded = torch.empty(heads, 1, pool[0], 3, device=META)
    rows_w = torch.empty(length, pool[1], 2, dtype=torch.long, device=META)
    local = {}
    if window:
        local = dict(k_local=torch.empty(q_shape, device=META),
                     v_local=torch.empty(q_shape, device=META),
                     token_weights=torch.empty(batch, heads, length, window ** 2, device=META),
                     local_bias=torch.empty(heads, window ** 2, device=META))
    call = dict(q=torch.empty(q_shape, device=META), k_pool=kp, v_pool=kp, folded=folded,
                rows_w=rows_w, weights_w=torch.empty(rows_w.shape, device=META), size=size,
                pool_size=pool, **local)
    call.update(views)
    return triton_attention(**call)


def test_int32_offset_overflow_raises():
    limit = 'int32 offsets.*2\\*\\*31 = 2147483648'
    with pytest.raises(ValueError, match=r'q of shape \(1, 1, 67108864, 32\).*' + limit):
        _overflow_call((1, 1, 2 ** 26, 32), window=0)
    # Token weights larger than the queries they go with (window 5: 25 weights, 8 channels).
    with pytest.raises(ValueError, match=r'token_weights of shape \(1, 1, 134217728, 25\)'):
        _overflow_call((1, 1, 2 ** 27, 8), window=5)
    # A strided view whose rows lie beyond int32 offsets though it holds few elements.
    spread = torch.empty(2 ** 31 + 64, device=META).as_strided((1, 1, 2, 8), (16, 16, 2 ** 31, 1))
    with pytest.raises(ValueError, match=r'v_pool of shape \(1, 1, 2, 8\).*spans 2147483656'):
        _overflow_call((1, 1, 4, 8), window=0, pool=(1, 2), v_pool=spread)
    # Just under the limit within a slice: accepted (the fake implementation runs, no memory).
    out = _overflow_call((1, 1, 2 ** 26 - 1, 32), window=0)
    assert out.shape == (1, 1, 2 ** 26 - 1, 32)


def test_the_output_layout_is_checked_against_int32_offsets():
    """The output is stored as ``(B, N, heads, d)``: one (batch, head) slice of it spans about
    ``heads`` times a slice of ``q``, so 4 heads of queries within the limit can overflow it."""
    with pytest.raises(ValueError, match=r'out of shape \(1, 4, 16777216, 64\).*int32 offsets'):
        _overflow_call((1, 4, 2 ** 24, 64), window=0)
    out = _overflow_call((1, 1, 2 ** 24, 64), window=0)  # one head: the layouts coincide
    assert out.shape == (1, 1, 2 ** 24, 64)


@pytest.mark.parametrize('full', [False, True])
@pytest.mark.parametrize('transform', [False, True])
def test_an_empty_batch_launches_nothing_and_gives_zero_gradients(full, transform):
    """A batch of 0: no kernel launch (a grid of 0 programs, and no key splits to divide by),
    an empty output, and gradients of the batch's shape (empty) or zero (the CPB grid, the
    local bias, the query transform)."""
    args, local = _small_attention(full=full)
    q, kp, vp, folded, rows_w, weights_w, size, pool = args
    empty = [t[:0].clone().requires_grad_() for t in (q, kp, vp)]
    local = {name: (t[:0].clone().requires_grad_() if name != 'local_bias' else
                    t.clone().requires_grad_()) for name, t in local.items()}
    folded = folded.clone().requires_grad_()
    extra = {}
    if transform:
        extra = dict(query_embedding=torch.randn(2, 24, requires_grad=True),
                     head_scale=torch.rand(2, requires_grad=True),
                     query_scale=torch.rand(12, requires_grad=True))
    with LaunchRecorder() as recorder:  # a launch would be recorded (and not run)
        out = triton_attention(*empty, folded, rows_w, weights_w, size, pool, **local, **extra)
        assert out.shape == (0, 2, 12, 24) and out.dtype == q.dtype
        leaves = empty + [folded] + list(local.values()) + list(extra.values())
        grads = torch.autograd.grad(out.sum(), leaves)
    assert recorder.launches == []
    for leaf, grad in zip(leaves, grads):
        assert grad.shape == leaf.shape
        assert not grad.abs().any()
    cpu = torch.device('cpu')
    assert ta.key_splits(0, 5, cpu) == ta.key_splits(4, 0, cpu) == 1


def test_large_batches_are_not_limited_by_int32_offsets():
    # 2.3 G elements in all, 32768 per (batch, head) slice: the slices' bases are int64.
    out = _overflow_call((70000, 1, 1024 * 32, 1), window=0)
    assert out.shape == (70000, 1, 1024 * 32, 1)
