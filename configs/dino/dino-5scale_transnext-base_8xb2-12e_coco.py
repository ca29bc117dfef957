# Official: 57.1 box mAP, 110M parameters. 8xb2: 8 GPUs x 1 image x 2 accumulated steps.
_base_ = './_base_/dino-5scale_transnext_12e_coco.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
