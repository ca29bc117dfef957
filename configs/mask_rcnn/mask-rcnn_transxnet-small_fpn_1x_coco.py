# Official: box 47.7 / mask 43.1 mAP.
_base_ = './_base_/mask-rcnn_transxnet_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        arch='small', drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/transx-s.pth.tar')),
    neck=dict(in_channels=[64, 128, 320, 512]))
