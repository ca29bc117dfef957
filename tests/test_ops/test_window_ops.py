"""The compiled sliding-window ops (csrc/) against the pure-PyTorch reference (the oracle).

Forward and every gradient, at map sizes from one pixel to a window wider than the map, with the
non-contiguous q/k/v the attention block passes; gradcheck in float64; opcheck; argument errors.
"""
import copy

import pytest
import torch

from mmtransnext.ops import load_extension
from mmtransnext.ops.sliding_window import (sliding_window_av, sliding_window_qk,
                                            window_padding_mask)
from mmtransnext.ops.window_ops import sliding_window_av_ext, sliding_window_qk_ext

ops = torch.ops.mmtransnext
CPU = torch.device('cpu')


@pytest.fixture(scope='module', autouse=True)
def _extension():
    status = load_extension()
    assert status.loaded, f'the compiled ops could not be loaded: {status.error}'


def projections(batch, heads, size, dim, dtype=torch.float32, parts=2):
    """``parts`` (B, heads, H*W, dim) views of one (B, H*W, parts, heads, dim) projection, as the
    attention block makes them (non-contiguous rows, contiguous channels)."""
    length = size[0] * size[1]
    x = torch.randn(batch, length, parts, heads, dim, dtype=dtype)
    return [t.requires_grad_() for t in x.permute(2, 0, 3, 1, 4).detach().unbind(0)]


def leaves(*tensors):
    """float64 copies for the reference: the comparison then measures the kernel's error only."""
    return [t.detach().double().requires_grad_() for t in tensors]


def close(got, want, dtype, **kwargs):
    # float32 sums over up to (batch * H*W) terms: a float32-sized error, not a bit-exact one.
    tol = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got, want.to(got.dtype), **tol, **kwargs)


# (batch, heads, (H, W), window, head dim): one pixel, one row, window wider than the map,
# odd sizes, and a stage-like map.
CASES = [
    (1, 1, (1, 1), 3, 4),
    (2, 2, (1, 1), 7, 3),
    (1, 3, (1, 7), 3, 8),
    (2, 1, (1, 7), 5, 5),
    (2, 4, (2, 3), 7, 6),
    (1, 2, (2, 3), 3, 16),
    (2, 3, (13, 17), 3, 24),
    (1, 4, (13, 17), 5, 7),
    (2, 2, (13, 17), 7, 12),
    (1, 3, (50, 76), 3, 24),
    (2, 1, (50, 76), 5, 8),
]


