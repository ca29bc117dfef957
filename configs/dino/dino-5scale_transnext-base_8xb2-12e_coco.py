# Official: 57.1 box mAP, 110M parameters. 8xb2: 8 GPUs x 1 image x 2 accumulated steps.
_base_ = './_base_/dino-5scale_transnext_12e_coco.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/transnext_base_224_1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
