"""The one place that decides which backend runs the fast path's attention (``attn_impl``).

:func:`choose_backend` decides once per (``attn_impl``, device, compute dtype) and returns a
:class:`.backend.Backend`, kept for the rest of the process (in :mod:`.decisions`). The
attention layers ask once per forward (:func:`backend_for`) and hand the decision down to the
ops, which choose nothing themselves and take only a :class:`.backend.Backend`
(:mod:`.cosine_attention`, :func:`.pooled_attention.pooled_attention`,
:func:`.bias_ops.expand_columns`). The backends, each in its own module:

- ``'triton'``: the fused kernels of :mod:`.triton_attention`, the whole attention in one
  forward launch (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``);
- ``'ext'``: the compiled sliding-window ops of :mod:`.window_ops` (loaded by
  :mod:`.extension`), the pooled keys in chunks of a fused ``scaled_dot_product_attention``
  kernel (:mod:`.pooled_attention`) and, on CPU, the compiled position-bias expansion of
  :mod:`.bias_ops`;
- ``'torch'``: no compiled code: the sliding-window ops of :mod:`.sliding_window`, the same
  chunked pooled attention, the PyTorch bias expansion.

``attn_impl='triton'``, ``'ext'`` or ``'torch'`` insists on that backend (an error saying why
when it cannot run); ``'auto'`` takes the first that can of ``'triton'`` (CUDA tensors only),
``'ext'``, ``'torch'``. The decision also fixes the kernel of the pooled chunks
(``pooled_kernel``): the flash kernel on CPU, the memory-efficient one on CUDA (the fused kernel
that takes a bias and returns the log-sum-exp), plain matmuls (``'math'``) elsewhere and on a
CUDA device and dtype where the memory-efficient kernel has refused an input
(:func:`.decisions.report_failure`: one warning, and the decisions for that device and dtype are made
again). Each decision is logged once with its reason through mmengine's ``print_log`` (INFO; a
WARNING, also issued as a ``RuntimeWarning``, when ``'auto'`` fell back or a self-test failed).

Self-test. The first time a process would run the Triton kernels or the compiled window ops on
a CUDA device and dtype, :mod:`.self_test` runs a case through that backend and through
``'torch'`` and compares each output and gradient relative to its own scale at the dtype's
tolerance; on CUDA it runs in a child process (:mod:`.self_test_process`), so a kernel that
faults there leaves this process's CUDA context working. A failure (an error, outputs or
gradients too far apart, or a child that crashed or hung) is reported with the maximum error or
how the child ended, and the device and dtype move on to the next backend (``'auto'``; an
explicitly requested backend raises instead). It does not run on CPU tensors or in Triton's
interpreter unless asked for (``choose_backend(..., self_test=True)``, for tests; in this
process there).

Environment variable (read when a decision is made, here only):

``MMTRANSNEXT_SELF_TEST``
    ``0`` skips the self-test. Code that cannot run kernels (fake tensors) skips it without the
    environment: ``choose_backend(..., self_test=False)``, or
    ``DeviceProperties(self_test=False)`` under :func:`.device.assume_device`.

Export. While ``torch.export`` (and so ``torch.onnx.export(..., dynamo=True)``) or the
TorchScript-based ONNX exporter traces a model (:func:`.backend.exporting`),
:func:`backend_for` decides without the cache: ``'auto'`` and ``'torch'`` get :func:`export_backend` (the plain-PyTorch
window ops, the pooled chunks by matmuls, the PyTorch bias expansion: standard ONNX operators,
the numbers of ``'torch'``); ``'triton'`` and ``'ext'`` raise, naming ``attn_impl``, since a
graph cannot hold their kernels and a quiet switch would change the model the user asked for.

The decision is a constant for ``torch.compile`` (:func:`choose_backend` is
``assume_constant_result``): made (loading, self-testing, warning or raising) while tracing,
so a compiled graph holds only the chosen ops.
"""
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import extension
from .backend import (BACKENDS, Backend, check_impl, compute_dtype, device_name, exporting,
                      interpreting)
from .decisions import report, state
from .device import assumed_device
from .triton_configs import KERNEL_CONFIGS, triton_release_reason

SELF_TEST_ENV = 'MMTRANSNEXT_SELF_TEST'

