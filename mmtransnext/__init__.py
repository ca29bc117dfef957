"""mmtransnext: the TransNeXt (CVPR 2024) and TransXNet (IEEE TNNLS) backbones for MMDetection 3
and MMSegmentation 1."""
from .checkpoint import install_mmengine_loader
from .compile import register_compile_rules
from .version import __version__

install_mmengine_loader()
register_compile_rules()

from .models import ARCH_SETTINGS, TransNeXt, TransXNet  # noqa: E402

__all__ = ['ARCH_SETTINGS', 'TransNeXt', 'TransXNet', '__version__']
