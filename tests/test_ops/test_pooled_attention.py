"""Chunked pooled attention against one softmax over the whole map, whose position bias comes
from the tests' oracle (brute-force official table, gather, ``F.interpolate``), not from the
package's bias code."""
import pytest
import torch

from mmtransnext.models.layers.position_bias import build_position_table, fold_rows
from mmtransnext.ops import decisions, dispatch
from mmtransnext.ops import pooled_attention as pa
from mmtransnext.ops.backend import Backend
from mmtransnext.ops.dispatch import backend_for
from reference import brute_force_table, gather_and_resize

PRETRAIN = (14, 14)


def _case(size, pool, table_sizes=None, batch=2, heads=3, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = build_position_table(*(table_sizes or (size, pool)), PRETRAIN, torch.device('cpu'))
    grid = torch.randn(heads, table.values_h.numel(), table.values_w.numel(), generator=gen)
    length, keys = size[0] * size[1], pool[0] * pool[1]
    q = torch.randn(batch, heads, length, dim, generator=gen)
    k = torch.randn(batch, heads, keys, dim, generator=gen)
    v = torch.randn(batch, heads, keys, dim, generator=gen)
    extra = torch.randn(batch, heads, length, 1, generator=gen)
    return table, grid, q, k, v, extra


def _official_bias(grid, table, size, pool):
    """The bias of the CPB ``grid`` (``(heads, |values_h|, |values_w|)``, rows in the sorted
    order of the unique coordinates) the official way."""
    built = (table.query_size, table.key_size)
    index, coords = brute_force_table(*built, PRETRAIN)
    assert coords.shape[0] == grid[0].numel()
    return gather_and_resize(grid.reshape(grid.shape[0], -1).t(), index, built, size, pool)


def _expected(q, k, v, bias, extra):
    """One softmax over the pooled logits and the extra set (as one logit ``extra``)."""
    logits = q @ k.transpose(-2, -1) + bias
    if extra is None:
        probs = logits.softmax(-1)
        return probs @ v, None
    probs = torch.cat([logits, extra], -1).softmax(-1)
    return probs[..., :-1] @ v, probs[..., -1:]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize('size,pool,table_sizes,chunk', [
    ((8, 6), (2, 3), None, 1),                    # one query row per chunk
    ((8, 6), (2, 3), None, 3),                    # ragged last chunk
    ((7, 9), (3, 2), ((10, 12), (4, 3)), None),   # interpolation: resized bias taps
    ((1, 1), (1, 1), None, None),
])
@pytest.mark.parametrize('with_extra', [True, False])
def test_pooled_attention_equals_one_softmax_outputs_and_gradients(size, pool, table_sizes,
                                                                   chunk, with_extra):
    table, grid, q, k, v, extra = _case(size, pool, table_sizes)
    extra = extra if with_extra else None
    weights_out = torch.randn(q.shape)
    weights_mass = torch.randn(q.shape[:-1] + (1,))

    leaves = _leaves(q, k, v, grid) + (_leaves(extra) if with_extra else [None])
    qf, kf, vf, gf, ef = leaves
    out, mass = pa.pooled_attention(qf, kf, vf, *fold_rows(gf, table, size, pool), ef,
                                    chunk=chunk, backend=backend_for('auto', qf))
    loss = (out * weights_out).sum() + ((mass * weights_mass).sum() if with_extra else 0)
    loss.backward()

    ref_leaves = _leaves(q, k, v, grid) + (_leaves(extra) if with_extra else [None])
    qr, kr, vr, gr, er = ref_leaves
    bias = _official_bias(gr, table, size, pool)
    out_r, mass_r = _expected(qr, kr, vr, bias, er)
    loss_r = (out_r * weights_out).sum() + ((mass_r * weights_mass).sum() if with_extra else 0)
    loss_r.backward()

    torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-5)
    if with_extra:
        torch.testing.assert_close(mass, mass_r, rtol=1e-5, atol=1e-5)
    for name, a, b in zip('q k v grid extra'.split(), leaves, ref_leaves):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_pooled_attention_generic_path_and_pytorch_bias_expansion(monkeypatch):
    """The path of devices without the fused CPU kernel (math on each chunk) and of
    ``attn_impl='torch'`` (bias expanded and differentiated by PyTorch), run here on CPU."""
    size, pool, table_sizes = (6, 5), (3, 2), ((8, 8), (2, 2))
    table, grid, q, k, v, extra = _case(size, pool, table_sizes)
    results = []
    # 'torch' with the math kernel, as decided for devices without a fused one
    generic_backend = Backend('torch', 'torch', 'math', 'torch', 'cpu', torch.float32)
    for generic in (False, True):
        if generic:
            monkeypatch.setattr(torch.ops.mmtransnext, 'expand_bias',
                                lambda *args: pytest.fail('compiled'))
        leaves = _leaves(q, k, v, grid, extra)
        backend = generic_backend if generic else backend_for('auto', leaves[0])
        out, mass = pa.pooled_attention(leaves[0], leaves[1], leaves[2],
                                        *fold_rows(leaves[3], table, size, pool), leaves[4],
                                        chunk=2, backend=backend)
        (out.sum() + 3 * mass.sum()).backward()
        results.append((out, mass, [t.grad for t in leaves]))
    (out_a, mass_a, grads_a), (out_b, mass_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mass_a, mass_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pooled_attention_output_is_token_major_and_bf16_runs():
    size, pool = (4, 4), (2, 2)
    table, grid, q, k, v, extra = _case(size, pool)
    out, _ = pa.pooled_attention(q, k, v, *fold_rows(grid, table, size, pool), extra,
                                 backend=backend_for('auto', q))
    # (B, heads, N, d) view of (B, N, heads, d) memory: the projection reads it without a copy.
    assert out.transpose(1, 2).is_contiguous()
    out16, mass16 = pa.pooled_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                        *fold_rows(grid, table, size, pool), extra,
                                        backend=backend_for('auto', q.bfloat16()))
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out, rtol=0.05, atol=0.05)


