# Demo: the RetinaNet recipe (configs/retinanet) shrunk to train TransXNet-Tiny from scratch on
# the generated shapes set on a CPU (position tables built for 128 px inputs, BN instead of
# SyncBN). Changed: 128 px images, 128-channel FPN and head, AdamW 4e-4 with warm-up and cosine
# decay over 300 iterations of 4 images.
_base_ = [
    '../retinanet/retinanet_transxnet-tiny_fpn_1x_coco.py',
    './_base_/shapes_coco.py',
]
custom_imports = dict(imports=['mmtransnext', 'mmtransnext.datasets'], allow_failed_imports=False)

image_size = (128, 128)
max_iters = 300
model = dict(
    backbone=dict(pretrain_size=128, norm_cfg=dict(type='BN'), init_cfg=None),
    neck=dict(out_channels=128),
    bbox_head=dict(num_classes=3, in_channels=128, feat_channels=128, stacked_convs=2),
    # score_thr 0.001 (mmdet: 0.05): a briefly trained model (the smoke tests' 2 iterations)
    # still scores near the focal-loss prior 0.01, and COCO evaluation needs detections.
    test_cfg=dict(nms_pre=300, score_thr=0.001, max_per_img=20))

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
val_evaluator = dict(ann_file=_base_.shapes_coco_val_ann, metric='bbox')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=4e-6, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(base_batch_size=4)
