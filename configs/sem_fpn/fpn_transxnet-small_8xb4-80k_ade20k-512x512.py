# Official: 48.5 mIoU (single scale).
_base_ = './_base_/fpn_transxnet_80k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='small', drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/transx-s.pth.tar')),
    neck=dict(in_channels=[64, 128, 320, 512]))