def _ids(case):
    batch, heads, size, window, dim = case
    return f'b{batch}-h{heads}-{size[0]}x{size[1]}-w{window}-d{dim}'


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_qk_matches_reference_forward_and_gradients(case, dtype):
    batch, heads, size, window, dim = case
    q, k = projections(batch, heads, size, dim, dtype)
    rpb = torch.randn(heads, window ** 2, dtype=dtype, requires_grad=True)
    out = sliding_window_qk_ext(q, k, rpb, size, window)
    q_ref, k_ref, rpb_ref = leaves(q, k, rpb)
    expected = sliding_window_qk(q_ref, k_ref, rpb_ref, size, window)
    close(out, expected, dtype)
    assert out.isneginf().equal(window_padding_mask(size, window, q.device).expand_as(out))

    # Any upstream gradient, also at the -inf positions: there it must contribute nothing.
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, rpb), grad)
    masked = grad.masked_fill(expected.isneginf(), 0).double()
    expected_grads = torch.autograd.grad(expected, (q_ref, k_ref, rpb_ref), masked)
    for name, got, want in zip(('q', 'k', 'rpb'), grads, expected_grads):
        close(got, want, dtype, msg=lambda m: f'grad_{name}: {m}')


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_av_matches_reference_forward_and_gradients(case, dtype):
    batch, heads, size, window, dim = case
    (v,) = projections(batch, heads, size, dim, dtype, parts=1)
    # Finite, non-zero weights everywhere, outside the map too (the block adds learnable-token
    # weights after the softmax): outside positions must still contribute nothing.
    attn = torch.randn(batch, heads, size[0] * size[1], window ** 2, dtype=dtype,
                       requires_grad=True)
    out = sliding_window_av_ext(attn, v, size, window)
    attn_ref, v_ref = leaves(attn, v)
    expected = sliding_window_av(attn_ref, v_ref, size, window)
    close(out, expected, dtype)

    grad = torch.randn_like(out)
    grad_attn, grad_v = torch.autograd.grad(out, (attn, v), grad)
    want_attn, want_v = torch.autograd.grad(expected, (attn_ref, v_ref), grad.double())
    close(grad_attn, want_attn, dtype)
    close(grad_v, want_v, dtype)
    outside = window_padding_mask(size, window, v.device).expand_as(grad_attn)
    assert grad_attn[outside].eq(0).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_accumulates_in_float(dtype):
    size, window = (9, 11), 5
    q, k, v = projections(2, 3, size, 24, dtype, parts=3)
    rpb = torch.randn(3, window ** 2)
    attn = sliding_window_qk_ext(q, k, rpb, size, window)
    # the float32 bias added after the half products, as the reference adds it
    assert attn.dtype == sliding_window_qk(q, k, rpb, size, window).dtype == torch.float32
    assert sliding_window_qk_ext(q, k, rpb.to(dtype), size, window).dtype == dtype
    expected = sliding_window_qk(*(t.detach().double() for t in (q, k, rpb)), size, window)
    torch.testing.assert_close(attn.double(), expected, rtol=1e-2, atol=1e-2)
    weights = attn.float().softmax(-1).to(dtype)
    out = sliding_window_av_ext(weights, v, size, window)
    expected = sliding_window_av(weights.detach().double(), v.detach().double(), size, window)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


def test_mixed_dtypes_are_promoted():
    # float32 bias and float32 queries with float64 keys; float32 weights with float64 values.
    size, window = (4, 5), 3
    q, k, v = projections(1, 2, size, 4, torch.float64, parts=3)
    rpb = torch.randn(2, 9)
    attn = sliding_window_qk_ext(q.float(), k, rpb, size, window)
    assert attn.dtype == torch.float64
    torch.testing.assert_close(attn, sliding_window_qk(q.float().double(), k, rpb.double(), size,
                                                       window))
    weights = torch.randn(1, 2, 20, 9)
    out = sliding_window_av_ext(weights, v, size, window)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, sliding_window_av(weights.double(), v, size, window))


