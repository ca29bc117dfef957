# ImageNet-1K classification with TransXNet: the official recipe (LMMMEng/TransXNet train.py,
# timm's training script, and scripts/train_{tiny,small,base}.sh) in mmpretrain form. Size
# configs set arch, drop_path_rate, the EMA momentum, the head's in_channels and the test resize.
#
# - batch 1024 (8 GPUs x 128); AdamW lr 2e-3, wd 0.05, eps 1e-8, betas (0.9, 0.999); no weight
#   decay on tensors of <= 1 dimension and biases (timm's filter: norm_decay_mult,
#   bias_decay_mult, flat_decay_mult 0; the IDConv `bias` (G, C) included); no gradient
#   clipping; mixed precision (--native-amp); SyncBN (--sync-bn); weight EMA of every tensor,
#   BatchNorm statistics included (timm ModelEmaV2, decay 0.9998 / 0.99985).
# - 310 epochs: warm-up from 1e-6 over 5 epochs, stepped per epoch (factors
#   5e-4 + (1 - 5e-4) e / 5), cosine to 1e-5 at epoch 300 (timm's cosine counts from epoch 0,
#   mmengine's from its begin, so here it spans epochs 5-300), then timm's 10 cool-down epochs
#   at 1e-5.
# - RandomResizedCrop 224, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25
#   (per-pixel normal noise), Mixup 0.8 / CutMix 1.0 switched with p 0.5, label smoothing 0.1.
#   timm's train interpolation is 'random' (bilinear or bicubic per image); mmpretrain's
#   transforms take one, bicubic here.
# - test: short side to floor(224 / crop_pct) (bicubic), centre crop 224; crop_pct 0.9 (T, S),
#   0.95 (B).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

model = dict(
    type='OfficialImageClassifier',
    backbone=dict(
        type='TransXNet',
        arch='tiny',
        pretrain_size=224,
        # the official classifier's GroupNorm(1, C) is this output norm (norm6)
        out_indices=(3, ),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=448,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        # official: the 1x1 conv classifier, trunc_normal(std=0.02), zero bias
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=248, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'_delete_': True}),
)
param_scheduler = [
    # from 1e-6 = 5e-4 x lr
    dict(type='LinearLR', start_factor=5e-4, by_epoch=True, begin=0, end=6),
    dict(type='CosineAnnealingLR', T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=301),
]
train_cfg = dict(by_epoch=True, max_epochs=310, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)
custom_hooks = [
    dict(type='EMAHook', momentum=2e-4, update_buffers=True, priority='ABOVE_NORMAL')
]
