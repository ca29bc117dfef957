"""A self-test before trusting a kernel backend on a device and dtype (run by :mod:`.dispatch`).

A case goes through the candidate backend in the dtype under test and through the ``'torch'``
oracle (plain matmuls for the pooled keys: no fused kernel) in float64, from the same (rounded)
random inputs and parameters, on the same device: TransNeXt's aggregated attention (window and
pooled keys, from the tokens and the projections) and its full attention, as the layers run
them (:mod:`.cosine_attention`), forward and the gradient of every input.
The default case (:data:`CASE`) is sized to reach what a small one misses in the Triton kernels
(:mod:`.triton_attention`): several query tiles and pooled-key tiles, the pooled-key backward
split into two runs of query tiles (``key_splits``), an odd batch of 3 (the query backward's
second pair of batch items has one), the position bias resized along the columns only (the CPB
grid folded along the columns, one unweighted row tap) in the aggregated layer and along both
axes (folded along the rows, weighted taps) in the full one; 2 heads of 24 channels (the head
size of every TransNeXt).

Each output and gradient is compared relative to its own scale, ``max|candidate - oracle| /
max|oracle|``, against the dtype's entry of :data:`TOLERANCES` (set from what the ``'torch'``
path itself achieves in that dtype against float64): a gradient missing one batch item's or one
split's contribution is off by a large fraction of its scale, however small its values. An
exception (a kernel that fails to compile or launch) fails the test too.

On a CUDA device the dispatcher runs it in a child process
(:func:`.self_test_process.verdict`): a kernel that faults there kills the child's CUDA
context, not the user's.
The random state of the process is left as it was; gradients are computed whatever the
caller's grad mode, autocast is off. ``MMTRANSNEXT_SELF_TEST=0`` skips it (see
:mod:`.dispatch`).
"""
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .amp import autocast_off, cuda_matmul_allows_tf32
from .backend import Backend
from .bias_taps import BiasTaps
from .cosine_attention import QueryScale, WindowWeights, aggregated_attention, full_attention
from .sliding_window import window_lengths, window_padding_mask

#: Largest relative error (see the module docstring) per dtype: about twice what the ``'torch'``
#: path reaches in that dtype against float64 on the default case (:data:`CASE`; in 16 bits
#: the largest errors are in the parameter gradients that are sums with cancellation: the
#: temperature's, the CPB MLP's), more for float32 where the Triton kernels' float32 products
#: may round in another order.
TOLERANCES = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 8e-2,
    torch.bfloat16: 4e-1,
}
#: float32 with TF32 products allowed (``torch.backends.cuda.matmul``): 10-bit mantissas, as
#: float16's.
TF32_TOLERANCE = TOLERANCES[torch.float16]



@dataclass(frozen=True)
class SelfTestCase:
    """What :func:`run_self_test` runs (the default is what the chooser runs).

    Attributes:
        size, pool: the aggregated layer's map and its pooled keys.
        table, table_pool: the query and key grids its position table was built for (other
            than ``size`` / ``pool``: the bias is resized, interpolation mode).
        full_size, full_table: the full attention layer's map (its keys too) and its table's
            grid.
        window: side of the sliding window.
        batch, heads, head_dim: the inputs' shape.
        layers: ``'aggregated'`` (window and pooled keys) and/or ``'full'``.
    """
    size: Tuple[int, int] = (22, 23)
    pool: Tuple[int, int] = (5, 7)
    table: Tuple[int, int] = (22, 16)
    table_pool: Tuple[int, int] = (5, 4)
    full_size: Tuple[int, int] = (6, 7)
    full_table: Tuple[int, int] = (4, 5)
    window: int = 3
    batch: int = 3
    heads: int = 2
    head_dim: int = 24
    layers: Tuple[str, ...] = ('aggregated', 'full')


#: The case the chooser runs.
CASE = SelfTestCase()


@dataclass(frozen=True)
class SelfTestResult:
    """Outcome of :func:`run_self_test` (or of :func:`.self_test_process.verdict`).

    Attributes:
        passed: every output and gradient within tolerance, no error.
        max_error: the largest relative error (inf after an error or a non-finite value).
        tolerance: the dtype's tolerance.
        worst: the tensor with the largest error, e.g. ``'aggregated: grad of kv.weight'``,
            or the layer where an error happened ('' when the child process failed).
        error: the exception raised, as ``'Type: message'`` (or how the child process
            ended), or None.
        seconds: wall time of the case.
        errors: the relative error of each tensor compared.
        process: ``'this process'`` or ``'child process'``.
        overhead: seconds the child process took besides the case (its start, its imports).
    """
    passed: bool
    max_error: float
    tolerance: float
    worst: str
    error: Optional[str]
    seconds: float
    errors: Dict[str, float] = field(default_factory=dict)
    process: str = 'this process'
    overhead: float = 0.

    def summary(self) -> str:
        """One line: the error and where, or the largest relative error and the tolerance."""
        if self.error is not None:
            return f'{self.error} in {self.worst}' if self.worst else self.error
        started = f' (+{self.overhead:.1f} s to start a {self.process})' if self.overhead else ''
        return (f'max relative error {self.max_error:.2e} in {self.worst}, tolerance '
                f'{self.tolerance:.0e}, {self.seconds:.2f} s{started}')


