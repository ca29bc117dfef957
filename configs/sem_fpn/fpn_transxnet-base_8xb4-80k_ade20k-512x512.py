# Official: 49.9 mIoU (single scale).
_base_ = './_base_/fpn_transxnet_80k_ade20k-512x512.py'
checkpoint_file = 'https://github.com/LMMMEng/TransXNet/releases/download/v1.0/transx-b.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.3,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[76, 152, 336, 672]))
