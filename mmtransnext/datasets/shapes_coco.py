"""mmdet dataset of the generated COCO-format shapes (written on first use)."""
from typing import Optional

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from .synthetic import SHAPE_CLASSES, SHAPE_COLOURS, ensure_shapes_coco


@DATASETS.register_module()
class ShapesCocoDataset(CocoDataset):
    """``CocoDataset`` over :func:`~mmtransnext.datasets.ensure_shapes_coco` files.

    Args:
        data_root: directory of the generated set; generated there if missing.
        generator: :class:`~mmtransnext.datasets.ShapesSpec` fields (defaults otherwise).
        **kwargs: as for ``CocoDataset`` (``ann_file``, ``data_prefix``, ``pipeline`` ...).
    """
    METAINFO = dict(classes=SHAPE_CLASSES, palette=list(SHAPE_COLOURS))

    def __init__(self, *args, data_root: str = '', generator: Optional[dict] = None,
                 **kwargs) -> None:
        ensure_shapes_coco(data_root, **(generator or {}))
        super().__init__(*args, data_root=data_root, **kwargs)

    @classmethod
    def generate_files(cls, dataset_cfg: dict) -> None:
        """Generate the files a config's dataset entry needs (tools call this up front)."""
        ensure_shapes_coco(dataset_cfg['data_root'], **(dataset_cfg.get('generator') or {}))
