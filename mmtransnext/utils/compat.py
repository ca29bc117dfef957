"""What differs between the torch releases mmtransnext supports, in one place.

The package runs on torch from :data:`~mmtransnext.version.TORCH_FLOOR` on (the release mmcv
2.1's prebuilt wheels are made for). Newer releases added APIs the ops use; this module gives
each a small helper that calls the new API where it exists and its older equivalent, or a plain
stand-in, where it does not:

- ``torch.library.custom_op`` / ``register_fake`` / ``register_autograd`` (torch 2.4): below,
  :func:`custom_op` makes a plain Python function and :func:`register_autograd` ties its
  backward through a ``torch.autograd.Function``; ops defined in C++ get that function as
  their autograd kernel. No fake kernels there, so ``torch.compile`` cannot trace the ops (the
  op wrappers say so once, when it tries: :func:`check_traceable`);
- ``torch.get_autocast_dtype`` / ``torch.is_autocast_enabled(device_type)`` (torch 2.4):
  :func:`autocast_dtype` reads the per-device functions of older releases;
- ``torch.compiler.is_exporting`` (torch 2.7): :func:`is_exporting` is False before (only the
  TorchScript-based ONNX exporter is seen there; ``torch.export`` of this package needs 2.7);
- the CPU flash kernel of ``scaled_dot_product_attention`` with an additive mask
  (:data:`HAS_CPU_FLASH_WITH_MASK`): absent, the pooled attention takes its math path.

Only torch and the standard library are imported here: every layer of the package may use it.
"""
# Annotations unevaluated: the module must import on any torch, so that check_torch can name one
# below the range.
from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..version import TORCH_FLOOR


