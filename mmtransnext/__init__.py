"""mmtransnext: the TransNeXt (CVPR 2024) and TransXNet (IEEE TNNLS) backbones for MMDetection 3
and MMSegmentation 1."""
from .utils.compat import check_torch

check_torch()  # one line naming the installed torch and the floor, before anything uses torch

from .checkpoint import install_mmengine_loader  # noqa: E402
from .compile import register_compile_rules  # noqa: E402
from .version import __version__  # noqa: E402

install_mmengine_loader()
register_compile_rules()

from .models import ARCH_SETTINGS, TransNeXt, TransXNet  # noqa: E402

__all__ = ['ARCH_SETTINGS', 'TransNeXt', 'TransXNet', '__version__']
