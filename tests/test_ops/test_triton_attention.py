"""The Triton attention kernels, run in Triton's CPU interpreter, against the naive oracle:
forward and every gradient (queries, window and pooled keys/values, token weights, local bias,
CPB MLP through its grid), odd sizes, both position-bias modes, fp32 and bf16; the layers and a
small backbone end to end with ``attn_impl='triton'``; the op on meta tensors (no host sync)."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mmtransnext import TransNeXt
from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention, StageGeometry
from mmtransnext.models.layers.position_bias import (build_position_table, cpb_grid, fold_bias,
                                                     fold_rows)
from mmtransnext.ops.sliding_window import window_lengths, window_padding_mask
from mmtransnext.ops.triton_attention import triton_attention
from reference import (assert_cast_model_close, perturb_, reference_aggregated_attention,
                       reference_backbone, reference_bias, reference_full_attention)

CPU = torch.device('cpu')
PRETRAIN = (6, 6)


@pytest.fixture(scope='module', autouse=True)
def _interpreted_kernels():
    """Check the kernels are interpreted, and mend the interpreter's bfloat16 ``tl.dot``.

    Triton 3.8's interpreter stores bfloat16 as raw uint16 and multiplies those integers in
    ``tl.dot``. The operands are widened to float32 first here (exact), which is what a GPU's
    bfloat16 MMA computes (exact products, float32 sums), so the kernels run unchanged."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    from mmtransnext.ops import triton_kernels
    assert isinstance(triton_kernels._attention_fwd, interpreter.InterpretedFunction), \
        'TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py)'
    original = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        bits = handle.data.astype(np.uint32) << np.uint32(16)
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot
    yield
    interpreter.InterpreterBuilder.create_dot = original


def naive_attention(q, kp, vp, bias, size, local=None):
    """Oracle: one softmax over the concatenated window and pooled logits, the window visited one
    offset at a time on a zero-padded map, token weights added to the window probabilities."""
    pool = q @ kp.transpose(-1, -2) + bias
    if local is None:
        return pool.softmax(-1) @ vp
    k, v, tok, rpb = local
    batch, heads, length, dim = q.shape
    height, width = size
    window = int(round(rpb.shape[1] ** 0.5))
    r = window // 2
    k_pad = F.pad(k.reshape(batch, heads, height, width, dim), (0, 0, r, r, r, r))
    v_pad = F.pad(v.reshape(batch, heads, height, width, dim), (0, 0, r, r, r, r))
    inside = F.pad(torch.ones(height, width), (r, r, r, r)) > 0
    logits, values = [], []
    for dy in range(window):
        for dx in range(window):
            keys = k_pad[:, :, dy:dy + height, dx:dx + width].reshape(batch, heads, length, dim)
            values.append(v_pad[:, :, dy:dy + height, dx:dx + width].reshape(q.shape))
            valid = inside[dy:dy + height, dx:dx + width].reshape(length)
            logit = (q * keys).sum(-1) + rpb[:, dy * window + dx, None]
            logits.append(logit.masked_fill(~valid, float('-inf')))
    probs = torch.cat([torch.stack(logits, -1), pool], -1).softmax(-1)
    p_local, p_pool = probs[..., :window ** 2] + tok, probs[..., window ** 2:]
    return sum(p_local[..., i, None] * values[i] for i in range(window ** 2)) + p_pool @ vp


# (size, pool size, trained (query, key) grids in interpolation mode or None, batch, window)
CASES = [
    ((1, 1), (1, 1), None, 2, 3),
    ((1, 1), (1, 1), ((4, 4), (2, 2)), 1, 3),
    ((7, 9), (3, 4), None, 1, 5),
    ((7, 9), (3, 4), ((8, 8), (4, 4)), 2, 3),
    ((37, 53), (4, 6), None, 1, 3),
    ((37, 53), (4, 6), ((32, 32), (4, 4)), 1, 3),
    # Shrunk from a larger table: up to four row taps (two query rows x two key rows) folded.
    ((9, 11), (3, 4), ((16, 16), (5, 5)), 2, 3),
]
#: Cases whose columns have more taps than their rows, so the columns are folded (as at
#: 800x1216 from an 800x800 table: 1 row tap, 4 column taps); the same kind in miniature, and
#: 2 row taps against 4.
COLUMN_CASES = [
    ((8, 11), (4, 5), ((8, 8), (4, 4)), 2, 3),
    ((9, 7), (4, 3), ((8, 8), (4, 4)), 1, 3),
]