def parse_version(text: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string such as ``'2.1.2+cu121'`` or ``'2.6.0a0'``."""
    match = re.match(r'(\d+)\.(\d+)', text)
    if match is None:
        raise ValueError(f'not a version: {text!r}')
    return int(match.group(1)), int(match.group(2))


def _has(path: str) -> bool:
    """Whether ``torch.<path>`` exists (any part may be missing: the module must import on
    any torch, so that :func:`check_torch` can name a torch below the range)."""
    obj: Any = torch
    for name in path.split('.'):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


#: torch >= 2.4: ops through ``torch.library.custom_op``, with fake kernels and autograd.
HAS_CUSTOM_OP = _has('library.custom_op')
#: torch >= 2.4: ``torch.get_autocast_dtype(device_type)`` and friends.
HAS_DEVICE_AUTOCAST_API = _has('get_autocast_dtype') and _has('amp.is_autocast_available')
#: torch >= 2.7: ``torch.compiler.is_exporting``.
HAS_IS_EXPORTING = _has('compiler.is_exporting')


def _has_cpu_flash_with_mask() -> bool:
    try:
        schema = str(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default._schema)
    except (AttributeError, RuntimeError):  # also a torch without torch.ops (check_torch)
        return False
    return 'attn_mask' in schema


#: The CPU flash kernel of ``scaled_dot_product_attention`` takes an additive mask (torch 2.3+).
HAS_CPU_FLASH_WITH_MASK = _has_cpu_flash_with_mask()


def unsupported_torch_reason(version: str = torch.__version__) -> Optional[str]:
    """Why torch ``version`` is below the supported range, in one line, or None."""
    if parse_version(version) >= parse_version(TORCH_FLOOR):
        return None
    return (f'mmtransnext needs torch >= {TORCH_FLOOR}, found torch {version}: its attention '
            'calls scaled_dot_product_attention with a scale and uses torch.compiler, which '
            f'torch {TORCH_FLOOR} introduced; install a newer torch (README: Supported versions)')


def check_torch() -> None:
    """Raise ``ImportError`` (one line) when the installed torch is below the range."""
    reason = unsupported_torch_reason()
    if reason is not None:
        raise ImportError(reason)


# ------------------------------------------------------------------------ autocast and export
def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts ``device_type`` tensors to, or None where autocast is off there
    (or does not exist, as for ``meta``). On torch >= 2.4 torch.compile folds it to a
    constant."""
    if HAS_DEVICE_AUTOCAST_API:
        if not torch.amp.is_autocast_available(device_type) or \
                not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    # Before torch 2.4: a pair of functions per device type (CUDA's unnamed), none for meta.
    if device_type == 'cuda':
        enabled, dtype = torch.is_autocast_enabled, torch.get_autocast_gpu_dtype
    else:
        enabled = getattr(torch, f'is_autocast_{device_type}_enabled', None)
        dtype = getattr(torch, f'get_autocast_{device_type}_dtype', None)
        if enabled is None or dtype is None:
            return None
    return dtype() if enabled() else None


def is_exporting() -> bool:
    """Whether ``torch.export`` traces the caller (torch >= 2.7; False before) or the
    TorchScript-based ONNX exporter does."""
    if HAS_IS_EXPORTING and torch.compiler.is_exporting():
        return True
    return torch.onnx.is_in_onnx_export()


if _has('compiler.is_compiling'):  # torch >= 2.3; dynamo folds it to a constant
    is_compiling: Callable[[], bool] = torch.compiler.is_compiling
else:
    def is_compiling() -> bool:
        """Whether dynamo (``torch.compile``, ``torch.export``) traces the caller."""
        import torch._dynamo  # not at import: loading dynamo takes a while
        return torch._dynamo.is_compiling()


def contiguous_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, whose gradient is made contiguous before it reaches the op that produced it.

    Eager CPU ``gelu_backward`` of torch 2.1 (2.1.2 measured; 2.11 and 2.14 are right) returns
    wrong values, sometimes NaN, when the incoming gradient is strided differently from the
    saved input: TransNeXt's channels-last pooling hands it a transposed gradient for batch-1
    inputs and small maps (``tests/test_compat/test_torch_range.py`` compares the gradients
    across the torch range). ``.contiguous()`` costs nothing when the gradient already is;
    under dynamo the compiler writes its own backward and no hook is added.
    """
    if tensor.requires_grad and not is_compiling():
        tensor.register_hook(lambda grad: grad.contiguous())
    return tensor


def check_traceable(op: str) -> None:
    """Warn once per ``op`` when torch.compile traces it on torch without
    ``torch.library.custom_op`` (its ops have no fake kernels there); nothing otherwise."""
    if not HAS_CUSTOM_OP and is_compiling():
        warn_no_compile(op)


@functools.lru_cache(maxsize=None)
def warn_no_compile(what: str) -> None:
    """Warn, once per ``what``, that torch.compile cannot trace it on this torch."""
    warnings.warn(
        f'{what} cannot be traced by torch.compile on torch {torch.__version__}: its ops are '
        'plain Python functions there (torch.library.custom_op needs torch >= 2.4; a whole-model '
        'torch.compile is tested on the newest torch of README "Supported versions" only)',
        RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------- ops
class PlainOp:
    """What :func:`custom_op` makes on torch without ``torch.library.custom_op``: the function
    itself, called through a ``torch.autograd.Function`` once :func:`register_autograd` gave it
    a backward.

    Attributes:
        name: the op's qualified name, e.g. ``'mmtransnext::triton_attention'``.
    """

    def __init__(self, name: str, fn: Callable) -> None:
        self.name = name
        self._fn = fn
        self._function: Optional[type] = None
        functools.update_wrapper(self, fn)

    def register_fake(self, fake: Callable) -> Callable:
        """Kept for the ``@op.register_fake`` spelling; a fake kernel serves torch.compile,
        which cannot trace a plain function's op here anyway."""
        return fake

    def set_autograd(self, backward: Callable, setup_context: Callable) -> None:
        """Route calls through an ``autograd.Function`` with this ``backward``."""
        self._function = _autograd_function(self.name, self._fn, backward, setup_context)

    def __call__(self, *args: Any) -> Any:
        check_traceable(self.name)
        if self._function is not None and torch.is_grad_enabled():
            return self._function.apply(*args)
        return self._fn(*args)


#: Ops made by :func:`custom_op` on older torch, by name (for :func:`register_autograd`).
_plain_ops: Dict[str, PlainOp] = {}
#: ``torch.library.Library`` objects holding the autograd kernels of C++ ops (kept alive: a
#: Library deregisters its kernels when it is collected).
_libraries: List[Any] = []


def _autograd_function(name: str, fn: Callable, backward: Callable,
                       setup_context: Callable) -> type:
    """An ``autograd.Function`` running ``fn`` forward, ``setup_context`` and ``backward``
    as ``torch.library.register_autograd`` would (tuples returned as tuples, lists as
    tuples)."""

    def forward(*args):
        out = fn(*args)
        return tuple(out) if isinstance(out, list) else out

    return type(f'{name.split("::")[-1]}_function', (torch.autograd.Function,), {
        'forward': staticmethod(forward),
        'setup_context': staticmethod(setup_context),
        'backward': staticmethod(backward),
    })


def custom_op(name: str, mutates_args: Tuple = ()) -> Callable[[Callable], Any]:
    """``torch.library.custom_op(name, mutates_args=...)``, or on older torch a decorator
    making a :class:`PlainOp`."""
    if HAS_CUSTOM_OP:
        return torch.library.custom_op(name, mutates_args=mutates_args)

    def decorate(fn: Callable) -> PlainOp:
        op = PlainOp(name, fn)
        _plain_ops[name] = op
        return op

    return decorate


def register_fake(name: str, fake: Callable) -> None:
    """``torch.library.register_fake`` (torch >= 2.4); nothing before, where torch.compile
    cannot trace the ops (:func:`check_traceable`)."""
    if HAS_CUSTOM_OP:
        # Recorded as the caller's: PyTorch checks it against the module a C++ schema names
        # (set_python_module).
        torch.library.register_fake(name, fake, _stacklevel=2)


def register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """``torch.library.register_autograd(name, backward, setup_context=...)``; on older torch
    the op's autograd through a ``torch.autograd.Function``: for a :class:`PlainOp` by name,
    for an op defined in C++ as its ``Autograd`` kernel (forward one dispatch level below)."""
    if HAS_CUSTOM_OP:
        torch.library.register_autograd(name, backward, setup_context=setup_context)
        return
    if name in _plain_ops:
        _plain_ops[name].set_autograd(backward, setup_context)
        return
    namespace, op_name = name.split('::')
    op = getattr(getattr(torch.ops, namespace), op_name).default

    def below_autograd(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    function = _autograd_function(name, below_autograd, backward, setup_context)
    library = torch.library.Library(namespace, 'IMPL')
    library.impl(op_name, function.apply, 'Autograd')
    _libraries.append(library)
