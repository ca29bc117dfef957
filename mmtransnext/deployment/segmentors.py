"""Whole segmentors as graphs: image in, the ``(1, 1, H, W)`` int64 label map out (mmdeploy's
segmentation output with ``with_argmax``), with mmseg's resize of the logits to the input and
the per-pixel arg-max inside the graph.

mmseg's encoder-decoders (UperNet, Semantic FPN) export through their own ``encode_decode``.
Mask2Former's does not: mmdet's ``MSDeformAttnPixelDecoder.forward`` builds the level shapes
with ``torch._shape_as_tensor`` and splits and reshapes by that tensor's values, and mmcv's
``MultiScaleDeformableAttention`` reads the shapes from it too. :class:`Mask2FormerPredict`
runs the same modules with the level shapes as Python integers (fixed at export) and the
deformable attention's sampling by ``GridSample`` (:mod:`.ms_deform_attn`), then mmseg's
semantic inference (class scores times mask probabilities per query).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import DeformableAttentionForExport


class SegmentorPredict(nn.Module):
    """``encode_decode`` of an mmseg segmentor (logits resized to the input), then the class of
    each pixel: arg-max over classes, or the decode head's threshold on the sigmoid for a
    one-channel head, as ``postprocess_result`` does."""

    output_names = ['output']

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, 'encode_decode'):
            raise TypeError(f'{type(model).__name__} is not an mmseg encoder-decoder')
        self.model = model

    def logits(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` class logits at the input's size."""
        height, width = x.shape[2], x.shape[3]
        metas = [dict(img_shape=(height, width), ori_shape=(height, width),
                      pad_shape=(height, width), batch_input_shape=(height, width))
                 for _ in range(x.shape[0])]
        return self.model.encode_decode(x, metas)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.logits(x)
        if logits.shape[1] > 1:
            return logits.argmax(dim=1, keepdim=True)
        return (logits.sigmoid() > self.model.decode_head.threshold).long()


def is_mask2former(model: nn.Module) -> bool:
    """Whether ``model`` is an mmseg segmentor with a Mask2Former head whose pixel decoder is
    mmdet's ``MSDeformAttnPixelDecoder`` (what :class:`Mask2FormerPredict` rewrites)."""
    head = getattr(model, 'decode_head', None)
    decoder = getattr(head, 'pixel_decoder', None)
    return hasattr(model, 'encode_decode') and decoder is not None and \
        hasattr(head, 'transformer_decoder') and \
        type(decoder).__name__ == 'MSDeformAttnPixelDecoder'