def _case_inputs(size, pool, trained, batch, window, heads=2, dim=24, full=False):
    attn = FullAttention(heads * dim, heads) if full else \
        AggregatedAttention(heads * dim, heads, window)
    perturb_(attn, std=0.3)
    length, num_keys = size[0] * size[1], pool[0] * pool[1]
    q = torch.randn(batch, heads, length, dim) * 2
    keys = [F.normalize(torch.randn(batch, heads, n, dim), dim=-1) for n in (length, num_keys)]
    values = [torch.randn(batch, heads, n, dim) for n in (length, num_keys)]
    tok = torch.randn(batch, heads, length, window ** 2) * 0.3
    table_q, table_k = trained if trained else (size, pool)
    table = build_position_table(table_q, table_k, PRETRAIN, CPU)
    return attn, table, q, keys, values, tok


def _query_transform(heads, dim, length, query_scale):
    """A query embedding ``(heads, d)``, a per-head factor ``(heads,)`` and a per-query factor,
    all non-trivial: ``query_scale`` 'per_query' ``(N,)``, 'tensor' one value as a 0-d tensor
    (expanded with stride 0, with a gradient) or 'number' a Python float."""
    embedding = torch.randn(heads, dim) * 0.3
    head_scale = F.softplus(torch.randn(heads)) + 0.5
    factor = {'per_query': lambda: torch.rand(length) * 2 + 1,
              'tensor': lambda: torch.tensor(2.3), 'number': lambda: 2.3}[query_scale]()
    return embedding, head_scale, factor


def _run_case(size, pool, trained, batch, window, dtype, full=False, transform=None,
              autocast_backward=False, fold_axis=None):
    """Kernel output and gradients next to the oracle's (float32, on the unrounded inputs).
    The CPB grid is folded along ``fold_axis`` (default: as the layers fold it, the axis with
    more taps).

    With ``transform`` (see :func:`_query_transform`) the kernels get normalised queries and the
    transform; the oracle gets ``(q + embedding) * head_scale * query_scale`` made in PyTorch,
    and the gradients of the transform's tensors are compared too."""
    attn, table, q, keys, values, tok = _case_inputs(size, pool, trained, batch, window,
                                                     full=full)
    if transform is not None:
        q = F.normalize(q, dim=-1)
    leaves = [q, keys[1], values[1]] + ([] if full else [keys[0], values[0], tok])
    params = [attn.cpb_fc1.weight, attn.cpb_fc1.bias, attn.cpb_fc2.weight, attn.cpb_fc2.bias]
    if not full:
        params.append(attn.relative_pos_bias_local)
    grad_out = torch.randn(q.shape)

    inputs = [t.to(dtype).requires_grad_() for t in leaves]
    local = {} if full else dict(k_local=inputs[3], v_local=inputs[4], token_weights=inputs[5],
                                 local_bias=attn.relative_pos_bias_local)
    scaling, ref_scaling = [], []
    if transform is not None:
        scaling = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t
                   for t in transform]
        ref_scaling = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t
                       for t in transform]
        local.update(query_embedding=scaling[0], head_scale=scaling[1], query_scale=scaling[2])
        params = params + [t for t in scaling if isinstance(t, torch.Tensor)]
    bias = fold_bias(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table), table, size, pool, fold_axis)
    out = triton_attention(*inputs[:3], *bias[:3], size, pool, **local, fold_axis=bias.axis)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast_backward):
        got = [out] + list(torch.autograd.grad(out, inputs + params, grad_out.to(out.dtype)))

    ref = copy.deepcopy(attn)
    ref_params = [ref.cpb_fc1.weight, ref.cpb_fc1.bias, ref.cpb_fc2.weight, ref.cpb_fc2.bias]
    if not full:
        ref_params.append(ref.relative_pos_bias_local)
    ref_inputs = [t.clone().requires_grad_() for t in leaves]
    bias = reference_bias(ref, size, pool, PRETRAIN, trained)
    ref_local = None if full else (*ref_inputs[3:], ref.relative_pos_bias_local)
    q_ref = ref_inputs[0]
    if transform is not None:
        ref_params += [t for t in ref_scaling if isinstance(t, torch.Tensor)]
        embedding, head_scale, query_scale = ref_scaling
        if isinstance(query_scale, torch.Tensor) and query_scale.dim() == 1:
            query_scale = query_scale[:, None]
        q_ref = (q_ref + embedding[:, None]) * head_scale[:, None, None] * query_scale
    expected = naive_attention(q_ref, ref_inputs[1], ref_inputs[2], bias, size, ref_local)
    want = [expected] + list(torch.autograd.grad(expected, ref_inputs + ref_params,
                                                 grad_out))
    return got, want


