"""The Triton attention kernels called directly on CUDA: what the interpreter cannot show.

- **Run twice, same bits.** Every output and gradient of the three kernels (forward, query
  backward, key backward) is computed twice from the same inputs and compared bit for bit,
  except the two that float32 atomic adds accumulate (:data:`ATOMIC_SUMS`: the folded
  position-bias grid's gradient and the local bias's), whose order, and so whose last bits,
  may change from run to run: those within :data:`ATOMIC_RTOL` of their scale. A read of
  memory another program is still writing, or of an uninitialised tile, shows up here.
- **Odd batches.** The query backward takes two batch items per program; batches of 3 and 5
  leave the last pair half-filled (5: a full second pair too). Each item of the batch must
  match that item computed alone, and the batch's sums (bias gradients, query transform) the
  sum of the items'.

Against the paper-equation oracle at these batches: test_gpu_attention_layers.py.
"""
from typing import Dict, Optional

import pytest
import torch
import torch.nn.functional as F

from gpu_helpers import CPU, DTYPES, differing_bits
from mmtransnext.models.layers.position_bias import build_position_table, fold_bias
from mmtransnext.ops.triton_attention import triton_attention

pytestmark = pytest.mark.gpu

HEADS, DIM, WINDOW, PRETRAIN = 2, 24, 3, (6, 6)
BATCHES = (3, 5)

#: name -> (kind, map, pooled keys, trained (query, key) grids, folded axis or None: as the
#: layers fold it). Maps of several query tiles (and runs of them in the pooled-key backward),
#: more keys than one key tile, a resized bias (weighted taps).
CASES = {
    'aggregated-rows': ('aggregated', (23, 29), (5, 7), ((16, 16), (4, 4)), 'rows'),
    'aggregated-columns': ('aggregated', (23, 29), (5, 7), ((16, 16), (4, 4)), 'columns'),
    'full': ('full', (23, 29), (23, 29), ((12, 12), (12, 12)), None),
}

#: Gradients accumulated by float32 atomic adds in the backward kernels.
ATOMIC_SUMS = ('dfolded', 'dlocal_bias')
#: Bound of a difference between two runs of an atomic sum, relative to max(its scale, 1).
ATOMIC_RTOL = 1e-5
#: Bound of a difference between an item computed in its batch and alone (the pooled keys'
#: partial sums split differently with the batch, so their rounding differs), relative to
#: max(scale, 1): float32 sums to ~1e-6, a 16-bit result may round one unit differently.
ALONE_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}
#: Per-item results (batch axis first) and batch sums, in the order :func:`run_kernels` returns.
PER_ITEM = ('out', 'dq', 'dk_pool', 'dv_pool', 'dk_local', 'dv_local', 'dtoken')
SUMMED = ('dfolded', 'dlocal_bias', 'dembedding', 'dhead_scale', 'dquery_scale')


