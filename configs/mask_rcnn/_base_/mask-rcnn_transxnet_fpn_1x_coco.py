# Mask R-CNN 1x (12 epochs) with a TransXNet backbone on COCO instance segmentation: the official
# recipe (LMMMEng/TransXNet object_detection/configs/mask_rcnn_transx_*_fpn_1x_coco.py, mmdet
# 2.28) in mmdet 3 form. Size-specific configs set arch, drop_path_rate, neck channels and the
# ImageNet checkpoint.
# Batch: 8 GPUs x 2 images (auto_scale_lr base 16, from mmdet's schedule_1x); fp32.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    '../../_base_/transxnet_backbone.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.transxnet_backbone),
    neck=dict(in_channels=_base_.transxnet_channels['tiny']))

# AdamW instead of mmdet's SGD; 1333x800 single-scale + flip data as in the mmdet base. No
# decay on parameters whose name contains 'norm' (block GroupNorms, the MS-FFN's BatchNorm
# `mlp.norm`, the output norms); the official config's other two keys ('absolute_pos_embed',
# 'relative_position_bias_table', left over from Swin) match no TransXNet parameter.
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
# x0.1 at epochs 8 and 11 after mmcv 1.x's linear warm-up, factor 0.001 + 0.999 * i / 500 for
# i < 500 (LinearLR reaches its end factor at step end - 1, hence 501; mmdet's base uses 500).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
