"""How the compiled ops in ``csrc/`` are built: sources and flags.

One definition for both builds: ``setup.py`` (``mmtransnext._ext``) reads this file by path (it
cannot import the package before it is installed) and the JIT build in :mod:`.extension` imports
it. Only the standard library is used here.
"""
import glob
import os.path as osp
from typing import List

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
