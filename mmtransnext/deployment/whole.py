"""Whole models with their post-processing (``part='predict'``): which module is exported for
an mmdet / mmseg model, what cannot be, and how a graph's outputs compare with mmdet's / mmseg's
``predict`` and become their data samples again (for drawing, evaluation).

Graph conventions are mmdeploy's: input the normalised ``(1, 3, H, W)`` image; detectors give
``dets (1, N, 5)`` and ``labels (1, N)`` in the input's pixels (Mask R-CNN also boolean
``masks (1, N, H, W)``), segmentors the ``(1, 1, H, W)`` label map. The graphs hold standard
operators only (NMS as ``NonMaxSuppression``, RoI pooling as ``RoiAlign``).

Why not mmdeploy's rewriters: mmdeploy 1.3 calls ``torch.onnx.export`` without ``dynamo``,
which from torch 2.9 means the ``torch.export``-based exporter, under which its rewritten models
fail to trace; forced back to the deprecated TorchScript exporter it exports the TransXNet
models, but the TransNeXt ones fail in the TorchScript tracer, and its wheel pins
``protobuf<=3.20.2``. The rewrites here follow its graph conventions on torch's current exporter.
"""
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .detectors import DetrPredict, SingleStagePredict, TwoStagePredict
from .errors import ExportError
from .nms import HAS_CUSTOM_OP
from .nms import ONNX_TRANSLATIONS as _NMS
from .roi_align import ONNX_TRANSLATIONS as _ROI_ALIGN
from .segmentors import Mask2FormerPredict, SegmentorPredict, is_mask2former

#: the ONNX translations of the operators the whole-model graphs use.
ONNX_TRANSLATIONS = {**_NMS, **_ROI_ALIGN}

__all__ = ['ONNX_TRANSLATIONS', 'compare_predictions', 'predict_module', 'predict_refusal',
           'reference_predictions', 'to_data_sample']


def _deformable_part(model: nn.Module) -> Optional[str]:
    pixel_decoder = getattr(getattr(model, 'decode_head', None), 'pixel_decoder', None)
    for part, module in (('transformer', model), ('pixel decoder', pixel_decoder)):
        if module is not None and any(cls.__name__ in ('DeformableDETR', 'MSDeformAttnPixelDecoder')
                                      for cls in type(module).__mro__):
            return part
    return None


def _is_dino(model: nn.Module) -> bool:
    return any(cls.__name__ == 'DINO' for cls in type(model).__mro__)


