"""RoI pooling that an exported graph holds as ONNX ``RoiAlign`` (opset 16 and later).

:func:`roi_align` is a ``torch.library`` operator: eager, mmcv's RoIAlign kernel (what mmdet's
RoI heads run; mmcv with its compiled ops is needed, as for Mask R-CNN itself); while
exporting, :data:`ONNX_TRANSLATIONS` lowers it to the standard operator, average mode, with
``half_pixel`` coordinates for mmcv's ``aligned=True``. :func:`extract_rois` is mmdet's
``SingleRoIExtractor`` in a form a graph holds: every RoI pooled at every level, the RoI's own
level chosen by ``where`` (mmdet gathers each level's RoIs by a data-dependent index).
"""
from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn

from .nms import HAS_CUSTOM_OP, export_operator

__all__ = ['roi_align', 'extract_rois', 'ONNX_TRANSLATIONS']


@export_operator('mmtransnext::roi_align')
def roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """Average RoIAlign of ``rois`` ``(K, 5)`` (image index, ``x1, y1, x2, y2``) on
    ``features`` ``(B, C, H, W)``: ``(K, C, output_size, output_size)``."""
    from mmcv.ops import roi_align as mmcv_roi_align
    return mmcv_roi_align(features, rois, (output_size, output_size), spatial_scale,
                          sampling_ratio, 'avg', aligned)


def _fake(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
          sampling_ratio: int, aligned: bool) -> Tensor:
    return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))


def _onnx_roi_align(features, rois, output_size: int, spatial_scale: float,
                    sampling_ratio: int, aligned: bool):
    from onnxscript import opset20 as op  # the exports' opset (exporter.OPSET)
    boxes = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[5]),
                     op.Constant(value_ints=[1]))
    index = op.Cast(op.Squeeze(op.Slice(rois, op.Constant(value_ints=[0]),
                                        op.Constant(value_ints=[1]),
                                        op.Constant(value_ints=[1])),
                               op.Constant(value_ints=[1])), to=7)  # int64
    return op.RoiAlign(features, boxes, index, mode='avg', output_height=output_size,
                       output_width=output_size, sampling_ratio=sampling_ratio,
                       spatial_scale=spatial_scale,
                       coordinate_transformation_mode='half_pixel' if aligned
                       else 'output_half_pixel')


#: ``custom_translation_table`` entries for ``torch.onnx.export(..., dynamo=True)``.
ONNX_TRANSLATIONS: Dict[Callable, Callable] = {}
if HAS_CUSTOM_OP:
    roi_align.register_fake(_fake)
    ONNX_TRANSLATIONS[torch.ops.mmtransnext.roi_align.default] = _onnx_roi_align


def extract_rois(extractor: nn.Module, features: Sequence[Tensor], rois: Tensor) -> Tensor:
    """``extractor(features, rois)`` of an mmdet ``SingleRoIExtractor`` with mmcv ``RoIAlign``
    layers (square output, average mode)."""
    layers = extractor.roi_layers
    if any(getattr(layer, 'pool_mode', 'avg') != 'avg' or
           layer.output_size[0] != layer.output_size[1] for layer in layers):
        raise TypeError('only square, average-mode RoIAlign layers are exported')
    levels = len(features[:extractor.num_inputs])
    target = extractor.map_roi_levels(rois, levels) if levels > 1 else None
    pooled = None
    for i in range(levels):
        layer = layers[i]
        level = roi_align(features[i], rois, int(layer.output_size[0]),
                          float(layer.spatial_scale), int(layer.sampling_ratio),
                          bool(layer.aligned))
        pooled = level if pooled is None else torch.where(
            (target == i)[:, None, None, None], level, pooled)
    return pooled
