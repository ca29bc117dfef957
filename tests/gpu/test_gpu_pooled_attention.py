"""The SDPA-chunked pooled attention (mmtransnext/ops/pooled_attention.py) on CUDA, where each
chunk runs the memory-efficient ``scaled_dot_product_attention`` kernel, against one softmax
over the whole map with the oracle's position bias (brute-force table, gather,
``F.interpolate``) in float64 on the CPU: output, the extra set's share and every gradient, in
many chunks and in one, at an odd batch, float32/bfloat16/float16."""
import warnings

import pytest
import torch

from gpu_helpers import CPU, DTYPES, check_close
from mmtransnext.models.layers.position_bias import build_position_table, fold_rows
from mmtransnext.ops import pooled_attention as pa
from mmtransnext.ops.dispatch import backend_for
from reference import brute_force_table, gather_and_resize

pytestmark = pytest.mark.gpu

CUDA = torch.device('cuda')
PRETRAIN = (14, 14)

# (map, pooled keys, trained grids or None, rows per chunk or None: sized for the device)
CASES = [
    ((7, 9), (3, 2), ((10, 12), (4, 3)), 2),    # 6 keys: bias rows padded for alignment
    ((37, 53), (4, 6), None, 5),                # ragged last chunk
    ((37, 53), (4, 6), ((32, 32), (4, 4)), None),
    ((1, 1), (1, 1), None, None),
]


def _ids(case):
    size, pool, trained, chunk = case
    mode = 'interpolation' if trained else 'extrapolation'
    return f'{size[0]}x{size[1]}-{mode}-chunk{chunk}'


def _inputs(size, pool, trained, heads=3, dim=24, batch=3):
    gen = torch.Generator().manual_seed(5)
    table = build_position_table(*(trained or (size, pool)), PRETRAIN, CPU)
    grid = torch.randn(heads, table.values_h.numel(), table.values_w.numel(), generator=gen)
    length, keys = size[0] * size[1], pool[0] * pool[1]
    q = torch.randn(batch, heads, length, dim, generator=gen) * 2
    k = torch.nn.functional.normalize(torch.randn(batch, heads, keys, dim, generator=gen), dim=-1)
    v = torch.randn(batch, heads, keys, dim, generator=gen)
    extra = torch.randn(batch, heads, length, 1, generator=gen)
    weights = torch.randn(q.shape, generator=gen), torch.randn(extra.shape, generator=gen)
    return table, [q, k, v, grid, extra], weights


def _oracle(table, leaves, weights, size, pool):
    """Output, share and gradients in float64 of the inputs as the kernel gets them."""
    q, k, v, grid, extra = [t.double().requires_grad_() for t in leaves]
    built = (table.query_size, table.key_size)
    index, _ = brute_force_table(*built, PRETRAIN)
    bias = gather_and_resize(grid.reshape(grid.shape[0], -1).t(), index, built, size, pool)
    probs = torch.cat([q @ k.transpose(-2, -1) + bias, extra], -1).softmax(-1)
    out, mass = probs[..., :-1] @ v, probs[..., -1:]
    loss = (out * weights[0].double()).sum() + (mass * weights[1].double()).sum()
    return [out, mass] + list(torch.autograd.grad(loss, [q, k, v, grid, extra]))


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('case', CASES, ids=_ids)
def test_chunked_pooled_attention_matches_one_softmax(case, dtype, monkeypatch):
    size, pool, trained, chunk = case
    dtype = DTYPES[dtype]
    table, leaves, weights = _inputs(size, pool, trained)
    # q, k, v rounded to the dtype first: the comparison measures the kernel's error only.
    leaves[:3] = [t.to(dtype) for t in leaves[:3]]
    want = _oracle(table, leaves, weights, size, pool)
    cuda_table = build_position_table(*(trained or (size, pool)), PRETRAIN, CUDA)
    q, k, v = (t.to(CUDA, dtype).requires_grad_() for t in leaves[:3])
    grid, extra = (t.to(CUDA).requires_grad_() for t in leaves[3:])
    calls = []
    kernel = pa._efficient_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(pa, '_efficient_attention', counted)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # the fused kernel must take the inputs
        out, mass = pa.pooled_attention(q, k, v, *fold_rows(grid, cuda_table, size, pool),
                                        extra, chunk=chunk, backend=backend_for('auto', q))
    assert calls, 'the chunks did not run the memory-efficient SDPA kernel (refused before?)'
    if chunk is not None:
        assert len(calls) == -(-size[0] // chunk), 'one kernel call per chunk of rows'
    assert out.dtype == dtype and mass.dtype == torch.float32
    loss = (out.float() * weights[0].to(CUDA)).sum() + (mass * weights[1].to(CUDA)).sum()
    got = [out, mass] + list(torch.autograd.grad(loss, [q, k, v, grid, extra]))
    for name, g, w in zip(('out', 'mass', 'dq', 'dk', 'dv', 'dgrid', 'dextra'), got, want):
        # The position-bias grid's gradient sums cancelling terms over the map: max(scale, 1).
        floor = 1.0 if name == 'dgrid' else 0.1
        check_close(name, g.float(), w, dtype, floor=floor)
