"""mmpretrain dataset of the generated classification shapes (written on first use)."""
from typing import Optional

from mmpretrain.datasets import CustomDataset
from mmpretrain.registry import DATASETS

from .synthetic import SHAPE_CLASSES, ensure_shapes_cls


@DATASETS.register_module()
class ShapesClsDataset(CustomDataset):
    """ImageNet-layout classification over :func:`~mmtransnext.datasets.ensure_shapes_cls`
    (one folder per class of :data:`SHAPE_CLASSES`).

    Args:
        data_root: directory of the generated set; generated there if missing.
        split: 'train' or 'val' (the sub-folder read).
        generator: :class:`~mmtransnext.datasets.ShapesSpec` fields (defaults otherwise).
        **kwargs: as for ``CustomDataset`` (``pipeline`` ...).
    """
    METAINFO = dict(classes=SHAPE_CLASSES)

    def __init__(self, data_root: str = '', split: str = 'train',
                 generator: Optional[dict] = None, **kwargs) -> None:
        if split not in ('train', 'val'):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        ensure_shapes_cls(data_root, **(generator or {}))
        super().__init__(data_root=data_root, data_prefix=split, **kwargs)

    @classmethod
    def generate_files(cls, dataset_cfg: dict) -> None:
        """Generate the files a config's dataset entry needs (tools call this up front)."""
        ensure_shapes_cls(dataset_cfg['data_root'], **(dataset_cfg.get('generator') or {}))