def _assert_all_close(got, want, dtype, extra=()):
    """``extra``: names of the gradients after the CPB MLP's and the local bias's (the query
    transform's)."""
    names = ['out', 'dq', 'dk_pool', 'dv_pool', 'dk_local', 'dv_local', 'dtoken', 'dfc1.w',
             'dfc1.b', 'dfc2.w', 'dfc2.b', 'drpb']
    if len(got) - len(extra) == 8:  # full attention
        names = names[:4] + names[7:11]
    names += list(extra)
    assert len(got) == len(want) == len(names)
    sums = ('dfc', 'drpb', 'dembedding', 'dhead_scale', 'dquery_scale')
    for name, g, w in zip(names, got, want):
        assert g.dtype == (torch.float32 if name.startswith(sums) else dtype), name
        scale = w.abs().max().item()
        tol, floor = {torch.bfloat16: (3e-2, 0.1), torch.float16: (1e-2, 0.1)}.get(
            dtype, (1e-4, 0.1))
        if name == 'dfc2.b' and 'dk_local' not in names:
            # Full attention: fc2's bias adds one constant to every logit of a head, so this is
            # zero in exact arithmetic and its noise (sums over the map) ~1e-5 in float32; in
            # 16 bits, ~0.05: the rounding of the output in delta, summed over the map; ~0.15
            # with the query transform (queries scaled before their rounding to 16 bits).
            tol, floor = (tol, 1.0) if dtype == torch.float32 else \
                (1e-1, 3.0 if extra else 1.0)
        elif name.startswith(('dfc', 'drpb')) and dtype != torch.float32:
            # Sums over the whole map of terms that cancel (sum_j dS_ij = 0 per query), each
            # carrying 16-bit rounding: compared at 10% of max(scale, 1). An indexing error
            # is O(1); the float32 cases check these at 1e-4.
            tol, floor = 1e-1, 1.0
        error = (g.float() - w).abs().max().item()
        # Gradients that vanish in exact arithmetic (one key, a bias shift under one softmax)
        # are rounding noise: the floor keeps them from setting the scale.
        assert error <= tol * max(scale, floor), \
            f'{name}: max error {error:.3g} vs scale {scale:.3g}'


@pytest.mark.parametrize('size,pool,trained,batch,window', CASES)
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_aggregated_kernels_match_the_oracle_fp32(size, pool, trained, batch, window):
    got, want = _run_case(size, pool, trained, batch, window, torch.float32)
    _assert_all_close(got, want, torch.float32)


def test_row_taps_of_the_cases():
    """The cases fold one row tap (extrapolation), two, and more than two (shrinking)."""
    counts = set()
    for size, pool, trained, _, _ in CASES:
        table_q, table_k = trained if trained else (size, pool)
        counts.add(build_position_table(table_q, table_k, PRETRAIN, CPU).taps(
            size, pool).rows_h.shape[-1])
    assert {1, 2} <= counts and max(counts) > 2, counts


def _taps(size, pool, trained):
    table_q, table_k = trained if trained else (size, pool)
    return build_position_table(table_q, table_k, PRETRAIN, CPU).taps(size, pool)


def test_the_axis_with_more_taps_is_folded():
    """The rows are folded unless the columns have more taps: both kinds among the cases, and
    COLUMN_CASES leave one and two row taps per logit instead of four column taps."""
    axes = {}
    for size, pool, trained, _, _ in CASES + COLUMN_CASES:
        taps = _taps(size, pool, trained)
        counts = (taps.rows_h.shape[-1], taps.rows_w.shape[-1])
        axes[size] = taps.fold_axis
        assert taps.fold_axis == ('columns' if counts[1] > counts[0] else 'rows'), (size, counts)
    assert axes[(7, 9)] == axes[(9, 11)] == 'rows' and axes[(37, 53)] == 'columns'
    assert [(_taps(*case[:3]).rows_h.shape[-1], _taps(*case[:3]).rows_w.shape[-1])
            for case in COLUMN_CASES] == [(1, 4), (2, 4)]


@pytest.mark.parametrize('axis', ['rows', 'columns'])
@pytest.mark.parametrize('size,pool,trained', [(c[:3]) for c in COLUMN_CASES] + [CASES[3][:3]])
def test_folded_grid_and_taps_give_the_oracles_bias(size, pool, trained, axis):
    """Either axis folded, the folded grid read at each (query, key) pair's taps, by plain
    indexing as the kernels do, is the oracle's bias (brute-force table, F.interpolate)."""
    attn, table, *_ = _case_inputs(size, pool, trained, 1, 3)
    with torch.no_grad():
        bias = fold_bias(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table), table, size, pool, axis)
        expected = reference_bias(attn, size, pool, PRETRAIN, trained)
    (hq, wq), (hk, wk) = size, pool
    yq, xq = torch.meshgrid(torch.arange(hq), torch.arange(wq), indexing='ij')
    yk, xk = torch.meshgrid(torch.arange(hk), torch.arange(wk), indexing='ij')
    yq, xq, yk, xk = (t.reshape(-1) for t in (yq, xq, yk, xk))
    got = torch.zeros(expected.shape)
    for t in range(bias.taps.shape[-1]):
        if axis == 'rows':  # folded[h, yq, yk, taps[xq, xk, t]]
            pair = (xq[:, None], xk[None, :])
            entry = bias.folded[:, yq[:, None], yk[None, :], bias.taps[pair + (t,)]]
        else:  # folded[h, taps[yq, yk, t], xq, xk]
            pair = (yq[:, None], yk[None, :])
            entry = bias.folded[:, bias.taps[pair + (t,)], xq[:, None], xk[None, :]]
        got += entry * (1. if bias.weights is None else bias.weights[pair + (t,)])
    assert bias.axis == axis
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fold_bias_refuses_an_unknown_axis():
    attn, table, *_ = _case_inputs((7, 9), (3, 4), None, 1, 3)
    with pytest.raises(ValueError, match="axis must be one of \\('rows', 'columns'\\)"):
        fold_bias(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table), table, (7, 9), (3, 4), 'both')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('axis', ['rows', 'columns'])
