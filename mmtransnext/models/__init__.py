from .backbones import ARCH_SETTINGS, TransNeXt

__all__ = ['ARCH_SETTINGS', 'TransNeXt']
