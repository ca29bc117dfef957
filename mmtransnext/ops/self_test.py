"""A self-test before trusting a kernel backend on a device and dtype (run by :mod:`.dispatch`).

A case goes through the candidate backend in the dtype under test and through the ``'torch'``
oracle (plain matmuls for the pooled keys: no fused kernel) in float64, from the same (rounded)
parameters and input, on the same device: an aggregated attention layer (window and pooled
keys) and a full attention one, forward and the gradients of the input and of every parameter.
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

On a CUDA device the dispatcher runs it in a child process (:mod:`.self_test_process`,
:func:`verdict`): a kernel that faults there kills the child's CUDA context, not the user's.
The random state of the process is left as it was; gradients are computed whatever the
caller's grad mode, autocast is off. ``MMTRANSNEXT_SELF_TEST=0`` skips it (see
:mod:`.dispatch`).
"""
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .amp import autocast_off, cuda_matmul_allows_tf32
from .dispatch import Backend

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

#: Pretraining grid of the position tables (scales the offsets fed to the CPB MLP).
PRETRAIN = (14, 14)
#: Device types whose self-test :func:`verdict` runs in a child process: where a faulting
#: kernel leaves the process's device context unusable.
CHILD_DEVICE_TYPES = ('cuda',)


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
    """Outcome of :func:`run_self_test` (or of :func:`verdict`).

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


def _cases(case: SelfTestCase, device: torch.device) -> List[Tuple[str, nn.Module, object]]:
    """The layers and their stage geometry, float32, on ``device``."""
    from ..models.layers.attention import AggregatedAttention, FullAttention, StageGeometry
    from ..models.layers.position_bias import build_position_table
    from .sliding_window import window_lengths, window_padding_mask
    cpu = torch.device('cpu')
    size, pool, window = case.size, case.pool, case.window
    dim = case.heads * case.head_dim
    layers = []
    if 'aggregated' in case.layers:
        num_pool = pool[0] * pool[1]
        geometry = StageGeometry(
            size, pool, torch.log(window_lengths(size, window, cpu) + num_pool).to(device),
            build_position_table(case.table, case.table_pool, PRETRAIN, device), True,
            window_padding_mask(size, window, cpu).to(device))
        layers.append(('aggregated', AggregatedAttention(dim, case.heads, window, 2), geometry))
    if 'full' in case.layers:
        full = case.full_size
        geometry = StageGeometry(full, full, math.log(full[0] * full[1]),
                                 build_position_table(case.full_table, case.full_table,
                                                      PRETRAIN, device), True)
        layers.append(('full', FullAttention(dim, case.heads), geometry))
    with torch.no_grad():  # off the init (zero biases, equal tokens would hide mistakes)
        for _, layer, _ in layers:
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return [(name, layer.to(device), geometry) for name, layer, geometry in layers]


def _run(layer: nn.Module, geometry, x: Tensor, weight: Tensor,
         backend: Backend) -> Dict[str, Optional[Tensor]]:
    x = x.detach().requires_grad_()
    out = layer.forward_with(x, geometry, backend)
    params = [(name, p) for name, p in layer.named_parameters() if p.requires_grad]
    loss = (out.to(torch.promote_types(out.dtype, weight.dtype)) * weight).sum()
    grads = torch.autograd.grad(loss, [x] + [p for _, p in params], allow_unused=True)
    results = {'output': out, 'grad of the input': grads[0]}
    results.update((f'grad of {name}', g) for (name, _), g in zip(params, grads[1:]))
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


#: Tensors that are zero in exact arithmetic, with the tensor whose scale measures their error:
#: full attention adds the CPB bias's constant term to every logit of a query, which its
#: softmax cancels, so that term's gradient is rounding noise.
SCALE_OF = {'full: grad of cpb_fc2.bias': 'full: grad of cpb_fc2.weight'}

#: The case's layers in the order they run.
LAYERS = ('aggregated', 'full')


def _layer_results(candidate: Backend, case: SelfTestCase):
    """Per layer of ``case`` (in :data:`LAYERS` order), its name, ``(tensor, candidate's,
    oracle's)`` triples and the oracle's tensors by name; the random state, grad mode and
    autocast of the caller restored after each."""
    device, dtype = torch.device(candidate.device), candidate.dtype
    dim = case.heads * case.head_dim
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(0)
        layers = _cases(case, device)
        inputs = []
        for name, _, _ in layers:
            tokens = math.prod(case.size if name == 'aggregated' else case.full_size)
            inputs.append((torch.randn(case.batch, tokens, dim).to(device, dtype),
                           torch.randn(case.batch, tokens, dim).to(device, torch.float64)))
    for (name, layer, geometry), (x, weight) in zip(layers, inputs):
        with torch.inference_mode(False), torch.enable_grad(), autocast_off(device.type):
            tested = copy.deepcopy(layer).to(dtype)
            want = _run(copy.deepcopy(tested).double(), geometry, x.double(), weight,
                        oracle_backend(candidate))
            got = _run(tested, geometry, x, weight.float(), candidate)
        yield name, [(f'{name}: {what}', got.get(what), expected)
                     for what, expected in want.items()], want


def compare(candidate: Backend, case: Optional[SelfTestCase] = None
            ) -> List[Tuple[str, Optional[Tensor], Optional[Tensor]]]:
    """``(name, candidate's tensor, oracle's tensor)`` for each output and gradient of ``case``
    (by default :data:`CASE`), e.g. ``('aggregated: grad of kv.weight', ...)``. Raises what the
    candidate raises. The caller's random state, grad mode and autocast are left alone."""
    case = CASE if case is None else case
    return [triple for _, triples, _ in _layer_results(candidate, case) for triple in triples]


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
        for layer, triples, wanted in _layer_results(candidate, case):
            pending.remove(layer)
            for name, got, want in triples:
                scale = SCALE_OF.get(name)
                scale = None if scale is None else wanted[scale.split(': ', 1)[1]]
                errors[name] = relative_error(got, want, scale)
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


def verdict(candidate: Backend, case: Optional[SelfTestCase] = None) -> SelfTestResult:
    """The self-test as the dispatcher runs it: in a child process on the device types of
    :data:`CHILD_DEVICE_TYPES` (:func:`.self_test_process.run_in_child`), here elsewhere."""
    if torch.device(candidate.device).type in CHILD_DEVICE_TYPES:
        from .self_test_process import run_in_child
        return run_in_child(candidate, case)
    return run_self_test(candidate, case)
