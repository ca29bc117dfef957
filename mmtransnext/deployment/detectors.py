"""Whole detectors as graphs: image in, ``dets (1, N, 5)`` (``x1, y1, x2, y2, score``) and
``labels (1, N)`` out, mmdeploy's detection outputs, with the box decoding, score filtering and
NMS of mmdet's ``predict`` inside the graph.

The heads' own pieces (anchor generator, box coder, test config) are reused; only the
data-dependent filtering mmdet does in Python (``filter_scores_and_topk``, ``batched_nms``) is
written in a form ``torch.export`` holds: top-k over the flattened (anchor, class) scores of a
level, then ONNX-style NMS per class (:mod:`.nms`) with the score threshold. Boxes are in the
input's pixels (mmdet's ``rescale=False``): scaling back to the original image stays outside,
as the normalisation does.

DINO (:class:`DetrPredict`) runs mmdet's transformer with two rewrites: the level sizes as
Python ints at the export size (so its graph holds one input size) and mmcv's deformable
attention by ``GridSample`` (:mod:`.ms_deform_attn`); its post-processing is a top-k with no
NMS, as mmdet's.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import exportable_deformable_attention
from .nms import non_max_suppression


def _check_one_image(x: Tensor) -> None:
    if x.shape[0] != 1:
        raise ValueError(f'one image at a time (mmdeploy convention), got {x.shape[0]}')


def _select(boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int,
            iou_threshold: float, score_thr: float, max_count: int) -> Tuple[Tensor, Tensor]:
    """mmdet's ``batched_nms`` then the first ``max_count``, on one image's candidates.

    Args:
        boxes: ``(M, 4)`` decoded boxes.
        scores: ``(M,)`` their scores (one class each).
        labels: ``(M,)`` their classes (NMS runs per class).
        num_classes: number of classes.
        iou_threshold: NMS threshold.
        score_thr: candidates scoring at or below this are dropped first.
        max_count: most boxes kept.

    Returns:
        ``dets (N, 5)`` and ``labels (N,)``, in descending score.
    """
    # one row of scores per class, zero elsewhere: NMS per class without coordinate offsets
    per_class = scores.new_zeros(num_classes, scores.shape[0]).scatter(
        0, labels[None], scores[None])
    selected = non_max_suppression(boxes[None], per_class[None], max_count,
                                   float(iou_threshold), max(float(score_thr), 0.))
    kept_scores = per_class[selected[:, 1], selected[:, 2]]
    top_scores, order = kept_scores.topk(torch.sym_min(selected.shape[0], max_count))
    top = selected[order]
    return torch.cat([boxes[top[:, 2]], top_scores[:, None]], dim=1), top[:, 1]


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
        _check_one_image(x)
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
        dets, labels = _select(torch.cat(boxes), torch.cat(scores), torch.cat(labels),
                               head.num_classes, cfg.nms.iou_threshold, cfg.get('score_thr', 0.),
                               int(cfg.get('max_per_img', 100)))
        return dets[None], labels[None]


def _paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """``(N, h, w)`` RoI masks resampled into the ``(height, width)`` frame at their boxes:
    mmdet's ``_do_paste_mask`` over the whole image, with its in-place zeroing of the
    coordinates of zero-size boxes written as ``where``."""
    x0, y0, x1, y1 = boxes.split(1, dim=1)
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    ys = (ys - y0) / (y1 - y0) * 2 - 1
    xs = (xs - x0) / (x1 - x0) * 2 - 1
    ys = torch.where(torch.isinf(ys), 0., ys)
    xs = torch.where(torch.isinf(xs), 0., xs)
    count = masks.shape[0]
    grid = torch.stack([xs[:, None, :].expand(count, height, width),
                        ys[:, :, None].expand(count, height, width)], dim=3)
    return F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0]


class TwoStagePredict(nn.Module):
    """An mmdet two-stage detector with an RPN, a box head and optionally an FCN mask head
    (Faster / Mask R-CNN) and their post-processing: proposals (top-k per level, decoding,
    NMS per level), box head (softmax scores, per-class decoding, per-class NMS), mask head
    (the detected class's mask pasted into the input's frame and thresholded): ``dets``,
    ``labels`` and, with a mask head, boolean ``masks (1, N, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        roi_head = model.roi_head
        if getattr(roi_head.bbox_head, 'custom_cls_channels', False) or \
                getattr(roi_head.bbox_head, 'reg_class_agnostic', False):
            raise TypeError('box heads with custom classes or class-agnostic regression are '
                            'not exported')
        self.model = model
        self.output_names = ['dets', 'labels'] + (['masks'] if roi_head.with_mask else [])

    def _proposals(self, features: Tuple[Tensor, ...], height: int, width: int) -> Tensor:
        head = self.model.rpn_head
        cfg = self.model.test_cfg.rpn
        cls_scores, bbox_preds = head(features)
        priors = head.prior_generator.grid_priors(
            [s.shape[-2:] for s in cls_scores], dtype=features[0].dtype,
            device=features[0].device)
        boxes: List[Tensor] = []
        scores: List[Tensor] = []
        levels: List[Tensor] = []
        for i, (cls_score, bbox_pred, level_priors) in enumerate(
                zip(cls_scores, bbox_preds, priors)):
            level = cls_score[0].permute(1, 2, 0).reshape(-1)
            level = level.sigmoid() if head.use_sigmoid_cls else \
                cls_score[0].permute(1, 2, 0).reshape(-1, 2).softmax(-1)[:, 0]
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, head.bbox_coder.encode_size)
            nms_pre = int(cfg.get('nms_pre', -1))
            count = level.shape[0] if nms_pre <= 0 else torch.sym_min(nms_pre, level.shape[0])
            top, index = level.topk(count)
            boxes.append(head.bbox_coder.decode(level_priors[index], deltas[index],
                                                max_shape=(height, width)))
            scores.append(top)
            levels.append(torch.full_like(index, i))
        boxes_, scores_ = torch.cat(boxes), torch.cat(scores)
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:  # mmdet drops small boxes; here their score goes below the threshold
            wh = boxes_[:, 2:] - boxes_[:, :2]
            scores_ = torch.where((wh > min_size).all(dim=1), scores_, -1.)
        proposals, _ = _select(boxes_, scores_, torch.cat(levels), len(cls_scores),
                               cfg.nms.iou_threshold, 0., int(cfg.max_per_img))
        # a sigmoid score is above 0, so one proposal at least is kept; saying so lets
        # torch.export through mmdet's empty-input branches
        torch._check(proposals.shape[0] > 0)
        return proposals[:, :4]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        from .roi_align import extract_rois
        _check_one_image(x)
        height, width = x.shape[2], x.shape[3]
        features = self.model.extract_feat(x)
        proposals = self._proposals(features, height, width)
        roi_head = self.model.roi_head
        bbox_head = roi_head.bbox_head
        cfg = self.model.test_cfg.rcnn
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        cls_score, bbox_pred = bbox_head(extract_rois(roi_head.bbox_roi_extractor, features,
                                                      rois))
        scores = cls_score.softmax(-1)[:, :-1]
        num_classes = bbox_head.num_classes
        boxes = bbox_head.bbox_coder.decode(
            rois[:, 1:].repeat_interleave(num_classes, dim=0),
            bbox_pred.reshape(-1, bbox_head.bbox_coder.encode_size), max_shape=(height, width))
        labels = torch.arange(num_classes, device=x.device).repeat(rois.shape[0])
        dets, det_labels = _select(boxes, scores.reshape(-1), labels, num_classes,
                                   cfg.nms.iou_threshold, cfg.get('score_thr', 0.),
                                   int(cfg.max_per_img))
        if not roi_head.with_mask:
            return dets[None], det_labels[None]
        mask_rois = torch.cat([dets.new_zeros(dets.shape[0], 1), dets[:, :4]], dim=1)
        mask_preds = roi_head.mask_head(extract_rois(roi_head.mask_roi_extractor, features,
                                                     mask_rois)).sigmoid()
        if not roi_head.mask_head.class_agnostic:
            mask_preds = mask_preds[torch.arange(dets.shape[0], device=x.device), det_labels]
        else:
            mask_preds = mask_preds[:, 0]
        masks = _paste_masks(mask_preds, dets[:, :4], height, width)
        return dets[None], det_labels[None], (masks >= cfg.mask_thr_binary)[None]


