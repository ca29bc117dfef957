"""mmtransnext: the TransNeXt (CVPR 2024) and TransXNet (IEEE TNNLS) backbones for MMDetection 3
and MMSegmentation 1."""
from .utils.compat import check_torch

check_torch()  # one line naming the installed torch and the floor, before anything uses torch

from .version import __version__  # noqa: E402
# Importing registers the package's classes (backbones, classifier, hooks) and changes nothing
# else: mmengine's checkpoint loader and OptimWrapper are patched only by mmtransnext.hooks.
from . import hooks  # noqa: E402,F401
from .models import ARCH_SETTINGS, TransNeXt, TransXNet  # noqa: E402

__all__ = ['ARCH_SETTINGS', 'TransNeXt', 'TransXNet', '__version__']