def triton_unsupported_reason(device_type: str,
                              dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device_type`` tensors (of ``dtype``, if given),
    or None if they can."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f'triton cannot be imported ({error})'
    # Checked before anything compiles: a release below the floor may crash the compiler, i.e.
    # the process.
    reason = triton_release_reason(triton.__version__)
    if reason:
        return reason
    if not (device_type == 'cuda' or (device_type == 'cpu' and interpreting())):
        return (f'the Triton kernels run on CUDA tensors (on CPU only under '
                f'TRITON_INTERPRET=1), not on {device_type}')
    if dtype is not None and dtype not in KERNEL_CONFIGS:
        return f'the Triton kernels support {tuple(KERNEL_CONFIGS)}, not {dtype}'
    return None


def self_test_enabled() -> bool:
    """Whether :data:`SELF_TEST_ENV` allows the self-test (the only place that reads it)."""
    return os.environ.get(SELF_TEST_ENV, '1').strip().lower() not in ('0', 'false', 'off', 'no')


def export_backend(impl: str, device_type: str, device_index: Optional[int],
                   dtype: torch.dtype) -> Backend:
    """The backend of an exported graph: ``'torch'`` with the pooled chunks by matmuls
    (``'math'``: the fused SDPA kernels have no standard ONNX translation), the numbers of
    ``attn_impl='torch'``.

    Raises:
        RuntimeError: ``impl`` is ``'triton'`` or ``'ext'``: their kernels are not standard
            operators, and quietly running another backend would not be what was asked for.
    """
    if check_impl(impl) in ('triton', 'ext'):
        raise RuntimeError(
            f'attn_impl={impl!r} cannot be exported: {_WHAT[impl]} are not standard operators '
            "an exported graph can hold. Set attn_impl='auto' or 'torch' (e.g. --cfg-options "
            "model.backbone.attn_impl=torch) to export the plain-PyTorch attention.")
    return Backend('torch', 'torch', 'math', 'torch', device_name(device_type, device_index),
                   dtype, f'attn_impl={impl!r} while exporting: {_WHAT["torch"]}, pooled keys '
                   'by matmuls (standard operators)')


def backend_for(impl: str, tensor: Tensor) -> Backend:
    """The decision for ``attn_impl=impl`` on tensors like ``tensor`` (its device, the dtype
    of :func:`.backend.compute_dtype`), what a layer asks once per forward and passes down to
    the ops. While :func:`.backend.exporting`, :func:`export_backend` (not cached)."""
    device = tensor.device
    if exporting():
        return export_backend(impl, device.type, device.index, compute_dtype(tensor))
    return choose_backend(impl, device.type, device.index, compute_dtype(tensor))


@torch.compiler.assume_constant_result
def choose_backend(impl: str, device_type: str, device_index: Optional[int],
                   dtype: torch.dtype, self_test: Optional[bool] = None) -> Backend:
    """The backend that runs ``attn_impl=impl`` for ``dtype`` tensors on a device, decided
    the first time it is asked for these arguments and kept.

    Args:
        impl: ``attn_impl`` (:data:`ATTN_IMPLS`).
        device_type, device_index: the device, e.g. ``'cuda', 0`` (index None for CPU).
        dtype: the compute dtype (:func:`compute_dtype`).
        self_test: run the self-test of a kernel backend before choosing it: True or False
            whatever the device; None (default) on CUDA devices unless
            ``MMTRANSNEXT_SELF_TEST=0``. Applies when this call makes the decision.

    Raises:
        RuntimeError: ``impl`` names a backend that cannot run (or failed its self-test)
            for these tensors.
    """
    key = (check_impl(impl), device_type, device_index, dtype)
    decision = state.decisions.get(key)
    if decision is not None:
        return decision
    with state.lock:
        decision = state.decisions.get(key)
        if decision is None:
            decision = _decide(impl, device_type, device_index, dtype, self_test)
            state.decisions[key] = decision
    return decision


def _candidates(impl: str, device_type: str) -> Tuple[str, ...]:
    if impl != 'auto':
        return (impl,)
    return BACKENDS if device_type == 'cuda' else BACKENDS[1:]


def _unavailable(name: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """Why backend ``name`` cannot run at all for these tensors (None if it can)."""
    if name == 'triton':
        return triton_unsupported_reason(device_type, dtype)
    if name == 'ext':
        return extension.unsupported_reason(device_type, dtype)
    return None


def _pooled_kernel(device_type: str, failed: Dict[str, str]) -> str:
    if device_type == 'cpu':
        return 'flash'
    if device_type == 'cuda' and 'efficient' not in failed:
        return 'efficient'
    return 'math'


def _make(name: str, device_type: str, device_index: Optional[int], dtype: torch.dtype,
          failed: Dict[str, str], reason: str, strict: bool = False) -> Backend:
    bias = 'torch'
    if name == 'ext' and device_type == 'cpu':
        if extension.expand_bias_available():
            bias = 'compiled'
        elif strict:
            raise RuntimeError("attn_impl='ext' was requested but the compiled expand_bias op "
                               f'is not available for cpu tensors. {extension.BUILD_HINT}')
        else:
            reason += '; the position bias expanded by PyTorch (this build has no expand_bias)'
    kernel = _pooled_kernel(device_type, failed)
    if kernel == 'math' and 'efficient' in failed:
        reason += f"; pooled keys by matmuls ({failed['efficient']})"
    return Backend(name, 'ext' if name == 'ext' else 'torch', kernel, bias,
                   device_name(device_type, device_index), dtype, reason)


_WHAT = {'triton': 'the fused Triton kernels', 'ext': 'the compiled sliding-window ops',
         'torch': 'the pure-PyTorch sliding-window attention'}


def _decide(impl: str, device_type: str, device_index: Optional[int], dtype: torch.dtype,
            self_test: Optional[bool]) -> Backend:
    failed = dict(state.failures.get((device_type, device_index, dtype), {}))
    where = f'{device_name(device_type, device_index)} {dtype}'
    passed_over: List[str] = []
    for name in _candidates(impl, device_type):
        note = ''
        reason = _unavailable(name, device_type, dtype)
        misbehaved = reason is None and name in failed  # failed a self-test before
        if misbehaved:
            reason = failed[name]
        elif reason is None and _wants_self_test(name, device_type, self_test):
            reason, note = _self_test(name, device_type, device_index, dtype, failed)
            misbehaved = reason is not None
        if reason is None:
            break
        if impl != 'auto':
            if misbehaved:
                hint = (f" attn_impl='auto' takes the next backend; {SELF_TEST_ENV}=0 skips "
                        'the self-test.')
            else:
                hint = f' {extension.BUILD_HINT}' if name == 'ext' else ''
            raise RuntimeError(f'attn_impl={impl!r} was requested but {reason}.{hint}')
        passed_over.append(f'{name}: {reason}')
    why = f"attn_impl={impl!r} on {where}: {_WHAT[name]}{note}"
    decision = _make(name, device_type, device_index, dtype, failed, why, strict=impl == 'ext')
    if passed_over and name == 'torch':
        report(f"{why} instead of the compiled ops ({'; '.join(passed_over)}; slower, more "
                f"memory). {extension.BUILD_HINT} Pass attn_impl='torch' to silence this "
                'warning.', warning=True)
    elif passed_over:
        report(f"{why} ({'; '.join(passed_over)}). Pass attn_impl={name!r} to silence this "
                'warning.', warning=True)
    else:
        report(decision.reason, warning=False)
    return decision


def _wants_self_test(name: str, device_type: str, self_test: Optional[bool]) -> bool:
    if name == 'torch':
        return False
    if self_test is None:  # else measurement code's stand-in device may say (fake tensors)
        self_test = assumed_device().self_test
    if self_test is not None:
        return self_test
    return device_type == 'cuda' and self_test_enabled()


def _self_test(name: str, device_type: str, device_index: Optional[int], dtype: torch.dtype,
               failed: Dict[str, str]) -> Tuple[Optional[str], str]:
    """Run :mod:`.self_test` for a candidate: ``(None, note)`` when it passes, else
    ``(reason, '')`` with the failure recorded for the device and dtype (the caller warns or
    raises with it)."""
    from . import self_test_process
    key = (device_type, device_index, dtype)
    passed = state.passed.get(key, {}).get(name)
    if passed is not None:
        return None, passed
    candidate = _make(name, device_type, device_index, dtype, failed, 'self-test candidate')
    result = self_test_process.verdict(candidate)  # in a child process on CUDA
    with state.lock:
        if result.passed:
            note = f' (self-test passed: {result.summary()})'
            state.passed.setdefault(key, {})[name] = note
            return None, note
        reason = f'{_WHAT[name]} failed their self-test ({result.summary()})'
        state.failures.setdefault(key, {})[name] = reason
    return reason, ''


def reset() -> None:
    """Forget every decision, failure and passed self-test of this process: the next call
    decides afresh (for tests, or after changing the environment)."""
    state.clear()
