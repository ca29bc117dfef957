# RetinaNet 1x (12 epochs) with a TransXNet backbone on COCO detection: the official recipe
# (LMMMEng/TransXNet object_detection/configs/retinanet_transx_*_fpn_1x_coco.py, mmdet 2.28) in
# mmdet 3 form. Size-specific configs set arch, drop_path_rate, neck channels and the ImageNet
# checkpoint.
# Batch: 8 GPUs x 2 images (auto_scale_lr base 16, from mmdet's schedule_1x); fp32.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../../_base_/transxnet_backbone.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

# The official `start_level=1` (backbone and FPN): stage 1's map is not used, and its output
# norm is an Identity. Here the backbone returns stages 2-4 only (out_indices) and the FPN
# starts at its first input: the same computation, the same parameters and parameter names
# (lateral_convs.0 is stage 2, the two extra levels come from stage 4's input, 'on_input').
model = dict(
    backbone=dict(_delete_=True, **dict(_base_.transxnet_backbone, out_indices=(1, 2, 3))),
    neck=dict(
        in_channels=_base_.transxnet_channels['tiny'][1:],
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5))

# AdamW (lr 1e-4, weight decay 1e-4, no per-parameter settings) instead of mmdet's SGD.
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
# x0.1 at epochs 8 and 11 after mmcv 1.x's linear warm-up (see the Mask R-CNN recipe).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