def _flatten_levels(model: nn.Module, features: Sequence[Tensor]) -> Tuple[dict, dict]:
    """mmdet's ``DeformableDETR.pre_transformer`` for unpadded images (no masks, as mmdet's
    ``predict`` runs one image), the level sizes as Python ints from the features' shapes:
    mmdet builds them with ``torch._shape_as_tensor`` and loops over that tensor's values,
    which ``torch.export`` cannot trace. So the graph holds one input size."""
    tokens: List[Tensor] = []
    positions: List[Tensor] = []
    sizes: List[Tuple[int, int]] = []
    for level, feature in enumerate(features):
        sizes.append((int(feature.shape[2]), int(feature.shape[3])))
        position = model.positional_encoding(None, input=feature)
        tokens.append(feature.flatten(2).transpose(1, 2))
        positions.append(position.flatten(2).transpose(1, 2) +
                         model.level_embed[level].view(1, 1, -1))
    starts = [0]
    for height, width in sizes[:-1]:
        starts.append(starts[-1] + height * width)
    shared = dict(spatial_shapes=sizes,
                  level_start_index=torch.tensor(starts, device=features[0].device),
                  valid_ratios=features[0].new_ones(features[0].shape[0], len(sizes), 2))
    encoder_inputs = dict(feat=torch.cat(tokens, 1), feat_mask=None,
                          feat_pos=torch.cat(positions, 1), **shared)
    return encoder_inputs, dict(memory_mask=None, **shared)


