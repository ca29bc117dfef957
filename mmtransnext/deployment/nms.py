"""Non-maximum suppression that an exported graph holds as ONNX ``NonMaxSuppression``.

:func:`non_max_suppression` is a ``torch.library`` operator with ONNX's signature and output:
eager, it runs a plain-PyTorch greedy suppression (what onnxruntime computes: per image and
class, boxes scoring above ``score_threshold`` taken in descending score order, each dropping the
later ones it overlaps by IoU above ``iou_threshold``); while exporting, its fake implementation
gives ``torch.export`` an output of data-dependent length and :data:`ONNX_TRANSLATIONS` lowers
it to the standard operator. No custom-op library is needed to run the graph.
"""
from typing import Callable, Dict

import torch
from torch import Tensor

__all__ = ['non_max_suppression', 'ONNX_TRANSLATIONS', 'HAS_CUSTOM_OP', 'export_operator']

#: whether this torch has ``torch.library.custom_op`` (2.4 on), which the whole-model graphs'
#: operators are made with; without it they run eagerly and refuse to export.
HAS_CUSTOM_OP = hasattr(torch.library, 'custom_op')


def export_operator(name: str) -> Callable[[Callable], Callable]:
    """``torch.library.custom_op(name)`` where torch has it; otherwise the function as it is
    (eager only: :data:`HAS_CUSTOM_OP` tells the exporter)."""
    if HAS_CUSTOM_OP:
        return torch.library.custom_op(name, mutates_args=())
    return lambda function: function


def _box_iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one ``(4,)`` corner box with ``(M, 4)`` boxes, areas without a +1 offset
    (mmcv 2.x and ONNX both)."""
    left_top = torch.maximum(box[:2], boxes[:, :2])
    right_bottom = torch.minimum(box[2:], boxes[:, 2:])
    inter = (right_bottom - left_top).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    return inter / (area + areas - inter).clamp(min=torch.finfo(boxes.dtype).tiny)


@export_operator('mmtransnext::non_max_suppression')
def non_max_suppression(boxes: Tensor, scores: Tensor, max_output_boxes_per_class: int,
                        iou_threshold: float, score_threshold: float) -> Tensor:
    """ONNX ``NonMaxSuppression`` (corner boxes).

    Args:
        boxes: ``(B, M, 4)`` boxes ``x1, y1, x2, y2``.
        scores: ``(B, C, M)`` per-class scores.
        max_output_boxes_per_class: most boxes kept per image and class.
        iou_threshold: a box is dropped when its IoU with a kept one is above this.
        score_threshold: boxes scoring at or below this are not considered.

    Returns:
        ``(K, 3)`` int64 rows ``(image, class, box)``, per image and class in descending score.
    """
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = torch.nonzero(scores[b, c] > score_threshold).flatten()
            order = candidates[scores[b, c, candidates].argsort(descending=True, stable=True)]
            kept = []
            alive = torch.ones(len(order), dtype=torch.bool)
            for i in range(len(order)):
                if len(kept) == max_output_boxes_per_class:
                    break
                if not alive[i]:
                    continue
                kept.append(int(order[i]))
                if i + 1 < len(order):
                    ious = _box_iou(boxes[b, order[i]], boxes[b, order[i + 1:]])
                    alive[i + 1:] &= ious <= iou_threshold
            selected += [(b, c, k) for k in kept]
    return torch.tensor(selected, dtype=torch.int64).reshape(-1, 3)


def _fake(boxes: Tensor, scores: Tensor, max_output_boxes_per_class: int, iou_threshold: float,
          score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def _onnx_non_max_suppression(boxes, scores, max_output_boxes_per_class: int,
                              iou_threshold: float, score_threshold: float):
    from onnxscript import opset20 as op  # the exports' opset (exporter.OPSET)
    return op.NonMaxSuppression(
        boxes, scores, op.Constant(value_ints=[max_output_boxes_per_class]),
        op.Constant(value_floats=[iou_threshold]), op.Constant(value_floats=[score_threshold]),
        center_point_box=0)


#: ``custom_translation_table`` entries for ``torch.onnx.export(..., dynamo=True)``.
ONNX_TRANSLATIONS: Dict[Callable, Callable] = {}
if HAS_CUSTOM_OP:
    non_max_suppression.register_fake(_fake)
    ONNX_TRANSLATIONS[torch.ops.mmtransnext.non_max_suppression.default] = \
        _onnx_non_max_suppression
