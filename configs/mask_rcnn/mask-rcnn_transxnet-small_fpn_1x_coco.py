# Official: box 47.7 / mask 43.1 mAP.
_base_ = './_base_/mask-rcnn_transxnet_fpn_1x_coco.py'
checkpoint_file = 'https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-s.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='small', drop_path_rate=0.2,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 320, 512]))
