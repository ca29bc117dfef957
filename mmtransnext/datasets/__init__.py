"""Generated toy datasets (see :mod:`.synthetic`) and their mmdet / mmseg dataset classes.

Importing this module (e.g. through a config's ``custom_imports``) registers
``ShapesCocoDataset`` in mmdet's ``DATASETS``, ``ShapesADEDataset`` in mmseg's and
``ShapesClsDataset`` in mmpretrain's, for each library that is installed.
"""
import importlib.util

from .synthetic import (SEG_CLASSES, SEG_PALETTE, SHAPE_CLASSES, SHAPE_COLOURS, ShapesSpec,
                        ensure_generated, ensure_shapes_ade, ensure_shapes_cls,
                        ensure_shapes_coco)

__all__ = ['SEG_CLASSES', 'SEG_PALETTE', 'SHAPE_CLASSES', 'SHAPE_COLOURS', 'ShapesSpec',
           'ensure_generated', 'ensure_shapes_ade', 'ensure_shapes_cls', 'ensure_shapes_coco']

if importlib.util.find_spec('mmdet') is not None:
    from .shapes_coco import ShapesCocoDataset  # noqa: F401
    __all__.append('ShapesCocoDataset')
if importlib.util.find_spec('mmseg') is not None:
    from .shapes_ade import ShapesADEDataset  # noqa: F401
    __all__.append('ShapesADEDataset')
if importlib.util.find_spec('mmpretrain') is not None:
    from .shapes_cls import ShapesClsDataset  # noqa: F401
    __all__.append('ShapesClsDataset')
