"""mmseg dataset of the generated ADE20K-format shapes (written on first use)."""
from typing import Optional

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .synthetic import SEG_CLASSES, SEG_PALETTE, ensure_shapes_ade


@DATASETS.register_module()
class ShapesADEDataset(BaseSegDataset):
    """ADE20K-layout semantic segmentation over :func:`~mmtransnext.datasets.ensure_shapes_ade`.

    Label files use 0 for "unlabelled" and 1.. for :data:`SEG_CLASSES`, as ADE20K does, so
    ``reduce_zero_label`` is on.

    Args:
        data_root: directory of the generated set; generated there if missing.
        generator: :class:`~mmtransnext.datasets.ShapesSpec` fields (defaults otherwise).
        **kwargs: as for ``BaseSegDataset`` (``data_prefix``, ``pipeline`` ...).
    """
    METAINFO = dict(classes=SEG_CLASSES, palette=[list(c) for c in SEG_PALETTE])

    def __init__(self, *args, data_root: str = '', generator: Optional[dict] = None,
                 img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True, **kwargs) -> None:
        ensure_shapes_ade(data_root, **(generator or {}))
        super().__init__(*args, data_root=data_root, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         **kwargs)

    @classmethod
    def generate_files(cls, dataset_cfg: dict) -> None:
        """Generate the files a config's dataset entry needs (tools call this up front)."""
        ensure_shapes_ade(dataset_cfg['data_root'], **(dataset_cfg.get('generator') or {}))
