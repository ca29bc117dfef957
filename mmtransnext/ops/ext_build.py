"""How the compiled ops in ``csrc/`` are built: sources and flags.

One definition for both builds: ``setup.py`` (``mmtransnext._ext``) reads this file by path (it
cannot import the package before it is installed) and the JIT build in :mod:`.extension` imports
it. Only the standard library is used here.
"""
import glob
import os.path as osp
from typing import List, Optional

EXT_NAME = 'mmtransnext._ext'

# -fopenmp: at::parallel_for only runs in parallel when the including file is compiled with
# OpenMP; torch itself ships libgomp, which the extension then shares. No -ffast-math: the
# kernels write -inf for out-of-map window positions.
CXX_FLAGS = ['-O3', '-fopenmp']
LINK_FLAGS = ['-fopenmp']
NVCC_FLAGS = ['-O3']


def csrc_dir(root: str) -> str:
    """``csrc/`` of a source tree whose top directory is ``root``."""
    return osp.join(root, 'csrc')


def sources(root: str, with_cuda: bool) -> List[str]:
    """C++ (and, with CUDA, ``.cu``) sources of the extension, sorted, as absolute paths."""
    csrc = csrc_dir(root)
    files = sorted(glob.glob(osp.join(csrc, '*.cpp'))) + sorted(
        glob.glob(osp.join(csrc, 'cpu', '*.cpp')))
    if with_cuda:
        files += sorted(glob.glob(osp.join(csrc, 'cuda', '*.cu')))
    return files


def include_dirs(root: str) -> List[str]:
    """Header directories of the extension."""
    return [osp.join(csrc_dir(root), 'include')]


def with_cuda(force: Optional[str], torch_has_cuda: bool, cuda_home: Optional[str],
              gpu_visible: bool, arch_list: Optional[str]) -> bool:
    """Whether to compile the CUDA kernels: ``FORCE_CUDA=1`` always, ``FORCE_CUDA=0`` never;
    unset, when torch has CUDA, a toolkit is found and there is an arch to compile for (a
    visible GPU, or ``TORCH_CUDA_ARCH_LIST``). A CUDA torch on a machine without a GPU (PyPI's
    default build) thus builds the CPU kernels unless asked otherwise: torch cannot pick the
    archs there, and nothing could run them."""
    if force in ('0', '1'):
        return force == '1'
    return torch_has_cuda and cuda_home is not None and (gpu_visible or bool(arch_list))
