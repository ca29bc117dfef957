"""Launch configurations of the Triton kernels and the oldest triton that builds them.

Below both the launcher (:mod:`.triton_attention`) and the kernels (:mod:`.triton_kernels`),
and importable without triton: the chooser (:mod:`.dispatch`) reads the dtypes the kernels
take and the release floor here before anything compiles.
"""
import re
from typing import NamedTuple, Optional

import torch


class KernelConfig(NamedTuple):
    """Launch configuration of one kernel: ``block_m`` queries per tile (per batch item in the
    query backward, whose programs take two items; also the window keys per tile of the key
    backward's window programs), ``block_n`` pooled keys per tile, ``warps``;
    ``max_registers``: ptxas' register cap (``maxnreg``), None to leave it to ptxas, which may
    pick fewer registers than it needs (two blocks per multiprocessor) and spill. The kernels
    unroll the position bias's tap loops to :data:`MAX_TAPS_PER_PAIR` (masked), which lets
    Triton software-pipeline the key (or query) loop around them (it pipelines innermost loops
    only)."""
    block_m: int
    block_n: int
    warps: int
    max_registers: Optional[int] = None


#: :class:`KernelConfig` per input dtype, attention kind (``'window'``: aggregated attention,
#: stages 1-3; ``'full'``: stage 4) and kernel (``'forward'``, ``'query'`` and ``'keys'``
#: backward), chosen from what ``tools/check_triton_build.py`` reads in the sm_80/sm_90 builds
#: and its ``--launch-report``: every key and query loop software-pipelined, no spill with any
#: triton release from :data:`TRITON_FLOOR` on (``--triton``), at least two waves, and, for
#: 16-bit inputs (the AMP the configs train with), room for two blocks per multiprocessor where
#: the tiles allow. Larger query tiles need more registers than two blocks leave, so query
#: tiles are 32 (16 per item in the query backward, which holds two items' queries, gradients
#: and accumulators). Where a backward kernel needs more than two blocks' registers it is
#: capped at 255 and runs one block per multiprocessor rather than spill. docs/ (the Triton
#: path) lists what each compiles to and the measurements behind these choices.
_SIXTEEN_BIT = {
    'window': {'forward': KernelConfig(32, 32, 8),
               'query': KernelConfig(16, 32, 8, 255),
               'keys': KernelConfig(32, 32, 4)},
    'full': {'forward': KernelConfig(32, 32, 4),
             'query': KernelConfig(16, 32, 8, 255),
             'keys': KernelConfig(32, 32, 4)}}
_FLOAT32 = {kind: {'forward': KernelConfig(32, 32, 8, 255),
                   'query': KernelConfig(16, 32, 8, 255),
                   'keys': KernelConfig(16, 32, 8, 255)} for kind in ('window', 'full')}
KERNEL_CONFIGS = {torch.float32: _FLOAT32, torch.float16: _SIXTEEN_BIT,
                  torch.bfloat16: _SIXTEEN_BIT}

#: Most taps of the unfolded axis per (query, pooled key) pair the kernels read (their
#: ``MAX_TAPS``): two query by two key positions, bilinear resizing's most.
MAX_TAPS_PER_PAIR = 4

#: Oldest triton release that builds the kernels (torch 2.7's): from it on,
#: ``tools/check_triton_build.py --triton VERSION`` compiles every specialisation for sm_80 and
#: sm_90 without a spill. Older compilers crash on some or spill;
#: :func:`.dispatch.triton_unsupported_reason` never lets them compile.
TRITON_FLOOR = (3, 3)


def triton_release_reason(version: str) -> Optional[str]:
    """Why triton ``version`` (``triton.__version__``) cannot build the kernels (a release below
    :data:`TRITON_FLOOR`), or None."""
    match = re.match(r'(\d+)\.(\d+)', version)
    if match and tuple(map(int, match.groups())) >= TRITON_FLOOR:
        return None
    return (f'the Triton kernels need triton >= {".".join(map(str, TRITON_FLOOR))}, but '
            f'triton {version} is installed (older compilers crash on them or spill)')


def kernel_config(dtype: torch.dtype, window: int, kernel: str) -> KernelConfig:
    """:class:`KernelConfig` of ``kernel`` (``'forward'``, ``'query'``, ``'keys'``) for ``dtype``
    inputs and a window of ``window`` (0: full attention); see :data:`KERNEL_CONFIGS`."""
    return KERNEL_CONFIGS[dtype]['window' if window else 'full'][kernel]