def pixel_decoder_forward(decoder: nn.Module,
                          feats: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """mmdet's ``MSDeformAttnPixelDecoder.forward`` with the level shapes as integers: the
    mask features and the multi-scale features, low resolution first."""
    batch = feats[0].shape[0]
    inputs, positions, references, shapes = [], [], [], []
    for i in range(decoder.num_encoder_levels):
        level = decoder.num_input_levels - i - 1
        feat = feats[level]
        height, width = int(feat.shape[2]), int(feat.shape[3])
        no_padding = feat.new_zeros((batch, height, width), dtype=torch.bool)
        position = decoder.level_encoding.weight[i].view(1, -1, 1, 1) + \
            decoder.postional_encoding(no_padding)
        points = decoder.point_generator.single_level_grid_priors(
            (height, width), level, device=feat.device)
        stride = decoder.strides[level]
        inputs.append(decoder.input_convs[i](feat).flatten(2).permute(0, 2, 1))
        positions.append(position.flatten(2).permute(0, 2, 1))
        references.append(points / points.new_tensor([width * stride, height * stride]))
        shapes.append((height, width))
    query, query_pos = torch.cat(inputs, dim=1), torch.cat(positions, dim=1)
    # every image fills its levels (valid ratio 1): one reference point per pixel and level
    reference_points = torch.cat(references)[None, :, None].expand(
        batch, -1, decoder.num_encoder_levels, -1)
    for layer in decoder.encoder.layers:  # mmdet's DetrTransformerEncoderLayer.forward
        query = layer.norms[0](DeformableAttentionForExport(layer.self_attn)(
            query, query_pos=query_pos, reference_points=reference_points,
            spatial_shapes=shapes))
        query = layer.norms[1](layer.ffn(query))
    memory = query.permute(0, 2, 1)
    outs = [level.reshape(batch, -1, height, width) for level, (height, width) in zip(
        memory.split([height * width for height, width in shapes], dim=2), shapes)]
    for i in range(decoder.num_input_levels - decoder.num_encoder_levels - 1, -1, -1):
        lateral = decoder.lateral_convs[i](feats[i])
        outs.append(decoder.output_convs[i](lateral + F.interpolate(
            outs[-1], size=lateral.shape[-2:], mode='bilinear', align_corners=False)))
    return decoder.mask_feature(outs[-1]), outs[:decoder.num_outs]


def mask2former_head_forward(head: nn.Module, feats: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """mmdet's ``Mask2FormerHead.forward`` through :func:`pixel_decoder_forward`: the class
    logits ``(B, Q, classes + 1)`` and mask logits ``(B, Q, h, w)`` of the last decoder layer
    (the ones mmseg's ``predict`` reads)."""
    batch = feats[0].shape[0]
    mask_features, memories = pixel_decoder_forward(head.pixel_decoder, feats)
    keys, key_positions = [], []
    for i in range(head.num_transformer_feat_level):
        memory = memories[i]
        keys.append(head.decoder_input_projs[i](memory).flatten(2).permute(0, 2, 1) +
                    head.level_embed.weight[i].view(1, 1, -1))
        no_padding = memory.new_zeros((batch, ) + memory.shape[-2:], dtype=torch.bool)
        key_positions.append(
            head.decoder_positional_encoding(no_padding).flatten(2).permute(0, 2, 1))
    query = head.query_feat.weight.unsqueeze(0).repeat(batch, 1, 1)
    query_pos = head.query_embed.weight.unsqueeze(0).repeat(batch, 1, 1)
    cls_pred, mask_pred, attn_mask = head._forward_head(query, mask_features,
                                                        memories[0].shape[-2:])
    levels = head.num_transformer_feat_level
    for i, layer in enumerate(head.transformer_decoder.layers):
        # a query masked from every key attends to all of them instead (as mmdet does)
        attn_mask = attn_mask & (attn_mask.sum(-1) != attn_mask.shape[-1]).unsqueeze(-1)
        query = layer(query=query, key=keys[i % levels], value=keys[i % levels],
                      query_pos=query_pos, key_pos=key_positions[i % levels],
                      cross_attn_mask=attn_mask, query_key_padding_mask=None,
                      key_padding_mask=None)
        cls_pred, mask_pred, attn_mask = head._forward_head(
            query, mask_features, memories[(i + 1) % levels].shape[-2:])
    return cls_pred, mask_pred


class Mask2FormerPredict(SegmentorPredict):
    """An mmseg Mask2Former (:func:`is_mask2former`) with its semantic inference: the last
    decoder layer's masks resized to the input, their sigmoid weighted by each query's class
    probabilities (softmax, no-object left out) and summed over queries, then the arg-max
    (mmseg's ``Mask2FormerHead.predict`` and ``postprocess_result``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if not is_mask2former(model):
            raise TypeError(f'{type(model).__name__} has no Mask2Former head with an '
                            'MSDeformAttnPixelDecoder')

    def logits(self, x: Tensor) -> Tensor:
        head = self.model.decode_head
        cls_pred, mask_pred = mask2former_head_forward(head, self.model.extract_feat(x))
        masks = F.interpolate(mask_pred, size=x.shape[2:], mode='bilinear',
                              align_corners=False).sigmoid()
        return torch.einsum('bqc,bqhw->bchw', cls_pred.softmax(-1)[..., :-1], masks)
