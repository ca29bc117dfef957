# Semantic FPN, 80k iterations, ADE20K 512x512, with a TransXNet backbone: the official recipe
# (LMMMEng/TransXNet semantic_segmentation/configs/sfpn_transxnet_*.py, mmseg 0.30, itself
# UniFormer's with 8 GPUs instead of 4: lr x2, iterations / 2) in mmseg 1 form.
# Size-specific configs set arch, drop_path_rate, neck channels and the ImageNet checkpoint.
# Batch: 8 GPUs x 4 images (auto_scale_lr base 32); fp32; SyncBN in the head (mmseg's base) and
# the backbone.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../../_base_/transxnet_backbone.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(_delete_=True, **_base_.transxnet_backbone),
    neck=dict(in_channels=_base_.transxnet_channels['tiny'], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, dropout_ratio=0.1, num_classes=150),
    test_cfg=dict(mode='whole'))

# Training data as mmseg's ADE20K base (resize to (2048, 512) x 0.5-2.0, 512 crop, flip,
# photometric distortion), 4 images per GPU. Test: single scale, (2048, 512) keeping the ratio,
# then resized to multiples of 32 (the official AlignResize).
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=32)

# AdamW lr 2e-4, weight decay 1e-4; mmcv 1.x's cosine annealing over all 80k iterations to
# lr x 1e-8 with a linear warm-up over the first 1000, factor 0.1 + 0.9 * i / 1000 (LinearLR
# reaches its end factor at step end - 1, hence 1001).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1001),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-8, by_epoch=False, begin=0, end=80000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=4000)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=4000, max_keep_ckpts=1, save_best='mIoU'))
