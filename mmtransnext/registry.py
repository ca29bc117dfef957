"""Registration of the package's modules in the OpenMMLab registries that are installed."""
import importlib
from typing import Type

#: Registries a backbone joins when their library imports. mmengine's root registry is the
#: parent of the others, so a build under any default scope (e.g. a plain Runner's 'mmengine')
#: finds it too.
BACKBONE_REGISTRIES = ('mmengine.registry', 'mmdet.registry', 'mmseg.registry',
                       'mmpretrain.registry')


def register_backbone(cls: Type) -> Type:
    """Register ``cls`` in mmengine's, mmdet's, mmseg's and mmpretrain's ``MODELS`` (each only
    if installed)."""
    for module_name in BACKBONE_REGISTRIES:
        try:
            registry = importlib.import_module(module_name).MODELS
        except ImportError:
            continue
        registry.register_module(module=cls, force=True)
    return cls

