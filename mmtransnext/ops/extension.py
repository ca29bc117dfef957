"""Finding the compiled ops (csrc/): the built module, else a JIT build, else nothing.

Nothing happens at ``import mmtransnext``; the first :func:`load_extension` (called by
``attn_impl='auto'``/``'ext'`` on first use) tries, in order:

1. ``mmtransnext._ext``, compiled by ``pip install -e . --no-build-isolation`` (``setup.py``);
2. a just-in-time build of ``csrc/`` (``torch.utils.cpp_extension.load`` with ninja) into the
   torch extensions cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``);
   about a minute once, then cached. Needs the source tree (``csrc/`` next to the package) and a
   C++ compiler; CUDA sources are added when torch has CUDA and nvcc is found.

Environment variable (read at the first load):

``MMTRANSNEXT_JIT_BUILD``
    ``0`` disables step 2; then only an installed build is used.

A failure never raises here: it is remembered with its reason, which :mod:`.dispatch` reports
(once as a warning for ``'auto'``, as the error for ``'ext'``).
"""
import importlib
import os
import os.path as osp
import threading
from dataclasses import dataclass
from typing import Optional

import torch
from mmengine.logging import print_log

from . import bias_ops, ext_build, window_ops

JIT_ENV = 'MMTRANSNEXT_JIT_BUILD'
JIT_NAME = 'mmtransnext_ext'
SOURCE_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

BUILD_HINT = ('Build it with `pip install -e . --no-build-isolation` in the mmtransnext source '
              f'tree (or `bash tools/install.sh`), or allow the JIT build ({JIT_ENV} unset or 1, '
              'needs a C++ compiler and ninja).')

# Dtypes the kernels are compiled for, per device type.
SUPPORTED_DTYPES = {
    'cpu': (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    'cuda': (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


@dataclass(frozen=True)
class ExtensionStatus:
    """Outcome of :func:`load_extension`.

    Attributes:
        loaded: the ops are registered in this process.
        source: where they came from: ``'mmtransnext._ext'``, ``'jit'`` or ``''``.
        error: why they could not be loaded (empty when loaded).
    """
    loaded: bool
    source: str = ''
    error: str = ''


_status: Optional[ExtensionStatus] = None
_lock = threading.Lock()


def _import_built() -> ExtensionStatus:
    try:
        importlib.import_module(ext_build.EXT_NAME)
    except ImportError as exc:
        # Not built (ModuleNotFoundError) or built against another torch (undefined symbols).
        return ExtensionStatus(False, error=f'{ext_build.EXT_NAME} could not be imported ({exc})')
    return ExtensionStatus(True, ext_build.EXT_NAME)


def _jit_build() -> ExtensionStatus:
    from torch.utils import cpp_extension

    with_cuda = ext_build.with_cuda(os.environ.get('FORCE_CUDA'), torch.version.cuda is not None,
                                    cpp_extension.CUDA_HOME, torch.cuda.is_available(),
                                    os.environ.get('TORCH_CUDA_ARCH_LIST'))
    sources = ext_build.sources(SOURCE_ROOT, with_cuda)
    if not sources:
        return ExtensionStatus(False, error=f'no sources for a JIT build in '
                               f'{ext_build.csrc_dir(SOURCE_ROOT)} (not a source tree)')
    device = 'CUDA' if with_cuda else 'CPU'
    print_log(f'mmtransnext: {ext_build.EXT_NAME} is not installed; using a JIT build of the '
              f'{device} sliding-window ops instead (compiled on first use, about a minute, then '
              'cached)', logger='current')
    try:
        cpp_extension.load(
            name=JIT_NAME, sources=sources, extra_include_paths=ext_build.include_dirs(SOURCE_ROOT),
            extra_cflags=ext_build.CXX_FLAGS, extra_ldflags=ext_build.LINK_FLAGS,
            extra_cuda_cflags=ext_build.NVCC_FLAGS, with_cuda=with_cuda,
            is_python_module=False, verbose=False)
    except Exception as exc:  # compiler errors, missing ninja, unwritable cache, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ExtensionStatus(False, error=f'the JIT build failed: {first_line}')
    return ExtensionStatus(True, 'jit')


def load_extension() -> ExtensionStatus:
    """Load the compiled ops once per process (see the module docstring); never raises."""
    global _status
    with _lock:
        if _status is not None:
            return _status
        if window_ops.op_defined():  # loaded by other means, e.g. torch.ops.load_library
            status = ExtensionStatus(True, 'preloaded')
        else:
            status = _import_built()
            if not status.loaded:
                if os.environ.get(JIT_ENV, '1') == '0':
                    status = ExtensionStatus(False, error=f'{status.error}; JIT build disabled '
                                             f'by {JIT_ENV}=0')
                else:
                    built_error = status.error
                    status = _jit_build()
                    if not status.loaded:
                        status = ExtensionStatus(False, error=f'{built_error}; {status.error}')
        if status.loaded:
            window_ops.register()
            if bias_ops.op_built():  # an older build may lack it
                bias_ops.register()
        _status = status
        return status


def expand_bias_available() -> bool:
    """Whether the compiled position-bias expansion (:mod:`.bias_ops`, CPU) can run: the
    library loaded (on first use) and built with it."""
    return load_extension().loaded and bias_ops.op_built()


def unsupported_reason(device_type: str, dtype: torch.dtype) -> Optional[str]:
    """Why the compiled ops cannot run on ``device_type`` tensors of ``dtype``; None if they can.

    Loads the extension on first use.
    """
    status = load_extension()
    if not status.loaded:
        return f'the compiled sliding-window ops are not available: {status.error}'
    dispatch_key = {'cpu': 'CPU', 'cuda': 'CUDA'}.get(device_type)
    if dispatch_key is None or not torch._C._dispatch_has_kernel_for_dispatch_key(
            window_ops.QK, dispatch_key):
        return f'the compiled sliding-window ops were not built for {device_type} tensors'
    if dtype not in SUPPORTED_DTYPES[device_type]:
        return f'the compiled sliding-window ops do not support {dtype} on {device_type}'
    return None