def test_autocast_computes_in_the_autocast_dtype_like_the_reference():
    # Under CPU autocast the block's queries are float32 (scaled after normalisation) while keys,
    # values and weights may be bfloat16 or float32: the reference's matmuls run in bfloat16.
    size, window = (6, 5), 3
    q, k, v = projections(2, 2, size, 8, parts=3)
    rpb = torch.randn(2, 9, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        attn = sliding_window_qk_ext(q, k.bfloat16(), rpb, size, window)
        expected = sliding_window_qk(q, k.bfloat16(), rpb, size, window)
        out = sliding_window_av_ext(attn.softmax(-1), v, size, window)
        expected_out = sliding_window_av(expected.softmax(-1), v, size, window)
    # The reference adds the float32 bias after its bfloat16 matmul, hence float32 logits: the
    # op's bfloat16 dot products, rounded as the matmul's, plus the bias.
    assert attn.dtype == expected.dtype == torch.float32
    assert out.dtype == expected_out.dtype == torch.bfloat16
    inside = expected.isfinite()
    assert torch.equal(attn.isfinite(), inside)
    torch.testing.assert_close(attn[inside], expected[inside], rtol=0, atol=2e-6)
    torch.testing.assert_close(out, expected_out, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v, rpb))
    expected_grads = torch.autograd.grad(expected_out.float().sum(), (q, k, v, rpb))
    assert [g.dtype for g in grads] == [torch.float32] * 4
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_autocast_keeps_the_layer_gradients_as_accurate_as_the_reference():
    """The compiled ops inside an aggregated-attention layer under CPU bf16 autocast: every
    gradient within twice the error of the pure-PyTorch path, both against the official
    computation (``attention_mode='reference'``) in float64. The temperature's gradient, a sum
    over the map of cancelling terms, was 3.9x the PyTorch path's error here (44% of its scale)
    while the op rounded the logits, bias included, to bfloat16."""
    from mmtransnext.models.layers.attention import AggregatedAttention, StageGeometry
    from mmtransnext.models.layers.position_bias import build_position_table
    from mmtransnext.ops.sliding_window import window_lengths, window_padding_mask
    from reference import perturb_
    torch.manual_seed(0)
    size, pool, heads = (37, 53), (4, 6), 2
    table = build_position_table(size, pool, (6, 6), CPU)
    scale = torch.log(window_lengths(size, 3, CPU) + pool[0] * pool[1])
    geometry = StageGeometry(size, pool, scale, table, False, window_padding_mask(size, 3, CPU))
    layer = perturb_(AggregatedAttention(heads * 24, heads, 3, 8), std=0.2)
    x = torch.randn(2, size[0] * size[1], heads * 24)
    grad_out = torch.randn(x.shape)

    def gradients(impl, dtype):
        model = copy.deepcopy(layer).to(dtype)
        model.attn_impl = impl
        model.attention_mode = 'fast' if impl else 'reference'
        inputs = x.to(dtype).detach().clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.float32):
            out = model(inputs, geometry)
        out.backward(grad_out.to(out.dtype))
        return {'dx': inputs.grad, **{n: p.grad for n, p in model.named_parameters()}}

    want = gradients(None, torch.float64)
    errors = {impl: {n: (g.double() - want[n]).abs().max().item()
                     for n, g in gradients(impl, torch.float32).items()}
              for impl in ('torch', 'ext')}
    assert errors['ext'].keys() == want.keys()
    for name, error in errors['ext'].items():
        scale = want[name].abs().max().item()
        assert error <= max(2 * errors['torch'][name], 1e-3 * scale), \
            (name, error, errors['torch'][name])


def test_strided_channels_and_broadcast_batches_are_read_correctly():
    size, window = (5, 6), 3
    # Channels with stride 2 (copied inside the op) and a batch expanded with stride 0.
    q = torch.randn(1, 2, 30, 16, dtype=torch.float64)[..., ::2].expand(3, -1, -1, -1)
    k = torch.randn(3, 2, 30, 8, dtype=torch.float64)
    rpb = torch.randn(2, 9, dtype=torch.float64)
    torch.testing.assert_close(sliding_window_qk_ext(q, k, rpb, size, window),
                               sliding_window_qk(q, k, rpb, size, window))
    attn = torch.randn(3, 2, 9, 30, dtype=torch.float64).transpose(-1, -2)  # strided weights
    torch.testing.assert_close(sliding_window_av_ext(attn, k, size, window),
                               sliding_window_av(attn, k, size, window))


def test_results_do_not_depend_on_the_thread_count():
    size, window = (40, 30), 5
    q, k = projections(2, 3, size, 24)
    rpb = torch.randn(3, window ** 2, requires_grad=True)
    grad = torch.randn(2, 3, 1200, window ** 2)

    def run():
        out = sliding_window_qk_ext(q, k, rpb, size, window)
        return torch.autograd.grad(out, (q, k, rpb), grad)

    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(threads, 4)):  # 4 where the suite's worker has one thread
            torch.set_num_threads(count)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize('size,window', [((3, 4), 3), ((2, 5), 5), ((1, 1), 3)])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_gradcheck_float64(size, window):
    q, k, v = projections(2, 2, size, 3, torch.float64, parts=3)
    rpb = torch.randn(2, window ** 2, dtype=torch.float64, requires_grad=True)
    mask = window_padding_mask(size, window, q.device)

    def qk(q, k, rpb):
        # -inf logits have no finite difference; they are checked in the tests above.
        return sliding_window_qk_ext(q, k, rpb, size, window).masked_fill(mask, 0)

    def attention(q, k, v, rpb):
        weights = sliding_window_qk_ext(q, k, rpb, size, window).softmax(-1)
        return sliding_window_av_ext(weights, v, size, window)

    attn = torch.randn(2, 2, size[0] * size[1], window ** 2, dtype=torch.float64,
                       requires_grad=True)
    assert torch.autograd.gradcheck(qk, (q, k, rpb))
    assert torch.autograd.gradcheck(lambda a, v: sliding_window_av_ext(a, v, size, window),
                                    (attn, v))
    assert torch.autograd.gradcheck(attention, (q, k, v, rpb))


