"""Shared pieces of the gpu tier: why it skips, the backends, tolerances, layer geometry."""
import math
from typing import Optional, Sequence, Tuple

import torch

from mmtransnext.models.layers.attention import StageGeometry
from mmtransnext.models.layers.position_bias import build_position_table
from mmtransnext.ops.sliding_window import window_lengths, window_padding_mask
from mmtransnext.ops.backend import interpreting

Size2d = Tuple[int, int]
CPU = torch.device('cpu')

#: What the tier runs, as ``(attention_mode, attn_impl)``: the official computation
#: ('reference') and every backend of the fast path.
BACKENDS = {
    'reference': ('reference', 'torch'),
    'torch': ('fast', 'torch'),
    'ext': ('fast', 'ext'),
    'triton': ('fast', 'triton'),
    'auto': ('fast', 'auto'),
}

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

#: Allowed error relative to ``max(scale, floor)`` per dtype: float32 sums are exact to ~1e-6,
#: so 1e-4 catches any wrong term. In 16 bits the end-to-end runs under autocast round every
#: projection's output too (in Triton's interpreter with exact 16-bit products, as a GPU's MMA
#: computes them, the layers' bfloat16 gradients stay within this on the official computation
#: and on the Triton path alike); an indexing or masking error is O(scale). Gradients that sum
#: cancelling terms over a map have their own (:data:`SUM_TOLERANCES`).
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}

#: 16-bit tolerances per (attention kind, gradient) of the gradients that sum cancelling terms
#: over the whole map, relative to max(scale, 1); the sums not named take their dtype's
#: (:data:`TOLERANCES`). The Triton path
#: keeps its query gradient and the output its ``delta`` reads in float32, which brought its
#: aggregated-attention temperature gradient to the PyTorch path's error in Triton's
#: interpreter; full attention's stays above the bfloat16 tolerance in some cases on either
#: path (the Triton path's up to twice the official computation's), hence its own bound.
SUM_TOLERANCES = {torch.bfloat16: {('full', 'dtemperature'): 0.15}, torch.float16: {}}

#: In 16 bits a quantity may also be off by this many times the error of the official
#: computation (attention_mode='reference') in the same dtype on the same device.
BASELINE_FACTOR = 4


def skip_reason() -> Optional[str]:
    """Why the gpu tier cannot run here, or None."""
    if not torch.cuda.is_available():
        return 'gpu tier: no CUDA device (torch.cuda.is_available() is False); ' \
               'tools/gpu_check.sh --run runs it on a GPU machine'
    if interpreting():
        return ('gpu tier: TRITON_INTERPRET=1 (set by tests/conftest.py) would run the Triton '
                'kernels in the CPU interpreter; run `pytest tests/gpu -m gpu --confcutdir '
                'tests/gpu` (as tools/gpu_check.sh does)')
    return None


def ext_reason(device_type: str = 'cuda', dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why ``attn_impl='ext'`` cannot run on ``device_type`` here (not built), or None."""
    from mmtransnext.ops import extension
    return extension.unsupported_reason(device_type, dtype)


def skip_unavailable(backend: str) -> None:
    """Skip a test of ``backend`` whose compiled ops were not built (the GPU check records the
    failed build as its own step)."""
    import pytest
    if BACKENDS[backend][1] == 'ext':
        reason = ext_reason()
        if reason:
            pytest.skip(f"attn_impl='ext': {reason}")


def autocast(dtype: torch.dtype, device_type: str = 'cuda'):
    """Autocast to ``dtype`` for 16-bit dtypes; a no-op context for float32."""
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def differing_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many values of ``a`` and ``b`` (same dtype and shape) differ in their raw bits (so
    NaN payloads and signed zeros count): 0 for two runs of a deterministic kernel."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return (a.contiguous().view(-1).view(ints) != b.contiguous().view(-1).view(ints)).sum().item()


def max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.detach().double().cpu() - want.detach().double().cpu()).abs().max().item()


def check_close(name: str, got: Optional[torch.Tensor], want: Optional[torch.Tensor],
                dtype: torch.dtype, floor: float = 0.1, baseline: float = 0.0,
                tol: Optional[float] = None) -> None:
    """Assert ``|got - want| <= max(tol * max(scale, floor), BASELINE_FACTOR * baseline)``.

    ``scale`` is ``max |want|``; ``floor`` keeps quantities that vanish in exact arithmetic
    (rounding noise) from setting it; ``baseline`` is the error of the official computation
    (attention_mode='reference') in the same dtype on the same device, for 16-bit runs where
    that sets what any implementation can reach.
    """
    if want is None:
        assert got is None or not got.abs().any(), f'{name}: unused by the oracle, got non-zero'
        return
    assert got is not None, f'{name}: no gradient'
    assert got.shape == want.shape, f'{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}'
    assert torch.isfinite(got).all(), f'{name}: non-finite values'
    tol = TOLERANCES[dtype] if tol is None else tol
    scale = want.abs().max().item()
    error = max_error(got, want)
    bound = max(tol * max(scale, floor), BASELINE_FACTOR * baseline)
    assert error <= bound, (f'{name} ({dtype}): max error {error:.3g} > {bound:.3g} '
                            f'(scale {scale:.3g}, reference path error {baseline:.3g})')


def layer_geometry(size: Size2d, pool: Size2d, window: Optional[int],
                   trained: Optional[Tuple[Size2d, Size2d]], pretrain: Size2d,
                   device: torch.device) -> StageGeometry:
    """What a backbone stage hands its blocks (see ``TransNeXt.stage_geometry``): ``trained``
    (query grid, key grid) selects interpolation mode, None extrapolation; ``window`` None for
    full attention."""
    table_q, table_k = trained if trained else (size, pool)
    table = build_position_table(table_q, table_k, pretrain, device)
    num_keys = pool[0] * pool[1]
    if window is None:
        scale, mask = math.log(num_keys), None
    else:
        scale = torch.log(window_lengths(size, window, CPU) + num_keys).to(device)
        mask = window_padding_mask(size, window, CPU).to(device)
    return StageGeometry(size, pool, scale, table, trained is not None, mask)


def gradients(out: torch.Tensor, leaves: Sequence[torch.Tensor],
              grad_out: torch.Tensor) -> list:
    """Gradients of ``(out * grad_out).sum()`` for ``leaves`` (None where unused)."""
    return list(torch.autograd.grad(out, list(leaves), grad_out.to(out.device, out.dtype),
                                    allow_unused=True))