def tolerance(dtype: torch.dtype, tf32: bool = False) -> float:
    """The largest relative error allowed for ``dtype`` (float32 with TF32 products:
    :data:`TF32_TOLERANCE`)."""
    if dtype == torch.float32 and tf32:
        return TF32_TOLERANCE
    return TOLERANCES.get(dtype, TOLERANCES[torch.float16])


def oracle_backend(candidate: Backend) -> Backend:
    """The ``'torch'`` backend on the candidate's device in float64, pooled keys by plain
    matmuls."""
    return Backend('torch', 'torch', 'math', 'torch', candidate.device, torch.float64,
                   'self-test oracle')


def _offset_index(query_len: int, key_len: int) -> Tensor:
    """``(query_len, key_len)`` row of each (query, key) offset along one axis in the sorted
    unique offsets, with the key positions spread over the queries' (as a position table
    does: pairs at the same offset share a row)."""
    offsets = (torch.arange(query_len)[:, None] * key_len -
               torch.arange(key_len)[None, :] * query_len)
    return torch.unique(offsets, return_inverse=True)[1]


def case_taps(table: Tuple[int, int], table_pool: Tuple[int, int], size: Tuple[int, int],
              pool: Tuple[int, int]) -> Tuple[BiasTaps, Tuple[int, int]]:
    """The taps of a position table built for ``table`` queries and ``table_pool`` keys,
    resized to ``size`` x ``pool`` (bilinear taps where they differ), and the table's grid
    ``(rows, columns)``."""
    index = (_offset_index(table[0], table_pool[0]), _offset_index(table[1], table_pool[1]))
    taps = BiasTaps.build(index, size, pool)
    return taps, (int(index[0].max()) + 1, int(index[1].max()) + 1)


def _inputs(case: SelfTestCase, name: str) -> Tuple[Dict[str, Tensor], BiasTaps]:
    """Float32 inputs of layer ``name`` of ``case`` on the host, off any special value (zero
    biases, equal tokens would hide mistakes), and its taps."""
    dim, heads, d = case.heads * case.head_dim, case.heads, case.head_dim
    aggregated = name == 'aggregated'
    taps, grid = case_taps(*((case.table, case.table_pool, case.size, case.pool) if aggregated
                             else (case.full_table, case.full_table, case.full_size,
                                   case.full_size)))
    tokens = math.prod(case.size if aggregated else case.full_size)
    keys = math.prod(case.pool) if aggregated else tokens

    def normalised(*shape: int) -> Tensor:
        return F.normalize(torch.randn(*shape), dim=-1)

    inputs = {'grid': torch.randn(heads, *grid),
              'query_embedding': torch.randn(heads, 1, d) * 0.02,
              'temperature': torch.log(torch.expm1(torch.full((heads, 1, 1), 1 / 0.24))) +
              torch.randn(heads, 1, 1) * 0.05}
    if aggregated:
        window = case.window ** 2
        inputs.update({
            'the input': torch.randn(case.batch, tokens, dim),
            'q_weight': torch.randn(dim, dim) / math.sqrt(dim),
            'q_bias': torch.randn(dim) * 0.05,
            'kv_weight': torch.randn(2 * dim, dim) / math.sqrt(dim),
            'kv_bias': torch.randn(2 * dim) * 0.05,
            'local_bias': torch.randn(heads, window) * 0.05,
            'tokens': torch.randn(heads, d, window) * 0.02,
            'token_bias': torch.randn(heads, 1, window) * 0.05,
            'k_pool': normalised(case.batch, heads, keys, d),
            'v_pool': torch.randn(case.batch, heads, keys, d)})
    else:
        inputs.update({'q_norm': normalised(case.batch, heads, tokens, d),
                       'k': normalised(case.batch, heads, keys, d),
                       'v': torch.randn(case.batch, heads, keys, d)})
    return inputs, taps


def _attend(name: str, case: SelfTestCase, leaves: Dict[str, Tensor], taps: BiasTaps,
            backend: Backend) -> Tensor:
    """Layer ``name``'s attention of ``case`` from ``leaves`` with ``backend``."""
    device = leaves['grid'].device
    if name == 'full':
        scale = QueryScale(leaves['query_embedding'], leaves['temperature'],
                           math.log(math.prod(case.full_size)))
        return full_attention(leaves['q_norm'], leaves['k'], leaves['v'], leaves['grid'], taps,
                              case.full_size, scale, backend)
    cpu = torch.device('cpu')
    lengths = window_lengths(case.size, case.window, cpu) + math.prod(case.pool)
    scale = QueryScale(leaves['query_embedding'], leaves['temperature'],
                       torch.log(lengths).to(device))
    weights = WindowWeights(*(leaves[key] for key in WindowWeights._fields))
    return aggregated_attention(leaves['the input'], leaves['k_pool'], leaves['v_pool'],
                                leaves['grid'], taps, case.size, case.pool, case.window,
                                weights, scale,
                                window_padding_mask(case.size, case.window, cpu).to(device),
                                backend)


