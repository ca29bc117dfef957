"""The chooser's memory: the backends decided in this process and what failed where.

:mod:`.dispatch` decides and keeps its decisions here; the ops report a kernel that refused an
input (:func:`report_failure`, e.g. :mod:`.pooled_attention`'s memory-efficient chunks), which
makes the decisions for that device and dtype be taken again without it. Everything lives in
one object (:data:`state`) behind one lock; :func:`.dispatch.reset` empties it (tests call it
around each test that decides).
"""
import logging
import threading
import warnings
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.logging import print_log

from .backend import Backend, device_name

_DeviceKey = Tuple[str, Optional[int], torch.dtype]  # device type, index, dtype


class Decisions:
    """What the chooser has decided and learnt in this process.

    Attributes:
        lock: held while any of the others changes.
        decisions: the :class:`.backend.Backend` per (``attn_impl``, device type, index,
            dtype).
        failures: per (device type, index, dtype), what failed (``'triton'``, ``'ext'``: a
            self-test; ``'efficient'``: the pooled kernel refused an input) with the reason.
        passed: per (device type, index, dtype), the backends that passed their self-test,
            with its summary.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.decisions: Dict[Tuple[str, str, Optional[int], torch.dtype], Backend] = {}
        self.failures: Dict[_DeviceKey, Dict[str, str]] = {}
        self.passed: Dict[_DeviceKey, Dict[str, str]] = {}

    def clear(self) -> None:
        """Forget everything."""
        with self.lock:
            self.decisions.clear()
            self.failures.clear()
            self.passed.clear()


#: This process's decisions (the one instance).
state = Decisions()


def report(message: str, warning: bool) -> None:
    """Log ``message`` through mmengine (INFO, or WARNING also issued as a
    ``RuntimeWarning``)."""
    print_log(message, logger='current', level=logging.WARNING if warning else logging.INFO)
    if warning:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def report_failure(device: Union[str, torch.device], dtype: torch.dtype, part: str,
                   reason: str) -> None:
    """Record that ``part`` failed on ``device`` tensors of ``dtype`` (``'efficient'``: the
    memory-efficient pooled kernel refused an input; ``'triton'``/``'ext'``: the backend
    misbehaved): one warning, and the decisions for that device and dtype are made again
    without it."""
    device = torch.device(device)
    key = (device.type, device.index, dtype)
    with state.lock:
        parts = state.failures.setdefault(key, {})
        if part in parts:
            return
        parts[part] = reason
        for stale in [k for k in state.decisions if k[1:] == key]:
            del state.decisions[stale]
    instead = 'unfused matmuls' if part == 'efficient' else 'the next backend'
    report(f'{reason}; using {instead} for {device_name(*key[:2])} {dtype} from now on',
           warning=True)


def failures(device: Union[str, torch.device], dtype: torch.dtype) -> Dict[str, str]:
    """What :func:`report_failure` and the self-test recorded for ``device`` and ``dtype``."""
    device = torch.device(device)
    return dict(state.failures.get((device.type, device.index, dtype), {}))
