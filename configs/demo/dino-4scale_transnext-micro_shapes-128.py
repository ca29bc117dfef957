# Demo / smoke-test scale of the DINO recipe (configs/dino): TransNeXt-Micro from scratch on the
# generated shapes set at 128 px, with a 1-layer encoder, 2-layer decoder, 100 queries and short
# schedule. Not tuned for accuracy.
_base_ = [
    '../dino/dino-4scale_transnext-tiny_8xb2-12e_coco.py',
    './_base_/shapes_coco.py',
]
custom_imports = dict(imports=['mmtransnext', 'mmtransnext.datasets'], allow_failed_imports=False)

image_size = (128, 128)
max_iters = 100
model = dict(
    num_queries=100,
    backbone=dict(
        arch='micro', img_size=128, pretrain_size=128, drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[96, 192, 384]),
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    bbox_head=dict(num_classes=3),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=20))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, **_base_.shapes_coco_train, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_delete_=True, **_base_.shapes_coco_val, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=_base_.shapes_coco_val_ann)
test_evaluator = val_evaluator

# fp32 and no gradient accumulation; the recipe's optimizer, clipping and parameter groups.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(_base_.optim_wrapper.optimizer, lr=2e-4),
    clip_grad=_base_.optim_wrapper.clip_grad,
    paramwise_cfg=_base_.optim_wrapper.paramwise_cfg)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=2e-6, by_epoch=False, begin=10, end=max_iters),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=4)
