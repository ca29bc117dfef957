# TransNeXt-Micro A-A-A-A (aggregated attention in all four stages: sr_ratios 16, 8, 4, 2 and
# window 3 everywhere) on ImageNet-1K at 256: official 13.1M parameters, top-1 82.6
# (classification/configs/transnext_micro_AAAA_256.py: input 256, drop_path 0.15; its
# pretrain_size is 256). Official weights:
# huggingface.co/DaiShiResearch/transnext-micro-AAAA-256-1k, transnext_micro_AAAA_256_1k.pth.
#
# test: short side to int(256 / 0.875) = 292 (bicubic), centre crop 256, as datasets.py does.
_base_ = './_base_/transnext_in1k.py'

model = dict(
    backbone=dict(arch='micro_aaaa', img_size=256, pretrain_size=256, drop_path_rate=0.15),
    head=dict(in_channels=384))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=256, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    _base_.rand_augment,
    _base_.random_erasing,
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=292, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=256),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