@pytest.mark.parametrize('size,pool,trained,batch,window', COLUMN_CASES + [CASES[3]])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_either_folded_axis_matches_the_oracle(size, pool, trained, batch, window, axis,
                                               dtype):
    """Forward and every gradient (the CPB MLP's through the folded grid's, exact in either
    layout) with the rows or the columns folded, whichever has more taps."""
    got, want = _run_case(size, pool, trained, batch, window, dtype, fold_axis=axis)
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize('full,dtype', [(False, torch.float32), (False, torch.bfloat16),
                                        (True, torch.float32)])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_query_backward_pairs_batch_items_odd_batch(full, dtype):
    """The query backward takes two batch items per program (the bias and its gradient
    shared): with three items, the second program's pair has one, its other half masked off.
    (Full attention in float32 only: its fc2-bias gradient, zero in exact arithmetic, is 16-bit
    rounding noise summed over the batch, ~0.2 at three items, as before the pairing.)"""
    if full:  # the map of test_full_attention_kernels_match_the_oracle's bfloat16 case
        size, pool, trained = (5, 6), (5, 6), ((6, 6), (6, 6))
    else:
        size, pool, trained = (9, 7), (4, 3), ((8, 8), (4, 4))
    got, want = _run_case(size, pool, trained, 3, 3, dtype, full=full)
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize('size,dtype', [((6, 9), torch.float32), ((6, 5), torch.bfloat16)])
def test_full_attention_with_the_columns_folded(size, dtype):
    """One row tap, four column taps (a 6x6 table widened, or narrowed to the 30 queries of
    the bfloat16 full-attention case above, whose fc2-bias tolerance fits that map size)."""
    trained = ((6, 6), (6, 6))
    assert _taps(size, size, trained).fold_axis == 'columns'
    got, want = _run_case(size, size, trained, 2, 3, dtype, full=True)
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize('size,pool,trained,batch,window', CASES[:4])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_aggregated_kernels_match_the_oracle_bf16(size, pool, trained, batch, window):
    got, want = _run_case(size, pool, trained, batch, window, torch.bfloat16)
    _assert_all_close(got, want, torch.bfloat16)


@pytest.mark.parametrize('size,pool,trained,batch,window', CASES[2:4])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_aggregated_kernels_match_the_oracle_fp16(size, pool, trained, batch, window):
    got, want = _run_case(size, pool, trained, batch, window, torch.float16)
    _assert_all_close(got, want, torch.float16)


@pytest.mark.parametrize('size,trained,dtype', [
    ((1, 1), None, torch.float32),
    ((7, 9), None, torch.float32),
    ((7, 9), ((6, 6), (6, 6)), torch.float32),
    ((5, 6), ((6, 6), (6, 6)), torch.bfloat16),
    # more than one query tile of 32 (full attention's tiles) in 16 bits
    ((7, 9), ((6, 6), (6, 6)), torch.float16),
])
def test_full_attention_kernels_match_the_oracle(size, trained, dtype):
    got, want = _run_case(size, size, trained, 2, 3, dtype, full=True)
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('full,query_scale', [(False, 'per_query'), (False, 'tensor'),
                                               (True, 'number')])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_kernels_apply_the_query_transform(full, query_scale, dtype):
    """Normalised queries, embedding and factors in, against the oracle on the queries scaled
    in PyTorch: forward and the gradients of everything, the transform's included."""
    if full:  # the map of test_full_attention_kernels_match_the_oracle's bfloat16 case
        size, pool, trained = (5, 6), (5, 6), ((6, 6), (6, 6))
    else:
        size, pool, trained = (7, 9), (3, 4), ((8, 8), (4, 4))
    transform = _query_transform(2, 24, size[0] * size[1], query_scale)
    got, want = _run_case(size, pool, trained, 2, 3, dtype, full=full, transform=transform)
    extra = ['dembedding', 'dhead_scale'] + (['dquery_scale'] if query_scale != 'number' else [])
    _assert_all_close(got, want, dtype, extra)


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_backward_under_autocast_stays_float32():
    """A backward run under autocast (as a training loop's may be) computes the query
    transform's and the CPB MLP's gradients in float32 all the same: float32 tolerances."""
    size, pool, trained = (7, 9), (3, 4), ((8, 8), (4, 4))
    transform = _query_transform(2, 24, size[0] * size[1], 'per_query')
    got, want = _run_case(size, pool, trained, 1, 3, torch.float32, transform=transform,
                          autocast_backward=True)
    _assert_all_close(got, want, torch.float32, ['dembedding', 'dhead_scale', 'dquery_scale'])


