"""How much of a map one step of a chunked loop may take, per device: the single home of the
chunk sizes of the fast path (pooled attention, CPB MLP, ConvGLU inference bands).

On CPU a chunk is sized to stay in cache (a constant of each loop); on a CUDA device it is a
share of the device's memory, so at any practical input size the loop runs once and the number
of kernel launches does not grow with the input; on other devices (``meta``) there is no bound.

:func:`gpu_budgets` makes CPU tensors take the budgets of a CUDA device of a given memory, so
that what a GPU would launch can be counted on a machine without one
(``tools/analysis/launches.py``, ``tools/analysis/benchmark_backbone.py``); the memory of the
device is otherwise the real one, unless measurement code assumes another
(:class:`.device.DeviceProperties`).
"""
import dataclasses
import functools
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .device import assume_device, assumed_device

#: On CUDA, the share of the device's memory one chunk may take, over all the buffers of its
#: size that live at once.
CUDA_SHARE = 1 / 16


@functools.lru_cache(maxsize=None)
def _cuda_memory(index: int) -> int:
    return torch.cuda.get_device_properties(index).total_memory


def element_budget(device: torch.device, cpu_elements: int, buffers: int = 4) -> Optional[int]:
    """Float32 elements one chunk may take on ``device``.

    Args:
        device: where the loop runs.
        cpu_elements: the loop's cache-sized chunk on CPU.
        buffers: how many chunk-sized buffers live at once; on CUDA they share
            :data:`CUDA_SHARE` of the device's memory.

    Returns:
        ``cpu_elements`` on CPU, a share of the memory on CUDA (of the assumed device's memory,
        :class:`.device.DeviceProperties`; CPU too under :func:`gpu_budgets`),
        None (no bound: the whole map at once) on other devices and while a model is exported
        (:func:`.dispatch.exporting`: a graph holds one step, whose size may be symbolic).
    """
    from .backend import exporting
    if exporting():
        return None
    assumed = assumed_device()
    if device.type == 'cpu' and not assumed.cpu_as_cuda:
        return cpu_elements
    if device.type == 'cuda' and assumed.total_memory is None:
        memory = _cuda_memory(device.index if device.index is not None
                              else torch.cuda.current_device())
    elif device.type in ('cuda', 'cpu'):
        memory = assumed.total_memory
    else:
        return None
    return max(1, int(memory * CUDA_SHARE) // (4 * max(1, buffers)))


@contextmanager
def gpu_budgets(total_memory: int) -> Iterator[None]:
    """Within the block, CPU tensors (and CUDA ones) get the chunk budgets of a CUDA device with
    ``total_memory`` bytes (for counting a GPU's launches on CPU; not for speed)."""
    if total_memory < 1:
        raise ValueError(f'total_memory must be positive, got {total_memory}')
    with assume_device(dataclasses.replace(assumed_device(), total_memory=int(total_memory),
                                           cpu_as_cuda=True)):
        yield
