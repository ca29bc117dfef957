from ...registry import register_backbone
from .base import MultiStageBackbone
from .transnext import ARCH_SETTINGS, TransNeXt
from .transxnet import TransXNet

register_backbone(TransNeXt)
register_backbone(TransXNet)

__all__ = ['ARCH_SETTINGS', 'MultiStageBackbone', 'TransNeXt', 'TransXNet']
