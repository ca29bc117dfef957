"""The compiled sliding-window ops (csrc/, CUDA kernels) against the pure-PyTorch reference of
mmtransnext/ops/sliding_window.py run in float64 on the same GPU: forward and every gradient,
odd map sizes and batches, windows wider than the map, the non-contiguous q/k/v an attention
block passes, float64/float32/bfloat16/float16, and the dtype autocast hands the op; and every
kernel run twice on the same inputs with the same bits (no atomics: each output element is
written by one thread, the bias gradient reduced by one block in a fixed order)."""
import pytest
import torch

from gpu_helpers import DTYPES, check_close, differing_bits, ext_reason
from mmtransnext.ops import backend_for, window_av, window_qk
from mmtransnext.ops.sliding_window import (sliding_window_av, sliding_window_qk,
                                            window_padding_mask)
from mmtransnext.ops.window_ops import sliding_window_av_ext, sliding_window_qk_ext

pytestmark = pytest.mark.gpu

CUDA = torch.device('cuda')
WINDOW_DTYPES = dict(fp64=torch.float64, **DTYPES)
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2,
              torch.float16: 1e-2}

# (batch, heads, (H, W), window, head dim)
CASES = [
    (2, 2, (1, 1), 3, 24),
    (1, 3, (1, 7), 5, 8),
    (3, 2, (7, 9), 3, 24),
    (1, 2, (7, 9), 7, 12),
    (5, 3, (37, 53), 3, 24),
    (1, 2, (37, 53), 5, 7),
]


@pytest.fixture(autouse=True)
def _compiled_ops():
    reason = ext_reason('cuda')
    if reason:
        pytest.skip(reason)


def _ids(case):
    batch, heads, size, window, dim = case
    return f'b{batch}-h{heads}-{size[0]}x{size[1]}-w{window}-d{dim}'


def projections(batch, heads, size, dim, dtype, parts):
    """``parts`` (B, heads, H*W, dim) views of one projection, as the attention block makes them
    (rows strided, channels contiguous)."""
    x = torch.randn(batch, size[0] * size[1], parts, heads, dim, device=CUDA, dtype=dtype)
    return [t.requires_grad_() for t in x.permute(2, 0, 3, 1, 4).detach().unbind(0)]


def leaves(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize('dtype', list(WINDOW_DTYPES))
@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_qk_matches_the_reference(case, dtype):
    dtype = WINDOW_DTYPES[dtype]
    batch, heads, size, window, dim = case
    q, k = projections(batch, heads, size, dim, dtype, 2)
    rpb = torch.randn(heads, window ** 2, device=CUDA, dtype=dtype, requires_grad=True)
    out = sliding_window_qk_ext(q, k, rpb, size, window)
    refs = leaves(q, k, rpb)
    want = sliding_window_qk(*refs, size, window)
    mask = window_padding_mask(size, window, CUDA).expand_as(out)
    assert out.dtype == dtype and out.isneginf().equal(mask)
    tol = TOLERANCES[dtype]
    check_close('out', out.masked_fill(mask, 0), want.masked_fill(mask, 0), dtype, tol=tol)
    grad = torch.randn(out.shape, device=CUDA, dtype=dtype)  # also at the -inf positions
    got = torch.autograd.grad(out, (q, k, rpb), grad)
    wanted = torch.autograd.grad(want, refs, grad.double().masked_fill(mask, 0))
    for name, g, w in zip(('dq', 'dk', 'drpb'), got, wanted):
        assert g.dtype == dtype, name
        check_close(name, g, w, dtype, tol=tol, floor=1.0)


@pytest.mark.parametrize('dtype', list(WINDOW_DTYPES))
@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_av_matches_the_reference(case, dtype):
    dtype = WINDOW_DTYPES[dtype]
    batch, heads, size, window, dim = case
    (v,) = projections(batch, heads, size, dim, dtype, 1)
    attn = torch.rand(batch, heads, size[0] * size[1], window ** 2, device=CUDA, dtype=dtype)
    attn.requires_grad_()
    out = sliding_window_av_ext(attn, v, size, window)
    refs = leaves(attn, v)
    want = sliding_window_av(*refs, size, window)
    tol = TOLERANCES[dtype]
    check_close('out', out, want, dtype, tol=tol)
    grad = torch.randn(out.shape, device=CUDA, dtype=dtype)
    got = torch.autograd.grad(out, (attn, v), grad)
    wanted = torch.autograd.grad(want, refs, grad.double())
    for name, g, w in zip(('dattn', 'dv'), got, wanted):
        assert g.dtype == dtype, name
        # Out-of-map window positions: zero gradient, as the reference's zero padding gives.
        check_close(name, g, w, dtype, tol=tol, floor=1.0)


@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_ops_compute_in_the_autocast_dtype(dtype):
    """Under autocast the dispatcher hands the op autocast's dtype (float32 queries and the
    float32 bias parameter in), as the reference path's matmuls compute."""
    dtype = DTYPES[dtype]
    size, window = (7, 9), 3
    q, k = projections(1, 2, size, 24, torch.float32, 2)
    rpb = torch.randn(2, window ** 2, device=CUDA, requires_grad=True)
    with torch.autocast('cuda', dtype=dtype):
        backend = backend_for('ext', q)
        logits = window_qk(q, k, rpb, size, window, backend=backend)
        out = window_av(logits.softmax(-1), k, size, window, backend=backend)
    assert logits.dtype == dtype and out.dtype == dtype
    out.float().sum().backward()
    assert q.grad.dtype == rpb.grad.dtype == torch.float32
    assert torch.isfinite(q.grad).all() and torch.isfinite(rpb.grad).all()


@pytest.mark.parametrize('dtype', list(WINDOW_DTYPES))
@pytest.mark.parametrize('case', [CASES[2], CASES[4]], ids=_ids)
def test_every_kernel_gives_the_same_bits_twice(case, dtype):
    dtype = WINDOW_DTYPES[dtype]
    batch, heads, size, window, dim = case
    q, k, v = projections(batch, heads, size, dim, dtype, 3)
    rpb = torch.randn(heads, window ** 2, device=CUDA, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, heads, size[0] * size[1], dim, device=CUDA, dtype=dtype)
    runs = []
    for _ in range(2):
        logits = sliding_window_qk_ext(q, k, rpb, size, window)
        weights = logits.float().softmax(-1).to(dtype)
        out = sliding_window_av_ext(weights, v, size, window)
        runs.append([logits, out] + list(torch.autograd.grad(out, (q, k, v, rpb), grad)))
    for name, a, b in zip(('logits', 'out', 'dq', 'dk', 'dv', 'drpb'), *runs):
        differ = differing_bits(a, b)
        assert differ == 0, f'{name}: {differ} of {a.numel()} values differ between two runs'
