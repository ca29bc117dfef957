"""A self-test before trusting a kernel backend on a device and dtype (run by :mod:`.dispatch`).

A small case goes through the candidate backend and through ``'torch'`` (with plain matmuls
for the pooled keys: no fused kernel in the oracle) on the same device. By default
(:class:`SelfTestCase`): a 5x7 map with 2x3 pooled keys, window 3, in interpolation mode (the
position bias resized, so both axes have two taps), 2 heads of 24 channels (the head size of
every TransNeXt), batch 2; an aggregated attention layer (window and pooled keys) and a full
attention one, forward and the gradients of the input and of every parameter. The candidate
runs in the dtype under test; the oracle runs in float32 from the same (rounded) parameters and
input. Each output and gradient is compared elementwise as ``|candidate - oracle| / (1 +
|oracle|)`` (absolute for small values, relative for large ones) against the dtype's entry of
:data:`TOLERANCES`; an exception (a kernel that fails to compile or launch) fails the test too.

The random state of the process is left as it was; gradients are computed whatever the
caller's grad mode, autocast is off. ``MMTRANSNEXT_SELF_TEST=0`` skips it (see
:mod:`.dispatch`). On a GPU it costs a few launches (plus the kernels' compilation the first
time); in Triton's CPU interpreter, tens of seconds.
"""
import copy
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .amp import autocast_off
from .dispatch import Backend

#: Largest error allowed per dtype (see the module docstring). float32 allows TF32 products
#: (``torch.backends.cuda.matmul.allow_tf32``) on either side.
TOLERANCES = {
    torch.float64: 1e-6,
    torch.float32: 2e-3,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

#: The training grids of the position tables: other than the map's, so the bias is resized.
TABLE, TABLE_POOL, PRETRAIN = (6, 8), (3, 4), (14, 14)


@dataclass(frozen=True)
class SelfTestCase:
    """What :func:`run_self_test` runs (the default is what the chooser runs).

    Attributes:
        size, pool: the map and its pooled keys.
        window: side of the sliding window.
        batch, heads, head_dim: the inputs' shape.
        layers: ``'aggregated'`` (window and pooled keys) and/or ``'full'``.
    """
    size: Tuple[int, int] = (5, 7)
    pool: Tuple[int, int] = (2, 3)
    window: int = 3
    batch: int = 2
    heads: int = 2
    head_dim: int = 24
    layers: Tuple[str, ...] = ('aggregated', 'full')


#: The case the chooser runs.
CASE = SelfTestCase()


@dataclass(frozen=True)
class SelfTestResult:
    """Outcome of :func:`run_self_test`.

    Attributes:
        passed: every output and gradient within tolerance, no error.
        max_error: the largest relative error (inf after an error or a non-finite value).
        tolerance: the dtype's tolerance.
        worst: the tensor with the largest error, e.g. ``'aggregated: grad of kv.weight'``.
        error: the exception raised, as ``'Type: message'``, or None.
        seconds: wall time.
    """
    passed: bool
    max_error: float
    tolerance: float
    worst: str
    error: Optional[str]
    seconds: float

    def summary(self) -> str:
        if self.error is not None:
            return f'{self.error} in {self.worst}'
        return (f'max error {self.max_error:.2e} in {self.worst}, tolerance '
                f'{self.tolerance:.0e}, {self.seconds:.2f} s')


def oracle_backend(candidate: Backend) -> Backend:
    """The ``'torch'`` backend on the candidate's device, pooled keys by plain matmuls."""
    return Backend('torch', 'torch', 'math', 'torch', candidate.device, torch.float32,
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
            build_position_table(TABLE, TABLE_POOL, PRETRAIN, device), True,
            window_padding_mask(size, window, cpu).to(device))
        layers.append(('aggregated', AggregatedAttention(dim, case.heads, window, 2), geometry))
    if 'full' in case.layers:
        geometry = StageGeometry(size, size, math.log(size[0] * size[1]),
                                 build_position_table(TABLE, TABLE, PRETRAIN, device), True)
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
    grads = torch.autograd.grad((out.float() * weight).sum(), [x] + [p for _, p in params],
                                allow_unused=True)
    results = {'output': out, 'grad of the input': grads[0]}
    results.update((f'grad of {name}', g) for (name, _), g in zip(params, grads[1:]))
    return results


def _error(got: Optional[Tensor], want: Optional[Tensor]) -> float:
    if got is None or want is None:
        return 0. if got is None and want is None else math.inf
    if got.shape != want.shape:
        return math.inf
    want = want.float()
    error = ((got.float() - want).abs() / (1 + want.abs())).max().item()
    return error if math.isfinite(error) else math.inf


def run_self_test(candidate: Backend, case: Optional[SelfTestCase] = None) -> SelfTestResult:
    """Compare ``candidate`` with the ``'torch'`` oracle on its device and dtype in ``case``
    (by default :data:`CASE`; see the module docstring)."""
    case = CASE if case is None else case
    start = time.perf_counter()
    device, dtype = torch.device(candidate.device), candidate.dtype
    tolerance = TOLERANCES.get(dtype, 1e-2)
    length, dim = case.size[0] * case.size[1], case.heads * case.head_dim
    worst, max_error, error, running = 'nothing', 0., None, ''
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), \
            torch.enable_grad(), autocast_off(device.type):
        torch.manual_seed(0)
        try:
            for name, layer, geometry in _cases(case, device):
                running = name
                x = torch.randn(case.batch, length, dim).to(device, dtype)
                weight = torch.randn(case.batch, length, dim).to(device)
                tested = copy.deepcopy(layer).to(dtype)
                want = _run(copy.deepcopy(tested).float(), geometry, x.float(), weight,
                            oracle_backend(candidate))
                got = _run(tested, geometry, x, weight, candidate)
                for what, expected in want.items():
                    err = _error(got.get(what), expected)
                    if err > max_error:
                        worst, max_error = f'{name}: {what}', err
        except Exception as exc:  # noqa: BLE001 - any failure of the kernel is a verdict
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
            error, max_error = f'{type(exc).__name__}: {first_line}', math.inf
            worst = running or 'building the case'
    seconds = time.perf_counter() - start
    passed = error is None and max_error <= tolerance
    return SelfTestResult(passed, max_error, tolerance, worst, error, seconds)