def test_pooled_attention_rejects_mismatched_map():
    size, pool = (4, 4), (2, 2)
    table, grid, q, k, v, extra = _case(size, pool)
    with pytest.raises(ValueError, match='do not form'):
        pa.pooled_attention(q[:, :, :12], k, v, *fold_rows(grid, table, size, pool),
                            backend=backend_for('auto', q))


def test_chunk_rows_respects_the_budget():
    assert pa.chunk_rows(2, 3, 128, 256, budget=1 << 22) == 21
    assert pa.chunk_rows(1, 3, 304, 950, budget=1 << 22) == 4
    assert pa.chunk_rows(8, 24, 4096, 4096, budget=1 << 22) == 1


@pytest.mark.parametrize('height,rows,expected', [
    (32, 10, 8),     # 10+10+10+2 -> four chunks of 8
    (128, 10, 10),   # 13 chunks either way
    (50, 10, 10),    # already even
    (5, 10, 5),      # one chunk
    (7, 1, 1),
])
def test_balanced_rows_keep_the_chunk_count_and_even_it_out(height, rows, expected):
    got = pa.balanced_rows(height, rows)
    assert got == expected
    assert -(-height // got) == -(-height // rows) and got <= rows


def _efficient_kernel_stand_in(q, k, v, bias, compute_log_sumexp, dropout_p=0.0,
                               is_causal=False, *, scale=None):
    """What ``aten._scaled_dot_product_efficient_attention`` does and demands on CUDA (its
    alignment checks, its log-sum-exp padded to a multiple of 32 queries), in plain math on
    CPU: the CUDA kernel cannot run here, the glue around it can."""
    assert compute_log_sumexp and scale == 1.0 and not is_causal and dropout_p == 0
    assert bias.dtype == q.dtype and bias.dim() == 4 and bias.stride(-1) == 1
    align = 16 // bias.element_size()
    assert bias.data_ptr() % 16 == 0, 'attn_bias pointer not aligned'
    for dim, name in ((0, 'strideB'), (1, 'strideH'), (2, 'strideM')):
        if bias.shape[dim] > 1:
            assert bias.stride(dim) % align == 0, f'attn_bias is not correctly aligned ({name})'
    logits = (q @ k.transpose(-2, -1) + bias).float()
    lse = torch.logsumexp(logits, -1)
    padded = torch.full(lse.shape[:-1] + (-(-lse.shape[-1] // 32) * 32,), float('nan'))
    padded[..., :lse.shape[-1]] = lse
    out = (torch.exp(logits - lse[..., None]).to(v.dtype) @ v)
    return out, padded, torch.empty(()), torch.empty(())


@pytest.mark.parametrize('size,pool,table_sizes,chunk', [
    ((7, 9), (3, 2), ((10, 12), (4, 3)), 2),     # 6 keys: bias rows padded to 16
    ((8, 6), (2, 3), None, None),
])
def test_cuda_glue_with_the_fused_kernel_equals_the_oracle(size, pool, table_sizes, chunk,
                                                           monkeypatch):
    """The CUDA path without Triton: chunks through the memory-efficient SDPA kernel (here a
    stand-in with its contract), output, share of the extra set and every gradient against the
    oracle's one softmax."""
    from mmtransnext.ops import load_extension
    status = load_extension()  # the backend below expands the bias with the compiled op
    assert status.loaded, f'the compiled ops could not be loaded: {status.error}'
    monkeypatch.setattr(pa, '_efficient_attention', _efficient_kernel_stand_in)
    cuda_like = Backend('ext', 'ext', 'efficient', 'compiled', 'cpu', torch.float32)
    table, grid, q, k, v, extra = _case(size, pool, table_sizes)
    leaves = _leaves(q, k, v, grid, extra)
    out, mass = pa.pooled_attention(leaves[0], leaves[1], leaves[2],
                                    *fold_rows(leaves[3], table, size, pool), leaves[4],
                                    chunk=chunk, backend=cuda_like)
    (out.sum() + 2 * mass.sum()).backward()
    ref = _leaves(q, k, v, grid, extra)
    out_r, mass_r = _expected(ref[0], ref[1], ref[2], _official_bias(ref[3], table, size, pool),
                              ref[4])
    (out_r.sum() + 2 * mass_r.sum()).backward()
    torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mass, mass_r, rtol=1e-5, atol=1e-5)
    for name, a, b in zip('q k v grid extra'.split(), leaves, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_cuda_glue_shapes_with_the_real_kernel_on_meta():
    """torch's own meta kernel of the fused op: the glue's padding and cuts fit its shapes."""
    meta = torch.device('meta')
    q = torch.empty(2, 3, 45, 24, device=meta)
    k = v = torch.empty(2, 3, 7, 24, device=meta)
    out, lse = pa._efficient_chunk_attention(q, k, v, torch.empty(3, 45, 7, device=meta))
    assert out.shape == (2, 3, 45, 24) and lse.shape == (2, 3, 45, 1)
    assert lse.dtype == torch.float32


def test_cuda_glue_falls_back_once_when_the_kernel_refuses(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError('No available kernel')

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory')

    dispatch.reset()
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    bias = torch.randn(2, 5, 3)
    monkeypatch.setattr(pa, '_efficient_attention', out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not a reason to change kernels
        pa._efficient_chunk_attention(q, k, v, bias)
    assert 'efficient' not in decisions.failures(q.device, q.dtype)
    monkeypatch.setattr(pa, '_efficient_attention', refuse)
    with pytest.warns(RuntimeWarning, match='No available kernel'):
        out, lse = pa._efficient_chunk_attention(q, k, v, bias)
    assert 'efficient' in decisions.failures(q.device, q.dtype)
    expected = pa._math_chunk_attention(q, k, v, bias)
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(lse, expected[1])
    dispatch.reset()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_l2_normalize_gives_the_numbers_of_f_normalize(dtype):
    """The fast path's normalisation (a broadcasting division, no ``Expand`` in a graph) is
    ``F.normalize(x, dim=-1)`` bit for bit: strided input, zero and tiny rows included."""
    from torch.nn.functional import normalize
    from mmtransnext.ops.cosine_attention import l2_normalize
    x = torch.randn(2, 6, 5, 24, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[0, 0, 0] = 0
    x[1, 2, 3] = 1e-30
    x = x.transpose(1, 2)
    out = l2_normalize(x)
    assert out.dtype == dtype and torch.equal(out, normalize(x, dim=-1))
