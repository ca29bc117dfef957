# Official: box 51.7 / mask 45.9 mAP, 109.2M parameters. Trained in fp16 (static loss scale 512).
_base_ = './_base_/mask-rcnn_transnext_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.7,
        init_cfg=dict(checkpoint='checkpoints/transnext_base_224_1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
