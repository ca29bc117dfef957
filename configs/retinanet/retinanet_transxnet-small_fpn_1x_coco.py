# Official: box 46.4 mAP.
_base_ = './_base_/retinanet_transxnet_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        arch='small', drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/transx-s.pth.tar')),
    neck=dict(in_channels=[128, 320, 512]))
