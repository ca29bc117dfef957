# Official: box 51.1 / mask 45.5 mAP, 69.3M parameters.
_base_ = './_base_/mask-rcnn_transnext_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/transnext_small_224_1k.pth')))
