# Official: 56.6 box mAP, 69.6M parameters. 8xb2: 8 GPUs x 1 image x 2 accumulated steps.
_base_ = './_base_/dino-5scale_transnext_12e_coco.py'
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='checkpoints/transnext_small_224_1k.pth')))
