# Mask R-CNN 1x (12 epochs) with a TransNeXt backbone on COCO instance segmentation: the official
# recipe (DaiShiResearch/TransNeXt detection/maskrcnn), in mmdet 3 form. Size-specific configs
# set arch, drop_path_rate, neck channels and the ImageNet checkpoint.
# Batch: 8 GPUs x 2 images (auto_scale_lr base 16, from mmdet's schedule_1x).
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-tiny-224-1k/resolve/main/transnext_tiny_224_1k.pth?download=true'  # noqa: E501
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../../_base_/transnext_paramwise.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='TransNeXt',
        arch='tiny',
        img_size=800,
        pretrain_size=224,
        is_extrapolation=False,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        # Official ImageNet-1K weights (huggingface.co/DaiShiResearch/transnext-<arch>-224-1k),
        # downloaded once into torch hub's cache; a local file instead:
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[72, 144, 288, 576]))

# AdamW instead of mmdet's SGD; 12 epochs of 1333x800 single-scale + flip data as in the mmdet
# base.
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=_base_.transnext_no_decay_keys))
# x0.1 at epochs 8 and 11 after mmcv 1.x's linear warm-up, factor 0.001 + 0.999 * i / 500 for
# i < 500 (LinearLR reaches its end factor at step end - 1, hence 501; mmdet's base uses 500).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