def _geometry(size, pool, window, trained=None):
    table_q, table_k = trained if trained else (size, pool)
    table = build_position_table(table_q, table_k, PRETRAIN, CPU)
    num_keys = pool[0] * pool[1]
    if window is None:
        scale = torch.log(torch.tensor(float(num_keys)))
    else:
        scale = torch.log(window_lengths(size, window, CPU) + num_keys)
    return StageGeometry(size, pool, scale, table, trained is not None)


@pytest.mark.parametrize('full,size,pool,axis', [(False, (7, 9), (3, 4), 'rows'),
                                                  (False, (9, 7), (4, 3), 'columns'),
                                                  (True, (7, 9), (7, 9), 'rows')])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_layers_with_triton_match_the_paper_equations(monkeypatch, full, size, pool, axis):
    """The layers fold the axis with more taps (``axis`` here) and match the oracle."""
    from mmtransnext.ops import cosine_attention
    trained = ((8, 8), (4, 4))
    folded_axes = []

    def spy(*args, fold_axis, **kwargs):
        folded_axes.append(fold_axis)
        return triton_attention(*args, fold_axis=fold_axis, **kwargs)

    monkeypatch.setattr(cosine_attention, 'triton_attention', spy)
    if full:
        attn = perturb_(FullAttention(48, 2, attn_impl='triton'))
    else:
        attn = perturb_(AggregatedAttention(48, 2, 3, 2, attn_impl='triton'))
    x = torch.randn(2, 63, 48, requires_grad=True)
    out = attn(x, _geometry(size, pool, None if full else 3, trained))
    assert folded_axes == [axis]
    bias = reference_bias(attn, size, pool, PRETRAIN, trained)
    if full:
        expected = reference_full_attention(attn, x, bias)
    else:
        expected = reference_aggregated_attention(attn, x, size, pool, bias)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    params = [x] + list(attn.parameters())
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, params, grad, allow_unused=True)
    want = torch.autograd.grad(expected, params, grad, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.abs().any()
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_autocast_gradients_are_as_accurate_as_the_pytorch_path():
    """A layer under CPU bf16 autocast (the kernels' bfloat16 products exact, as a GPU's MMA
    computes them): every gradient within twice the PyTorch path's error (``attn_impl='torch'``
    under the same autocast), both against the official computation in float64. The
    temperature's gradient sums logit gradients times logits over the map; with a bfloat16
    output in ``delta = dO . O`` (and a bfloat16 query gradient) it failed this bound several
    times over."""
    torch.manual_seed(1)
    size, pool = (7, 9), (3, 4)
    layer = perturb_(AggregatedAttention(48, 2, 3, 2))
    with torch.no_grad():  # make the small-init terms matter
        for name, p in layer.named_parameters():
            if name in ('relative_pos_bias_local', 'learnable_bias', 'query_embedding'):
                p.add_(torch.randn_like(p) * 0.3)
    # The reference path reads the window's padding mask.
    geometry = dataclasses.replace(_geometry(size, pool, 3),
                                   padding_mask=window_padding_mask(size, 3, CPU))
    x, grad_out = torch.randn(2, 2, 63, 48).unbind(0)

    def gradients(impl, dtype):
        """Input and parameter gradients; ``impl`` None: the official computation."""
        model = copy.deepcopy(layer).to(dtype)
        model.attn_impl, model.attention_mode = (impl, 'fast') if impl else ('torch', 'reference')
        inputs = x.to(dtype).detach().clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.float32):
            out = model(inputs, geometry)
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(out, [inputs, *params.values()], grad_out.to(out.dtype),
                                    allow_unused=True)
        return {name: g for name, g in zip(['dx', *params], grads) if g is not None}

    want = gradients(None, torch.float64)
    errors = {impl: {n: (g.double() - want[n]).abs().max().item()
                     for n, g in gradients(impl, torch.float32).items()}
              for impl in ('torch', 'triton')}
    assert errors['triton'].keys() == errors['torch'].keys()
    for name, error in errors['triton'].items():
        scale = want[name].abs().max().item()
        assert error <= max(2 * errors['torch'][name], 1e-3 * scale), \
            (name, error, errors['torch'][name], scale)