def case_inputs(case: str, batch: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Float32 CPU inputs of a case from a seeded generator (the same on every call)."""
    kind, size, pool, trained, _ = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    length, keys = size[0] * size[1], pool[0] * pool[1]
    table = build_position_table(*(trained or (size, pool)), PRETRAIN, CPU)
    t = dict(
        q=F.normalize(torch.randn(batch, HEADS, length, DIM, generator=gen), dim=-1),
        k_pool=F.normalize(torch.randn(batch, HEADS, keys, DIM, generator=gen), dim=-1),
        v_pool=torch.randn(batch, HEADS, keys, DIM, generator=gen),
        grid=torch.randn(HEADS, table.values_h.numel(), table.values_w.numel(), generator=gen),
        embedding=torch.randn(HEADS, DIM, generator=gen) * 0.3,
        head_scale=torch.rand(HEADS, generator=gen) * 4 + 2,
        query_scale=torch.rand(length, generator=gen) + 1,
        grad_out=torch.randn(batch, HEADS, length, DIM, generator=gen))
    if kind == 'aggregated':
        t.update(k_local=F.normalize(torch.randn(batch, HEADS, length, DIM, generator=gen), dim=-1),
                 v_local=torch.randn(batch, HEADS, length, DIM, generator=gen),
                 token=torch.randn(batch, HEADS, length, WINDOW ** 2, generator=gen) * 0.3,
                 local_bias=torch.randn(HEADS, WINDOW ** 2, generator=gen))
    return t


def run_kernels(case: str, inputs: Dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device) -> Dict[str, Optional[torch.Tensor]]:
    """Output and every gradient of one forward and backward of the kernels: the row tensors
    in ``dtype``, the bias grid, local bias and query transform in float32 (as the layers pass
    them)."""
    kind, size, pool, trained, axis = CASES[case]
    table = build_position_table(*(trained or (size, pool)), PRETRAIN, device)
    rows = ('q', 'k_pool', 'v_pool', 'k_local', 'v_local', 'token')
    leaves = {name: t.detach().to(device, dtype if name in rows else torch.float32).requires_grad_()
              for name, t in inputs.items() if name not in ('grid', 'grad_out')}
    bias = fold_bias(inputs['grid'].to(device), table, size, pool, axis)
    leaves['folded'] = bias.folded.detach().requires_grad_()
    local = {} if kind == 'full' else dict(
        k_local=leaves['k_local'], v_local=leaves['v_local'], token_weights=leaves['token'],
        local_bias=leaves['local_bias'])
    out = triton_attention(leaves['q'], leaves['k_pool'], leaves['v_pool'], leaves['folded'],
                           bias.taps, bias.weights, size, pool, **local,
                           query_embedding=leaves['embedding'], head_scale=leaves['head_scale'],
                           query_scale=leaves['query_scale'], fold_axis=bias.axis)
    names = [n for n in ('q', 'k_pool', 'v_pool', 'k_local', 'v_local', 'token', 'folded',
                         'local_bias', 'embedding', 'head_scale', 'query_scale') if n in leaves]
    grads = torch.autograd.grad(out, [leaves[n] for n in names],
                                inputs['grad_out'].to(device, out.dtype))
    renamed = dict(q='dq', k_pool='dk_pool', v_pool='dv_pool', k_local='dk_local',
                   v_local='dv_local', token='dtoken', folded='dfolded',
                   local_bias='dlocal_bias', embedding='dembedding', head_scale='dhead_scale',
                   query_scale='dquery_scale')
    result = dict(out=out.detach())
    result.update({renamed[n]: g for n, g in zip(names, grads)})
    return result


def assert_same_bits(first: Dict[str, torch.Tensor], second: Dict[str, torch.Tensor]) -> None:
    """Two runs' results equal bit for bit, :data:`ATOMIC_SUMS` to :data:`ATOMIC_RTOL`."""
    assert first.keys() == second.keys()
    for name, a in first.items():
        b = second[name]
        assert torch.isfinite(a).all(), f'{name}: non-finite values'
        if name in ATOMIC_SUMS:
            error = (a.double() - b.double()).abs().max().item()
            bound = ATOMIC_RTOL * max(a.abs().max().item(), 1.0)
            assert error <= bound, f'{name} (atomic sums): runs differ by {error:.3g} > {bound:.3g}'
        else:
            differ = differing_bits(a, b)
            assert differ == 0, f'{name}: {differ} of {a.numel()} values differ between two ' \
                                'runs on the same inputs'


def assert_items_match_alone(case: str, batch: int, dtype: torch.dtype,
                             device: torch.device) -> None:
    """Each item of a ``batch`` run equals the item run alone; the batch's sums the sum of the
    items' (within :data:`ALONE_RTOL`)."""
    inputs = case_inputs(case, batch)
    whole = run_kernels(case, inputs, dtype, device)
    alone = []
    for i in range(batch):
        # The (batch, ...) row tensors sliced; the grid, local bias and transform shared.
        item = {n: t[i:i + 1] if t.dim() == 4 else t for n, t in inputs.items()}
        alone.append(run_kernels(case, item, dtype, device))
    tol = ALONE_RTOL[dtype]
    for name in PER_ITEM:
        if name not in whole:
            continue
        want = torch.cat([a[name] for a in alone])
        _assert_within(f'{name} (items alone)', whole[name], want, tol)
    for name in SUMMED:
        if name not in whole:
            continue
        want = sum(a[name].double() for a in alone)
        _assert_within(f'{name} (sum of the items alone)', whole[name], want, ALONE_RTOL[
            torch.float32] * batch)


def _assert_within(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.shape == want.shape, f'{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}'
    error = (got.double() - want.double()).abs().max().item()
    bound = rtol * max(want.abs().max().item(), 1.0)
    assert error <= bound, f'{name}: max difference {error:.3g} > {bound:.3g}'


@pytest.mark.parametrize('batch', BATCHES)
@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('case', list(CASES))
def test_every_kernel_gives_the_same_bits_twice(case, dtype, batch):
    inputs = case_inputs(case, batch)
    device = torch.device('cuda')
    first = run_kernels(case, inputs, DTYPES[dtype], device)
    second = run_kernels(case, inputs, DTYPES[dtype], device)
    assert_same_bits(first, second)


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('case', list(CASES))
def test_odd_batch_items_match_each_item_alone(case, dtype):
    assert_items_match_alone(case, 5, DTYPES[dtype], torch.device('cuda'))


def cases_cover_pairs_tiles_and_both_folds() -> None:
    """What the cases are for, checked against the kernels' own tables (run by the CPU suite,
    tests/test_tools/test_gpu_check.py): a half-filled last query pair, a full second one,
    several query tiles and runs of them, more pooled keys than a key tile, both folds."""
    from mmtransnext.ops.triton_attention import MIN_TILES_PER_SPLIT, QUERY_ITEMS
    from mmtransnext.ops.triton_configs import KERNEL_CONFIGS
    assert all(b % QUERY_ITEMS for b in BATCHES) and max(BATCHES) > 2 * QUERY_ITEMS
    assert {c[4] for c in CASES.values() if c[0] == 'aggregated'} == {'rows', 'columns'}
    for kind, size, pool, trained, _ in CASES.values():
        assert trained is not None and trained[0] != size, 'a resized bias: weighted taps'
        for per_dtype in KERNEL_CONFIGS.values():
            for config in per_dtype['window' if kind == 'aggregated' else 'full'].values():
                tiles = -(-size[0] * size[1] // config.block_m)
                assert tiles >= 2 * MIN_TILES_PER_SPLIT, (kind, size, config)
                assert pool[0] * pool[1] > config.block_n, (kind, pool, config)