class DetrPredict(nn.Module):
    """mmdet's DINO (a deformable-attention DETR with a sigmoid classifier) and its
    post-processing: the transformer with the level sizes fixed at the export size
    (:func:`_flatten_levels`), mmcv's deformable attention by
    :func:`.ms_deform_attn.exportable_deformable_attention`, then the head's
    ``predict_by_feat``: top ``max_per_img`` of the last decoder layer's (query, class) scores,
    boxes from ``(cx, cy, w, h)`` to corners in the input's pixels, clipped to it. No NMS
    (DETRs have none): ``dets (1, max_per_img, 5)``, ``labels (1, max_per_img)``."""

    output_names = ['dets', 'labels']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.bbox_head
        if not head.loss_cls.use_sigmoid:
            raise TypeError(f'{type(head).__name__} has a softmax classifier; only sigmoid '
                            'DETR heads (DINO) are exported')
        self.model = model

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        _check_one_image(x)
        model = self.model
        head = model.bbox_head
        # the swap lasts this forward only: the model is mmcv's again afterwards
        with exportable_deformable_attention(model):
            encoder_inputs, decoder_inputs = _flatten_levels(model, model.extract_feat(x))
            encoder_outputs = model.forward_encoder(**encoder_inputs)
            queries, head_inputs = model.pre_decoder(**encoder_outputs)
            decoder_inputs.update(queries)
            head_inputs.update(model.forward_decoder(**decoder_inputs))
        cls_scores, box_preds = head(**head_inputs)
        scores = cls_scores[-1, 0].sigmoid()
        top, index = scores.flatten().topk(int(head.test_cfg.get('max_per_img',
                                                                 scores.shape[0])))
        labels = index % head.num_classes
        centre, size = box_preds[-1, 0, index // head.num_classes].split(2, dim=1)
        scale = torch.tensor([x.shape[3], x.shape[2]], dtype=x.dtype, device=x.device)
        corners = torch.cat([centre - size / 2, centre + size / 2], dim=1) * scale.repeat(2)
        corners = torch.minimum(corners.clamp(min=0), scale.repeat(2))
        return torch.cat([corners, top[:, None]], dim=1)[None], labels[None]