def test_backbone_with_triton_matches_the_reference():
    arch = dict(embed_dims=[16, 32, 32, 32], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1])
    model = perturb_(TransNeXt(arch, img_size=64, pretrain_size=64, attn_impl='triton')).eval()
    img = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        outs = model(img)
        expected = reference_backbone(model, img)
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_half_precision_backbone_with_triton_is_close_to_float32(dtype):
    """A whole model cast with ``.to(dtype)`` runs the kernels in that dtype, close to the
    float32 model (relative to the output's scale)."""
    arch = dict(embed_dims=[16, 32, 32, 32], num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1])
    model = perturb_(TransNeXt(arch, img_size=64, pretrain_size=64, attn_impl='triton')).eval()
    assert_cast_model_close(model, torch.randn(1, 3, 45, 70), dtype)


def test_op_on_meta_tensors_needs_no_data():
    """The glue around the kernels reads no tensor value (a host sync raises on meta tensors):
    shapes, strides and the backward's outputs come from the fake implementations."""
    meta = torch.device('meta')
    size, pool, heads, dim = (7, 9), (3, 4), 2, 24
    length, num_keys = 63, 12
    leaves = [torch.empty(2, heads, n, dim, device=meta, requires_grad=True)
              for n in (length, num_keys, num_keys, length, length)]
    tok = torch.empty(2, heads, length, 9, device=meta, requires_grad=True)
    rpb = torch.empty(heads, 9, device=meta, requires_grad=True)
    folded = torch.empty(heads, 7, 3, 12, device=meta, requires_grad=True)
    rows_w = torch.empty(9, 4, 2, dtype=torch.long, device=meta)
    weights_w = torch.empty(rows_w.shape, device=meta)
    transform = [torch.empty(shape, device=meta, requires_grad=True)
                 for shape in ((heads, dim), (heads,), (length,))]
    out = triton_attention(*leaves[:3], folded, rows_w, weights_w, size, pool, k_local=leaves[3],
                           v_local=leaves[4], token_weights=tok,
                           local_bias=rpb, query_embedding=transform[0], head_scale=transform[1],
                           query_scale=transform[2])
    assert out.shape == (2, heads, length, dim) and out.transpose(1, 2).is_contiguous()
    inputs = leaves + [tok, rpb, folded] + transform
    grads = torch.autograd.grad(out.sum(), inputs)
    for g, t in zip(grads, inputs):
        assert g.shape == t.shape and g.device == meta


