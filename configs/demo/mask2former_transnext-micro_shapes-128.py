# Demo / smoke-test scale of the Mask2Former recipe (configs/mask2former): TransNeXt-Micro from
# scratch on the generated ADE20K-format shapes set, 128 px crops, a 1-layer pixel-decoder
# encoder, 3 decoder layers, 20 queries, short schedule. Not tuned for accuracy.
_base_ = [
    '../mask2former/mask2former_transnext-tiny_8xb2-160k_ade20k-512x512.py',
    './_base_/shapes_ade.py',
]
custom_imports = dict(
    imports=['mmtransnext', 'mmtransnext.datasets', 'mmdet.models'], allow_failed_imports=False)

crop_size = (128, 128)
max_iters = 100
num_classes = 4
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='micro', img_size=128, pretrain_size=128, drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(
        in_channels=[48, 96, 192, 384],
        num_classes=num_classes,
        num_queries=20,
        pixel_decoder=dict(encoder=dict(num_layers=1)),
        transformer_decoder=dict(num_layers=3),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=1024)))

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
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1, save_best=None))
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=4)
