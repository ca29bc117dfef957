"""What the Triton attention wrapper decides before the kernels run: the TF32 choice read
through either torch API, the autocast rule (the dtypes the op receives, on fake CUDA tensors,
and the numbers under CPU autocast in the interpreter), deterministic mode in the backward, and
the device and int32-offset checks (on meta tensors: no memory)."""
import contextlib
import dataclasses
import types
import warnings

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

from mmtransnext import TransNeXt
from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention
from mmtransnext.models.layers.position_bias import cpb_grid
from mmtransnext.ops import budget
from mmtransnext.ops import triton_attention as ta
from mmtransnext.ops.amp import autocast_dtype, cuda_matmul_allows_tf32
from mmtransnext.ops.triton_attention import triton_attention
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
    """Inputs of a small interpreted call: (q, kp, vp, grid, taps..., size, pool) and the window
    keyword arguments."""
    size, pool = (3, 4), (2, 2)
    attn, table, q, keys, values, tok = _case_inputs(size, pool, None, 1, 3, full=full)
    taps = table.taps(size, pool)
    grid = cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table).detach()
    args = [q.to(dtype), keys[1].to(dtype), values[1].to(dtype), grid, taps.rows_h,
            taps.weights_h, taps.rows_w, taps.weights_w, size, pool]
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
