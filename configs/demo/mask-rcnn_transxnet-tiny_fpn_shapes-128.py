# Demo: the TransNeXt Mask R-CNN demo (same shrunk heads, 128 px generated shapes, schedule) with
# a TransXNet-Tiny backbone trained from scratch, its position tables built for 128 px inputs.
# The recipe it scales down is configs/mask_rcnn/mask-rcnn_transxnet-tiny_fpn_1x_coco.py (the
# demo's optimizer keys add TransNeXt-only names, which match no TransXNet parameter).
_base_ = [
    './mask-rcnn_transnext-micro_fpn_shapes-128.py',
    '../_base_/transxnet_backbone.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        **dict(_base_.transxnet_backbone, pretrain_size=128, norm_cfg=dict(type='BN'),
               init_cfg=None)),
    neck=dict(in_channels=_base_.transxnet_channels['tiny']))
