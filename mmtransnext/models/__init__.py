from .backbones import ARCH_SETTINGS, MultiStageBackbone, TransNeXt, TransXNet

__all__ = ['ARCH_SETTINGS', 'MultiStageBackbone', 'TransNeXt', 'TransXNet']
