# Demo / smoke-test scale of the Semantic FPN recipe (configs/sem_fpn): TransXNet-Tiny from
# scratch on the generated ADE20K-format shapes set (position tables built for 128 px inputs, BN
# instead of SyncBN), 128 px crops, narrow neck and head, short schedule. Not tuned for
# accuracy.
_base_ = [
    '../sem_fpn/fpn_transxnet-tiny_8xb4-80k_ade20k-512x512.py',
    './_base_/shapes_ade.py',
]
custom_imports = dict(imports=['mmtransnext', 'mmtransnext.datasets'], allow_failed_imports=False)

crop_size = (128, 128)
max_iters = 100
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(pretrain_size=128, norm_cfg=dict(type='BN'), init_cfg=None),
    neck=dict(out_channels=128),
    decode_head=dict(in_channels=[128] * 4, channels=64, num_classes=4,
                     norm_cfg=dict(type='BN', requires_grad=True)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, **_base_.shapes_ade_train, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, **_base_.shapes_ade_val, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=4e-6, by_epoch=False, begin=10, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=4)
