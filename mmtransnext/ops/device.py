"""What the ops assume about the device they run on, in one place.

The ops read the device at a few points: its memory sizes the chunked loops
(:mod:`.budget`), its multiprocessors size the pooled-key backward's grid
(:mod:`.triton_attention`), a launch makes the tensors' GPU current, the backend chooser runs its
self-test on CUDA (:mod:`.dispatch`), and a Triton kernel is launched as ``kernel[grid](...)``.
By default each comes from the real device. Measurement code (counting on CPU what a GPU would
launch, recording the Triton specialisations of a training step on fake CUDA tensors) describes
the device it stands for with a :class:`DeviceProperties` and runs under :func:`assume_device`:
for that block, in that thread or task, and nowhere else. Nothing here is read from or written to
another module or the environment.
"""
import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

#: ``launcher(kernel, grid)`` returns what ``kernel[grid]`` would: a callable taking the
#: launch's arguments.
Launcher = Callable[[Any, Any], Callable[..., Any]]


@dataclass(frozen=True)
class DeviceProperties:
    """The device the ops assume; every field left at its default reads the real device.

    Attributes:
        total_memory: bytes of memory of a CUDA device (what the chunk budgets share out);
            None asks the device.
        multiprocessors: streaming multiprocessors of a CUDA device; None asks the device.
        cpu_as_cuda: CPU tensors take the chunk budgets of a CUDA device of ``total_memory``
            bytes instead of their cache-sized chunks (to count a GPU's launches on CPU).
        switch_device: make a CUDA tensor's device current around a kernel launch (Triton
            launches on the current device); False where there is no device (fake tensors).
        self_test: whether the backend chooser runs a kernel backend's self-test; None leaves it
            to the chooser's default (on CUDA, unless ``MMTRANSNEXT_SELF_TEST=0``).
        launcher: launches a Triton kernel in place of ``kernel[grid](*args, **kwargs)`` (see
            :data:`Launcher`), e.g. to record or count launches without running them; None runs
            the kernel.
    """
    total_memory: Optional[int] = None
    multiprocessors: Optional[int] = None
    cpu_as_cuda: bool = False
    switch_device: bool = True
    self_test: Optional[bool] = None
    launcher: Optional[Launcher] = None

    def __post_init__(self) -> None:
        for name in ('total_memory', 'multiprocessors'):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f'{name} must be a positive int or None, got {value!r}')
        if self.cpu_as_cuda and self.total_memory is None:
            raise ValueError('cpu_as_cuda needs total_memory: the memory of the CUDA device '
                             'whose budgets CPU tensors take')


_ASSUMED = contextvars.ContextVar('mmtransnext_assumed_device', default=DeviceProperties())


def assumed_device() -> DeviceProperties:
    """The :class:`DeviceProperties` in force (the real device's outside :func:`assume_device`)."""
    return _ASSUMED.get()


@contextlib.contextmanager
def assume_device(properties: DeviceProperties) -> Iterator[DeviceProperties]:
    """Within the block the ops assume ``properties`` (start from :func:`assumed_device` with
    ``dataclasses.replace`` to keep what an enclosing block assumed); the previous ones come back
    after it."""
    if not isinstance(properties, DeviceProperties):
        raise TypeError(f'expected DeviceProperties, got {type(properties).__name__}')
    token = _ASSUMED.set(properties)
    try:
        yield properties
    finally:
        _ASSUMED.reset(token)


def launch_kernel(kernel: Any, grid: Any) -> Callable[..., Any]:
    """``kernel[grid]``, or the assumed :attr:`DeviceProperties.launcher`'s stand-in for it."""
    launcher = _ASSUMED.get().launcher
    return kernel[grid] if launcher is None else launcher(kernel, grid)