def predict_refusal(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be exported with its post-processing, or None."""
    name = type(model).__name__
    if _is_dino(model):
        return None if model.bbox_head.loss_cls.use_sigmoid else \
            f'{name}: only DINO heads with sigmoid scores are exported whole'
    deformable = _deformable_part(model)
    if deformable is not None and not is_mask2former(model):
        return (f"{name}'s {deformable} builds the level shapes with torch._shape_as_tensor "
                'and loops over their values (mmdet code), and its multi-scale deformable '
                'attention is an mmcv kernel: no rewrite of them is shipped yet; export '
                "part='features' and run the head in PyTorch")
    if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
        roi_head = model.roi_head
        if type(roi_head).__name__ != 'StandardRoIHead' or (
                roi_head.with_mask and type(roi_head.mask_head).__name__ != 'FCNMaskHead'):
            return (f'{name}: only the standard RoI head with an FCN mask head (Faster / Mask '
                    f'R-CNN) is exported whole, not {type(roi_head).__name__}')
        return None
    if hasattr(model, 'encode_decode'):
        return None
    head = getattr(model, 'bbox_head', None)
    if head is not None and getattr(head, 'use_sigmoid_cls', False) and \
            hasattr(head, 'prior_generator') and not hasattr(head, 'centerness_predictor'):
        return None
    return (f'no whole-model export for {name}: single-stage anchor detectors with sigmoid '
            'scores (RetinaNet), Faster / Mask R-CNN, DINO and mmseg encoder-decoders are '
            'covered')


def predict_module(model: nn.Module) -> nn.Module:
    """The module exported for ``part='predict'``: :class:`.SegmentorPredict`,
    :class:`.Mask2FormerPredict`, :class:`.DetrPredict`, :class:`.TwoStagePredict` or
    :class:`.SingleStagePredict`.

    Raises:
        ExportError: :func:`predict_refusal`'s reason.
    """
    reason = predict_refusal(model)
    if reason is not None:
        raise ExportError(reason)
    if not HAS_CUSTOM_OP:
        raise ExportError(f'whole-model export needs torch >= 2.4 (torch.library.custom_op); '
                          f'this is torch {torch.__version__}')
    if hasattr(model, 'encode_decode'):
        return Mask2FormerPredict(model) if is_mask2former(model) else SegmentorPredict(model)
    if _is_dino(model):
        return DetrPredict(model)
    if hasattr(model, 'roi_head'):
        return TwoStagePredict(model)
    return SingleStagePredict(model)


def _library(model: nn.Module) -> str:
    return 'mmseg' if hasattr(model, 'encode_decode') else 'mmdet'


def _samples(library: str, height: int, width: int) -> list:
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1., 1.))
    if library == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    from mmdet.structures import DetDataSample
    return [DetDataSample(metainfo=meta)]


def reference_predictions(model: nn.Module, x: Tensor):
    """mmdet's / mmseg's ``model.predict`` of the normalised image ``x`` ``(1, 3, H, W)``
    (boxes in ``x``'s pixels): the data sample the graph's outputs are compared with."""
    with torch.no_grad():
        return model.predict(x, _samples(_library(model), x.shape[2], x.shape[3]))[0]


def to_data_sample(outputs: Sequence[Tensor], library: str, x_shape: Sequence[int],
                   score_thr: float = 0.):
    """A graph's outputs as the data sample ``model.predict`` returns (``pred_instances`` with
    ``bboxes``, ``scores``, ``labels``; or ``pred_sem_seg``), for drawing and evaluation.

    Args:
        outputs: the graph's outputs for one image.
        library: ``'mmdet'`` (detections) or ``'mmseg'`` (label map).
        x_shape: the graph input's shape ``(1, 3, H, W)``.
        score_thr: detections scoring at or below this are left out.
    """
    if library not in ('mmdet', 'mmseg'):
        raise ValueError(f"library must be 'mmdet' or 'mmseg', got {library!r}")
    sample = _samples(library, int(x_shape[2]), int(x_shape[3]))[0]
    if library == 'mmseg':
        from mmengine.structures import PixelData
        sample.pred_sem_seg = PixelData(data=outputs[0][0])
        return sample
    from mmengine.structures import InstanceData
    dets, labels = outputs[0][0], outputs[1][0]
    keep = dets[:, 4] > score_thr
    sample.pred_instances = InstanceData(bboxes=dets[keep, :4], scores=dets[keep, 4],
                                         labels=labels[keep])
    if len(outputs) > 2:
        sample.pred_instances.masks = outputs[2][0][keep].bool()
    return sample


def _iou_per_class(actual: Tensor, expected: Tensor, num_classes: int) -> Tensor:
    ious = []
    for c in range(num_classes):
        union = ((actual == c) | (expected == c)).sum()
        if union > 0:
            ious.append(((actual == c) & (expected == c)).sum() / union)
    return torch.stack(ious) if ious else torch.ones(1)


def compare_predictions(outputs: Sequence[Tensor], reference) -> Dict[str, float]:
    """How a graph's outputs agree with ``model.predict``'s data sample ``reference``.

    Detection: ``count`` (graph) and ``reference_count``; each reference detection is paired
    with the graph's detection of the same class nearest to its box (so near-equal scores that
    swap places do not count as differences), and over the pairs: ``matched`` (fraction of
    reference detections with a same-class graph box within 1 pixel), ``box_max_abs``
    (pixels), ``score_max_abs``, ``label_agreement`` (fraction of reference detections whose
    nearest graph box, any class, has its class) and, with masks, ``mask_iou_min`` /
    ``mask_iou_mean`` (IoU of the paired masks). Segmentation: ``pixel_agreement`` and ``miou``
    of the graph's label map with the reference's taken as ground truth (classes present in
    either).
    """
    if 'pred_sem_seg' in reference:
        expected = reference.pred_sem_seg.data.reshape(-1)
        actual = outputs[0].reshape(-1).to(expected.dtype)
        classes = int(max(actual.max(), expected.max())) + 1
        return dict(pixel_agreement=float((actual == expected).double().mean()),
                    miou=float(_iou_per_class(actual, expected, classes).double().mean()))
    instances = reference.pred_instances
    dets, labels = outputs[0][0], outputs[1][0]
    figures = dict(count=float(len(dets)), reference_count=float(len(instances)))
    if not len(dets) or not len(instances):
        return figures
    # (reference, graph) largest coordinate difference; other classes pushed out of reach
    distance = (instances.bboxes[:, None, :] - dets[None, :, :4]).abs().amax(dim=2)
    nearest = distance.argmin(dim=1)
    same = instances.labels[:, None] == labels[None, :]
    paired = torch.where(same, distance, torch.inf).argmin(dim=1)
    box = distance.gather(1, paired[:, None])[:, 0]
    figures.update(
        matched=float((box <= 1.).double().mean()), box_max_abs=float(box.max()),
        score_max_abs=float((dets[paired, 4] - instances.scores).abs().max()),
        label_agreement=float((labels[nearest] == instances.labels).double().mean()))
    if len(outputs) > 2:
        actual, expected = outputs[2][0][paired].bool(), instances.masks.bool()
        union = (actual | expected).flatten(1).sum(1)
        inter = (actual & expected).flatten(1).sum(1)
        iou = torch.where(union > 0, inter / union.clamp(min=1), 1.)
        figures.update(mask_iou_min=float(iou.min()), mask_iou_mean=float(iou.mean()))
    return figures
