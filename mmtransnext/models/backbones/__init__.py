from .base import MultiStageBackbone, families, family_of, register_family
from .transnext import ARCH_SETTINGS, TransNeXt
from .transxnet import TransXNet

__all__ = ['ARCH_SETTINGS', 'MultiStageBackbone', 'TransNeXt', 'TransXNet', 'families',
           'family_of', 'register_family']
