"""TransNeXt's attention layers on CUDA, every backend, against the paper-equation oracle of
tests/reference.py run in float64 on the CPU: output and the gradients of the input and of every
parameter, odd map sizes, odd batches (3, and 5 for the Triton path: the query backward's
last pair of batch items half-filled), both position-bias modes, float32 and bfloat16/float16
autocast.

In 16 bits the bound is also at least a few times the error of the official computation
(attention_mode='reference') in the same dtype on the same GPU: what rounding costs any
implementation (see :data:`gpu_helpers.BASELINE_FACTOR`).
"""
from typing import Dict, Optional, Tuple

import pytest
import torch

from gpu_helpers import (BACKENDS, CPU, DTYPES, SUM_TOLERANCES, autocast, check_close,
                         gradients, layer_geometry, max_error, skip_unavailable)
from mmtransnext.models.layers.attention import AggregatedAttention, FullAttention
from reference import (brute_force_table, gather_and_resize, perturb_,
                       reference_aggregated_attention, reference_full_attention)

pytestmark = pytest.mark.gpu

PRETRAIN = (6, 6)
DIM, HEADS, WINDOW = 48, 2, 3  # head dim 24, as in every TransNeXt arch but base
#: Batch of every backend; the Triton path also runs :data:`SECOND_PAIR_BATCH`. The Triton query
#: backward takes two batch items per program: 3 leaves the second pair half-filled, 5 adds a
#: full second pair before a half-filled third.
BATCH, SECOND_PAIR_BATCH = 3, 5
#: (backend, batch) pairs of the parametrisation.
RUNS = [(backend, BATCH) for backend in BACKENDS] + [('triton', SECOND_PAIR_BATCH)]

# name -> (kind, map size, pooled size, trained (query, key) grids: interpolation; None:
# extrapolation). One size per kind is what the Triton kernels compile for once.
CASES = {
    'aggregated-7x9-extrapolation': ('aggregated', (7, 9), (3, 4), None),
    'aggregated-7x9-interpolation': ('aggregated', (7, 9), (3, 4), ((8, 8), (4, 4))),
    'aggregated-37x53-extrapolation': ('aggregated', (37, 53), (4, 6), None),
    'aggregated-37x53-interpolation': ('aggregated', (37, 53), (4, 6), ((32, 32), (4, 4))),
    'full-7x9-extrapolation': ('full', (7, 9), (7, 9), None),
    'full-7x9-interpolation': ('full', (7, 9), (7, 9), ((6, 6), (6, 6))),
    'full-37x53-extrapolation': ('full', (37, 53), (37, 53), None),
}


def build_layer(kind: str, backend: str) -> torch.nn.Module:
    """The layer with the seeded, perturbed weights every backend of a case shares."""
    mode, impl = BACKENDS[backend]
    torch.manual_seed(1)
    if kind == 'full':
        layer = FullAttention(DIM, HEADS, attention_mode=mode, attn_impl=impl)
    else:
        layer = AggregatedAttention(DIM, HEADS, WINDOW, 2, attn_impl=impl, attention_mode=mode)
    perturb_(layer)
    with torch.no_grad():  # make the small-init terms matter
        for name, p in layer.named_parameters():
            if name in ('relative_pos_bias_local', 'learnable_bias', 'query_embedding'):
                p.add_(torch.randn_like(p) * 0.3)
    return layer


