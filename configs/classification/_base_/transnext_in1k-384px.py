# TransNeXt fine-tuned on ImageNet-1K at 384 from its 224 weights: the official recipe
# (classification/configs/finetune/transnext_{small,base}_384_ft.py). Size configs set arch,
# drop_path_rate, the head's in_channels and load_from.
#
# Recipe: the 224 weights (load_from), img_size 384 with pretrain_size 224 (the position-bias
# coordinates keep the 224 scale), drop_path 0.7 (S) / 0.8 (B), 5 epochs at a constant lr 1e-5
# (sched None: no warm-up, no decay), wd 0.05, clip 1.0, Mixup 0.8 only (cutmix 0), the rest as
# at 224; test: the image warped to 384x384 (bicubic, no crop), as the official datasets.py does
# at >= 384.
_base_ = './transnext_in1k.py'

model = dict(
    backbone=dict(img_size=384, pretrain_size=224),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8)], _delete_=True))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    _base_.rand_augment,
    _base_.random_erasing,
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(384, 384), backend='pillow', interpolation='bicubic'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-5))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, begin=0, end=5)]
train_cfg = dict(max_epochs=5)
