from .base import (AttentionAdapter, MultiStageBackbone, families, family_named, family_of,
                   register_family)
from .transnext import ARCH_SETTINGS, TransNeXt
from .transxnet import TransXNet

__all__ = ['ARCH_SETTINGS', 'AttentionAdapter', 'MultiStageBackbone', 'TransNeXt', 'TransXNet',
           'families', 'family_named', 'family_of', 'register_family']