def case_inputs(case: str, batch: int = BATCH) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tokens and the upstream gradient of a case (float32, CPU)."""
    _, size, _, _ = CASES[case]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, size[0] * size[1], DIM, generator=gen)
    return x, torch.randn(x.shape, generator=gen)


_oracles: Dict[Tuple[str, int], list] = {}


def oracle(case: str, batch: int = BATCH) -> list:
    """Output and gradients (input, then parameters in order) of the float64 oracle."""
    if (case, batch) not in _oracles:
        kind, size, pool, trained = CASES[case]
        layer = build_layer(kind, 'reference').to(CPU, torch.float64)
        x, grad_out = case_inputs(case, batch)
        x = x.double().requires_grad_()
        built = trained if trained else (size, pool)
        index, coords = brute_force_table(*built, PRETRAIN)
        values = layer.cpb_fc2(torch.relu(layer.cpb_fc1(coords.double())))
        bias = gather_and_resize(values, index, built, size, pool)
        if kind == 'full':
            out = reference_full_attention(layer, x, bias)
        else:
            out = reference_aggregated_attention(layer, x, size, pool, bias)
        _oracles[case, batch] = [out] + gradients(out, [x] + list(layer.parameters()),
                                                  grad_out.double())
    return _oracles[case, batch]


def run_layer(case: str, backend: str, dtype: torch.dtype,
              device: torch.device = torch.device('cuda'), batch: int = BATCH) -> list:
    """Output and gradients of the layer with ``backend`` on ``device`` (autocast to ``dtype``
    for 16-bit dtypes; backward outside autocast, as a training loop runs it)."""
    kind, size, pool, trained = CASES[case]
    layer = build_layer(kind, backend).to(device)
    x, grad_out = case_inputs(case, batch)
    x = x.to(device).requires_grad_()
    geometry = layer_geometry(size, pool, None if kind == 'full' else WINDOW, trained, PRETRAIN,
                              device)
    with autocast(dtype, device.type):
        out = layer(x, geometry)
    if dtype != torch.float32:
        assert out.dtype == dtype, f'output {out.dtype} under {dtype} autocast'
    return [out] + gradients(out, [x] + list(layer.parameters()), grad_out)


_baselines: Dict[Tuple[str, torch.dtype, int], list] = {}


def baseline_errors(case: str, dtype: torch.dtype, batch: int = BATCH) -> list:
    """Errors of the official computation in ``dtype`` on the GPU, per compared quantity."""
    key = (case, dtype, batch)
    if key not in _baselines:
        got = run_layer(case, 'reference', dtype, batch=batch)
        _baselines[key] = [0.0 if w is None or g is None else max_error(g, w)
                           for g, w in zip(got, oracle(case, batch))]
    return _baselines[key]


def names(kind: str) -> list:
    return ['out', 'dx'] + ['d' + n for n, _ in build_layer(kind, 'torch').named_parameters()]


@pytest.mark.parametrize('dtype', list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize('backend,batch', RUNS, ids=[f'{b}-b{n}' for b, n in RUNS])
@pytest.mark.parametrize('case', list(CASES))
def test_layer_matches_the_oracle(case, backend, batch, dtype):
    skip_unavailable(backend)
    dtype = DTYPES[dtype]
    kind = CASES[case][0]
    got = run_layer(case, backend, dtype, batch=batch)
    want = oracle(case, batch)
    compare(kind, got, want, dtype,
            baseline_errors(case, dtype, batch) if dtype != torch.float32 else None)


#: Gradients that sum cancelling terms over the whole map (see :func:`compare`).
SUMS = ('dcpb', 'drelative_pos_bias', 'dtemperature')


def compare(kind: str, got: list, want: list, dtype: torch.dtype,
            baselines: Optional[list]) -> None:
    """Every quantity within its dtype's tolerance (see :func:`gpu_helpers.check_close`)."""
    labels = names(kind)
    assert len(got) == len(want) == len(labels)
    for i, (label, g, w) in enumerate(zip(labels, got, want)):
        floor, tol = 0.1, None
        if label.startswith(SUMS):
            # Sums over the whole map of terms that cancel (each query's logit gradients sum to
            # zero; with full attention fc2's bias gradient vanishes exactly), each carrying
            # rounding: relative to max(scale, 1), in 16 bits at SUM_TOLERANCES. An indexing
            # error is O(1).
            floor, tol = 1.0, SUM_TOLERANCES.get(dtype, {}).get((kind, label))
        check_close(label, g, w if w is None else w.to(torch.float64), dtype, floor=floor,
                    baseline=baselines[i] if baselines else 0.0, tol=tol)


def test_auto_picks_the_triton_kernels_on_cuda():
    from mmtransnext.ops.dispatch import backend_for
    x = torch.zeros(1, device='cuda')
    assert backend_for('auto', x).name == 'triton', \
        'triton imports here, so auto must take the Triton kernels'
    assert backend_for('ext', x).name != 'triton' and backend_for('torch', x).name != 'triton'
