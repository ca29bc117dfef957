# Official: box 47.6 mAP.
_base_ = './_base_/retinanet_transxnet_fpn_1x_coco.py'
checkpoint_file = 'https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-b.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.3,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[152, 336, 672]))
