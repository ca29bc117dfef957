# Official: box 51.7 / mask 45.9 mAP, 109.2M parameters. Trained in fp16 (static loss scale 512).
_base_ = './_base_/mask-rcnn_transnext_fpn_1x_coco.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.7,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.)
