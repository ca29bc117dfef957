"""Mixed-precision helpers shared by the ops and layers."""
import contextlib
from typing import ContextManager

import torch


def autocast_off(device_type: str) -> ContextManager:
    """A context with autocast disabled for ``device_type`` (a no-op for device types without
    autocast, such as ``meta``): for small float32 computations whose dtype must not follow
    the autocast state of the caller (e.g. a backward run under ``torch.autocast``)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # e.g. 'meta': no autocast to turn off
        return contextlib.nullcontext()
