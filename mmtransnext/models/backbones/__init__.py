from ...registry import register_backbone
from .transnext import ARCH_SETTINGS, TransNeXt

register_backbone(TransNeXt)

__all__ = ['ARCH_SETTINGS', 'TransNeXt']