def test_bad_inputs_raise_value_errors():
    q = torch.zeros(1, 2, 12, 24)
    kp = torch.zeros(1, 2, 4, 24)
    folded = torch.zeros(2, 3, 2, 3)
    rows_w = torch.zeros(4, 2, 1, dtype=torch.long)
    ones_w = torch.ones(4, 2, 1)
    with pytest.raises(ValueError, match='do not form'):
        triton_attention(q, kp, kp, folded, rows_w, ones_w, (3, 5), (2, 2))
    with pytest.raises(ValueError, match='pooled keys'):
        triton_attention(q, kp[:, :, :3], kp, folded, rows_w, ones_w, (3, 4), (2, 2))
    with pytest.raises(ValueError, match='do not map'):
        triton_attention(q, kp, kp, folded[:, :2], rows_w, ones_w, (3, 4), (2, 2))
    with pytest.raises(ValueError, match='do not map'):
        triton_attention(q, kp, kp, folded, rows_w, ones_w[:, :, :0], (3, 4), (2, 2))
    with pytest.raises(ValueError, match='go together'):
        triton_attention(q, kp, kp, folded, rows_w, ones_w, (3, 4), (2, 2), k_local=q)
    with pytest.raises(ValueError, match='supports'):
        triton_attention(q.double(), kp, kp, folded, rows_w, ones_w, (3, 4), (2, 2))
    args = (q, kp, kp, folded, rows_w, ones_w, (3, 4), (2, 2))
    with pytest.raises(ValueError, match=r'query_embedding of shape \(2, 1, 24\)'):
        triton_attention(*args, query_embedding=torch.zeros(2, 1, 24))
    with pytest.raises(ValueError, match=r'head_scale of shape \(2, 1, 1\)'):
        triton_attention(*args, head_scale=torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match=r'query_scale of shape \(11,\).*\(12,\) or one value'):
        triton_attention(*args, query_scale=torch.ones(11))
    with pytest.raises(ValueError, match="fold_axis must be one of \\('rows', 'columns'\\)"):
        triton_attention(*args, fold_axis='row')
    # a row-folded grid and column taps passed as column-folded, and the other way round
    with pytest.raises(ValueError, match=r'\(columns folded\) and row taps .* do not map'):
        triton_attention(*args, fold_axis='columns')
    by_columns = (torch.zeros(2, 5, 4, 2), torch.zeros(3, 2, 1, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r'\(rows folded\) and column taps .* do not map'):
        triton_attention(q, kp, kp, *by_columns, (3, 4), (2, 2))


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_op_traces_under_torch_compile():
    """Fake and autograd registrations let torch.compile trace the op whole (fullgraph), forward
    and backward (aot_eager: the op itself still runs in the interpreter)."""
    size, pool = (7, 9), (3, 4)
    attn, table, q, keys, values, tok = _case_inputs(size, pool, None, 1, 3)
    folded = [t.detach() if t is not None else t
              for t in fold_rows(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table), table, size, pool)]
    leaves = [t.requires_grad_() for t in (q, keys[1], values[1], keys[0], values[0], tok)]

    def attend(q, kp, vp, k, v, tok):
        return triton_attention(q, kp, vp, *folded, size, pool, k_local=k, v_local=v,
                                token_weights=tok, local_bias=attn.relative_pos_bias_local)

    compiled = torch.compile(attend, backend='aot_eager', fullgraph=True)
    results = []
    for fn in (attend, compiled):
        out = fn(*leaves)
        results.append([out] + list(torch.autograd.grad(out.square().sum(), leaves)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


KERNELS = ('_attention_fwd', '_attention_bwd_query', '_attention_bwd_keys')


def test_kernels_do_not_specialise_on_sizes_or_strides():
    """Every size and stride argument is left unspecialised (one compiled variant for every
    input size of a multi-scale schedule): only pointers (upper case) and constexprs are
    specialised; row alignment comes from the constexpr ALIGN instead."""
    from triton.runtime.jit import JITFunction

    from mmtransnext.ops import triton_kernels
    for name in KERNELS:
        kernel = getattr(triton_kernels, name)
        jit = JITFunction(kernel.fn, **kernel.kwargs)  # the decorator's arguments, compiled
        ints = {p.name for p in jit.params if not p.is_constexpr and p.name[0].islower()}
        assert {'heads', 'width', 'sq_b', 'sq_h', 'sq_n', 'sk_n', 'st_n'} <= ints, name
        assert {p.name for p in jit.params if p.do_not_specialize} == ints, name
        assert 'ALIGN' in {p.name for p in jit.params if p.is_constexpr}, name


def test_row_alignment_follows_the_channels_not_the_size():
    """ALIGN: 16 bytes' worth of elements where every batch, head and row stride allows it
    (TransNeXt's 72-channel rows: 8 bf16 or 4 float32 elements), less where a stride does not;
    dims of one element do not count, and their strides are passed as 0."""
    from mmtransnext.ops.triton_attention import _strides, row_alignment
    for length in (1, 225, 900, 4096):  # map sizes of a multi-scale schedule
        qkv = torch.zeros(2, length, 3, 3, 24)  # (B, N, q/k/v, heads, d) as the layer's linear
        q = qkv[:, :, 0].transpose(1, 2)
        assert row_alignment(q.bfloat16()) == 8
        assert row_alignment(q) == 4
    assert row_alignment(torch.zeros(2, 3, 5, 9, dtype=torch.float16)) == 1  # 9-element rows
    assert row_alignment(torch.zeros(2, 3, 5, 12, dtype=torch.float16)) == 4
    one_row = torch.zeros(2, 3, 1, 24).as_strided((2, 3, 1, 24), (72, 24, 7, 1))
    assert row_alignment(one_row) == 4 and _strides(one_row, 4) == (18, 6, 0)


@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_launch_grids_use_one_axis(monkeypatch):
    """All programs lie on grid axis 0 (axis 1 would cap batch * heads at 65535)."""
    from mmtransnext.ops import triton_kernels
    grids = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append(tuple(grid))
            return self.kernel[grid]

    for name in KERNELS:
        monkeypatch.setattr(triton_kernels, name, Recorder(getattr(triton_kernels, name)))
    size, pool = (7, 9), (3, 4)
    attn, table, q, keys, values, tok = _case_inputs(size, pool, None, 3, 3)
    q.requires_grad_()
    folded = fold_rows(cpb_grid(attn.cpb_fc1, attn.cpb_fc2, table), table, size, pool)
    out = triton_attention(q, keys[1], values[1], *folded, size, pool, k_local=keys[0],
                           v_local=values[0], token_weights=tok,
                           local_bias=attn.relative_pos_bias_local)
    out.sum().backward()
    assert len(grids) >= 3 and all(len(grid) == 1 for grid in grids), grids


def test_pooled_key_backward_splits_fill_two_waves():
    """The pooled-key backward splits its query loop into runs so that its programs fill two
    waves of 132 multiprocessors, runs of at least MIN_TILES_PER_SPLIT tiles, none empty.
    TransNeXt-Tiny at 512x512, batch 2, stage 1: 8 key tiles x 6 (batch x heads) = 48 programs
    over 256 query tiles -> 6 runs (288 programs); stage 4 (384 programs): no split."""
    from mmtransnext.ops.triton_attention import MIN_TILES_PER_SPLIT, key_splits
    assert key_splits(48, 256, CPU) == 6
    assert key_splits(384, 4, CPU) == 1
    assert key_splits(2, 31, CPU) == 31 // MIN_TILES_PER_SPLIT == 3  # the 37x53 cases: 3 runs
    for programs, tiles in [(1, 1), (7, 100), (48, 9), (180, 950)]:
        splits = key_splits(programs, tiles, CPU)
        run = -(-tiles // splits)
        assert splits >= 1 and (splits - 1) * run < tiles  # no empty run
        assert splits == 1 or (run >= MIN_TILES_PER_SPLIT and (splits - 1) * programs < 264)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.slow  # fast tier budget (docs/testing.md)
def test_kernels_with_many_key_splits(monkeypatch, dtype):
    """One query tile per run (8 runs of partial pooled-key gradients, summed in PyTorch)."""
    from mmtransnext.ops import triton_attention as module
    monkeypatch.setattr(module, 'MIN_TILES_PER_SPLIT', 1)
    splits, runs = module.key_splits, []

    def recorded(programs, tiles, device):
        runs.append((tiles, splits(programs, tiles, device)))
        return runs[-1][1]

    monkeypatch.setattr(module, 'key_splits', recorded)
    got, want = _run_case((13, 37), (4, 6), ((32, 32), (4, 4)), 1, 3, dtype)
    assert runs and all(count == tiles >= 8 for tiles, count in runs), runs
    _assert_all_close(got, want, dtype)


def test_registers_are_capped_where_ptxas_own_choice_spilled():
    """float32 kernels and both 16-bit query backward kernels launch with maxnreg=255 (ptxas'
    own choice spilled them under some triton release: full attention with 3.6, windowed with
    3.7); the other 16-bit kernels leave the choice to ptxas (two blocks per multiprocessor where
    the tiles allow)."""
    from mmtransnext.ops.triton_attention import _common, _kernel_meta
    q, kp = torch.zeros(1, 2, 12, 24), torch.zeros(1, 2, 4, 24)
    folded, rows_w = torch.zeros(2, 3, 2, 3), torch.zeros(4, 2, 1, dtype=torch.long)
    for dtype, tf32 in [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                        (torch.float16, False)]:
        for window in (0, 3):
            _, _, meta = _common(q.to(dtype), kp.to(dtype), 3, 4, 2, 2, folded, rows_w, None,
                                 tf32, window)
            assert meta['num_stages'] >= 2  # key and query loops software-pipelined
            for kernel in ('forward', 'query', 'keys'):
                capped = dtype == torch.float32 or kernel == 'query'
                assert _kernel_meta(meta, dtype, window, kernel).get('maxnreg') == \
                    (255 if capped else None), (dtype, tf32, window, kernel)


def test_kernel_configs_pipeline_every_loop_and_leave_room_for_two_blocks():
    """Every kernel's key (query) loop is pipelined (tap loops unrolled); 16-bit kernels at 4
    warps, or 8 with tiles small enough for 128 registers (two blocks per multiprocessor, read in
    the builds by tools/check_triton_build.py); query tiles of 32, 16 per batch item in the
    query backward and in the float32 key backward; 32 pooled keys per tile."""
    from mmtransnext.ops.triton_attention import QUERY_ITEMS
    from mmtransnext.ops.triton_configs import kernel_config
    assert QUERY_ITEMS == 2
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for window in (0, 3):
            configs = {k: kernel_config(dtype, window, k) for k in ('forward', 'query', 'keys')}
            assert all(c.block_n == 32 for c in configs.values())
            assert configs['forward'].block_m == 32
            assert configs['keys'].block_m == (16 if dtype == torch.float32 else 32)
            assert configs['query'].block_m == 16
    assert kernel_config(torch.bfloat16, 3, 'keys').warps == 4
    assert kernel_config(torch.bfloat16, 0, 'forward').warps == 4
    assert kernel_config(torch.bfloat16, 0, 'query').warps == 8
    assert kernel_config(torch.float16, 0, 'query') == kernel_config(torch.bfloat16, 0, 'query')


def test_more_than_four_column_taps_raise():
    q, kp = torch.zeros(1, 2, 12, 24), torch.zeros(1, 2, 4, 24)
    folded = torch.zeros(2, 3, 2, 3)
    rows_w = torch.zeros(4, 2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match='1 to 4 taps'):
        triton_attention(q, kp, kp, folded, rows_w, None, (3, 4), (2, 2))