def test_opcheck_every_op():
    size, window = (4, 5), 3
    q, k, v = projections(2, 2, size, 4, parts=3)
    rpb = torch.randn(2, 9, requires_grad=True)
    attn = torch.randn(2, 2, 20, 9, requires_grad=True)
    grad_attn = torch.randn(2, 2, 20, 9)
    grad_out = torch.randn(2, 2, 20, 4)
    plain = [t.detach() for t in (q, k, v)]
    for op, args in [
        (ops.sliding_window_qk.default, (q, k, rpb, *size, window)),
        (ops.sliding_window_av.default, (attn, v, *size, window)),
        (ops.sliding_window_qk_backward.default, (grad_attn, plain[0], plain[1], *size, window)),
        (ops.sliding_window_av_backward.default, (grad_out, attn.detach(), plain[2], *size,
                                                  window)),
    ]:
        torch.library.opcheck(op, args)


def _qk_args(**overrides):
    args = dict(q=torch.randn(1, 2, 12, 4), k=torch.randn(1, 2, 12, 4), rpb=torch.randn(2, 9),
                height=3, width=4, window=3)
    args.update(overrides)
    return list(args.values())


def _av_args(**overrides):
    args = dict(attn=torch.randn(1, 2, 12, 9), v=torch.randn(1, 2, 12, 4), height=3, width=4,
                window=3)
    args.update(overrides)
    return list(args.values())


@pytest.mark.parametrize('overrides,match', [
    (dict(q=torch.randn(2, 12, 4)), r'q must be 4-D'),
    (dict(k=torch.randn(1, 2, 12, 5)), r'k has shape .* but q has shape'),
    (dict(window=4), r'window must be a positive odd number, got 4'),
    (dict(height=4), r'q has 12 rows but the map is 4x4 = 16'),
    (dict(rpb=torch.randn(2, 25)), r'rpb must have shape \(heads, window\*\*2\) = \(2, 9\)'),
    (dict(k=torch.randn(1, 2, 12, 4, dtype=torch.float64)), r'k is Double but q is Float'),
    (dict(q=torch.ones(1, 2, 12, 4, dtype=torch.int32),
          k=torch.ones(1, 2, 12, 4, dtype=torch.int32)), r'q must be a floating-point tensor'),
])
def test_qk_rejects_bad_arguments(overrides, match):
    with pytest.raises(RuntimeError, match=match):
        ops.sliding_window_qk(*_qk_args(**overrides))


@pytest.mark.parametrize('overrides,match', [
    (dict(attn=torch.randn(1, 2, 12, 25)), r'attn must have shape \(1, 2, 12, 9\)'),
    (dict(v=torch.randn(1, 2, 10, 4)), r'v has 10 rows but the map is 3x4'),
    (dict(window=0), r'window must be a positive odd number'),
    (dict(width=0), r'map size must be positive'),
    (dict(attn=torch.randn(1, 2, 12, 9, dtype=torch.float64)), r'attn is Double but v is Float'),
])
def test_av_rejects_bad_arguments(overrides, match):
    with pytest.raises(RuntimeError, match=match):
        ops.sliding_window_av(*_av_args(**overrides))


def test_unsupported_dtype_is_named():
    q = torch.randn(1, 1, 4, 2).to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match=r'dtype Float8_e4m3fn is not supported on CPU'):
        ops.sliding_window_qk(q, q, torch.randn(1, 9).to(q.dtype), 2, 2, 3)
