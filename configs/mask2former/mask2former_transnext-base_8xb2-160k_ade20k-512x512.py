# Official: 54.7 mIoU (single scale), 109M parameters.
_base_ = './_base_/mask2former_transnext_160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/transnext_base_224_1k.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