def _run(name: str, case: SelfTestCase, inputs: Dict[str, Tensor], taps: BiasTaps,
         weight: Tensor, backend: Backend) -> Dict[str, Optional[Tensor]]:
    leaves = {key: t.detach().requires_grad_() for key, t in inputs.items()}
    out = _attend(name, case, leaves, taps, backend)
    loss = (out.to(torch.promote_types(out.dtype, weight.dtype)) * weight).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results = {'output': out}
    results.update((f'grad of {key}', g) for key, g in zip(leaves, grads))
    return results


def relative_error(got: Optional[Tensor], want: Optional[Tensor],
                   scale: Optional[Tensor] = None) -> float:
    """``max|got - want| / max|scale|`` (``scale`` by default ``want``; inf for a missing
    tensor, another shape or a non-finite value; against a zero scale, ``want`` must be matched
    exactly)."""
    if got is None or want is None:
        return 0. if got is None and want is None else math.inf
    if got.shape != want.shape:
        return math.inf
    if want.numel() == 0:
        return 0.
    want = want.double()
    difference = (got.double() - want).abs().max().item()
    scale = (want if scale is None else scale).double().abs().max().item()
    if not (math.isfinite(difference) and math.isfinite(scale)):
        return math.inf
    if scale == 0:
        return 0. if difference == 0 else math.inf
    return difference / scale


#: The case's layers in the order they run.
LAYERS = ('aggregated', 'full')


def _layer_results(candidate: Backend, case: SelfTestCase):
    """Per layer of ``case`` (in :data:`LAYERS` order), its name and ``(tensor, candidate's,
    oracle's)`` triples; the random state, grad mode and autocast of the caller restored after
    each."""
    device, dtype = torch.device(candidate.device), candidate.dtype
    names = [name for name in LAYERS if name in case.layers]
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(0)
        cases = []
        for name in names:
            inputs, taps = _inputs(case, name)
            out_shape = (case.batch, case.heads,
                         math.prod(case.size if name == 'aggregated' else case.full_size),
                         case.head_dim)
            cases.append((inputs, taps, torch.randn(out_shape)))
    for name, (inputs, taps, weight) in zip(names, cases):
        with torch.inference_mode(False), torch.enable_grad(), autocast_off(device.type):
            tested = {key: t.to(device, dtype) for key, t in inputs.items()}
            taps = taps.to(device)
            weight = weight.to(device, torch.float64)
            want = _run(name, case, {key: t.double() for key, t in tested.items()}, taps,
                        weight, oracle_backend(candidate))
            got = _run(name, case, tested, taps, weight.float(), candidate)
        yield name, [(f'{name}: {what}', got.get(what), expected)
                     for what, expected in want.items()]


def compare(candidate: Backend, case: Optional[SelfTestCase] = None
            ) -> List[Tuple[str, Optional[Tensor], Optional[Tensor]]]:
    """``(name, candidate's tensor, oracle's tensor)`` for each output and gradient of ``case``
    (by default :data:`CASE`), e.g. ``('aggregated: grad of kv.weight', ...)``. Raises what the
    candidate raises. The caller's random state, grad mode and autocast are left alone."""
    case = CASE if case is None else case
    return [triple for _, triples in _layer_results(candidate, case) for triple in triples]


def run_self_test(candidate: Backend, case: Optional[SelfTestCase] = None) -> SelfTestResult:
    """Compare ``candidate`` with the ``'torch'`` oracle on its device and dtype in ``case``
    (by default :data:`CASE`; see the module docstring), in this process."""
    case = CASE if case is None else case
    start = time.perf_counter()
    allowed = tolerance(candidate.dtype, candidate.device.startswith('cuda') and
                        cuda_matmul_allows_tf32())
    errors: Dict[str, float] = {}
    worst, max_error, error = 'nothing', 0., None
    pending = [name for name in LAYERS if name in case.layers]
    try:
        for layer, triples in _layer_results(candidate, case):
            pending.remove(layer)
            for name, got, want in triples:
                errors[name] = relative_error(got, want)
                if errors[name] > max_error or worst == 'nothing':
                    worst, max_error = name, errors[name]
    except Exception as exc:  # noqa: BLE001 - any failure of the kernel is a verdict
        error, max_error = describe(exc), math.inf
        worst = pending[0] if pending else 'building the case'
    seconds = time.perf_counter() - start
    passed = error is None and max_error <= allowed
    return SelfTestResult(passed, max_error, allowed, worst, error, seconds, errors)


def describe(exc: BaseException) -> str:
    """``'Type: first line of the message'``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
