"""Registration of the package's modules in the OpenMMLab registries that are installed."""
import importlib
from typing import List, Type

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


def registered_in() -> List[str]:
    """Names of the libraries whose registries are available here."""
    found = []
    for module_name in BACKBONE_REGISTRIES:
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(module_name.split('.')[0])
    return found
