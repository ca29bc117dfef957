import importlib.util

from .backbones import ARCH_SETTINGS, MultiStageBackbone, TransNeXt, TransXNet

__all__ = ['ARCH_SETTINGS', 'MultiStageBackbone', 'TransNeXt', 'TransXNet']

if importlib.util.find_spec('mmpretrain') is not None:
    from .classifiers import OfficialImageClassifier  # noqa: F401
    __all__.append('OfficialImageClassifier')
