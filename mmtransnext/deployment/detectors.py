"""Whole detectors as graphs: image in, ``dets (1, N, 5)`` (``x1, y1, x2, y2, score``) and
``labels (1, N)`` out, mmdeploy's detection outputs, with the box decoding, score filtering and
NMS of mmdet's ``predict`` inside the graph.

The heads' own pieces (anchor generator, box coder, test config) are reused; only the
data-dependent filtering mmdet does in Python (``filter_scores_and_topk``, ``batched_nms``) is
written in a form ``torch.export`` holds: top-k over the flattened (anchor, class) scores of a
level, then ONNX-style NMS per class (:mod:`.nms`) with the score threshold. Boxes are in the
input's pixels (mmdet's ``rescale=False``): scaling back to the original image stays outside,
as the normalisation does.
"""
from typing import List, Tuple

import torch
from torch import Tensor, nn

from .nms import non_max_suppression


def _select(boxes: Tensor, scores: Tensor, labels: Tensor, cfg, num_classes: int
            ) -> Tuple[Tensor, Tensor]:
    """mmdet's ``batched_nms`` and ``max_per_img`` on one image's candidates.

    Args:
        boxes: ``(M, 4)`` decoded boxes.
        scores: ``(M,)`` their scores (one class each).
        labels: ``(M,)`` their classes.
        cfg: the head's test config (``nms.iou_threshold``, ``score_thr``, ``max_per_img``).
        num_classes: number of classes.

    Returns:
        ``dets (1, N, 5)`` and ``labels (1, N)``, in descending score.
    """
    # one row of scores per class, zero elsewhere: NMS per class without coordinate offsets
    per_class = scores.new_zeros(num_classes, scores.shape[0]).scatter(
        0, labels[None], scores[None])
    score_thr = max(float(cfg.get('score_thr', 0.)), 0.)
    max_per_img = int(cfg.get('max_per_img', 100))
    selected = non_max_suppression(boxes[None], per_class[None], max_per_img,
                                   float(cfg.nms.iou_threshold), score_thr)
    kept_scores = per_class[selected[:, 1], selected[:, 2]]
    count = torch.sym_min(selected.shape[0], max_per_img)
    top_scores, order = kept_scores.topk(count)
    top = selected[order]
    dets = torch.cat([boxes[top[:, 2]], top_scores[:, None]], dim=1)
    return dets[None], top[None, :, 1]


class SingleStagePredict(nn.Module):
    """An mmdet single-stage anchor detector (RetinaNet) with its post-processing: the forward
    of :func:`mmdet.models.dense_heads.BaseDenseHead.predict_by_feat` for sigmoid classifiers
    without score factors."""

    output_names = ['dets', 'labels']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.bbox_head
        if not getattr(head, 'use_sigmoid_cls', False) or not hasattr(head, 'prior_generator'):
            raise TypeError(f'{type(head).__name__} is not an anchor head with sigmoid '
                            'classification')
        self.model = model

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if x.shape[0] != 1:
            raise ValueError(f'one image at a time (mmdeploy convention), got {x.shape[0]}')
        head = self.model.bbox_head
        cfg = head.test_cfg
        cls_scores, bbox_preds = head(self.model.extract_feat(x))
        priors = head.prior_generator.grid_priors(
            [s.shape[-2:] for s in cls_scores], dtype=x.dtype, device=x.device)
        nms_pre = int(cfg.get('nms_pre', -1))
        boxes: List[Tensor] = []
        scores: List[Tensor] = []
        labels: List[Tensor] = []
        for cls_score, bbox_pred, level_priors in zip(cls_scores, bbox_preds, priors):
            level = cls_score[0].permute(1, 2, 0).reshape(-1, head.cls_out_channels).sigmoid()
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            flat = level.flatten()
            count = flat.shape[0] if nms_pre <= 0 else torch.sym_min(nms_pre, flat.shape[0])
            top, index = flat.topk(count)
            anchor = index // head.cls_out_channels
            boxes.append(head.bbox_coder.decode(level_priors[anchor], deltas[anchor],
                                                max_shape=(x.shape[2], x.shape[3])))
            scores.append(top)
            labels.append(index % head.cls_out_channels)
        return _select(torch.cat(boxes), torch.cat(scores), torch.cat(labels), cfg,
                       head.num_classes)
