# ImageNet-1K classification with TransNeXt: the official recipe (DaiShiResearch/TransNeXt
# classification/: main.py, datasets.py, optimizer.py, configs/*.py), the DeiT/PVTv2 training
# strategy, in mmpretrain form. Size configs set arch, drop_path_rate and the head's in_channels.
#
# - batch 1024 (8 GPUs x 128); AdamW lr 1e-3 (official: not scaled, 1e-3 at 1024; here
#   auto_scale_lr scales it from 1024 if --auto-scale-lr is given), wd 0.05, eps 1e-8, betas
#   (0.9, 0.999); no weight decay on 1-D tensors, biases (official `len(shape) == 1 or
#   name.endswith('.bias')`: norm_decay_mult, bias_decay_mult, flat_decay_mult 0) and on
#   query_embedding, relative_pos_bias_local, cpb*, temperature (its no_weight_decay_keywords);
#   gradient norm clipped at 1.0; mixed precision (official NativeScaler).
# - 300 epochs; warm-up from 1e-6 over 5 epochs, stepped per epoch as timm's scheduler does
#   (factors 0.001 + 0.999 * e / 5, e = 0..5); cosine to 1e-5. timm's cosine counts from epoch 0
#   (lr at epoch 5 is 0.99973 x base), mmengine's chainable cosine starts at its begin, so here
#   it spans epochs 5-300 (T_max 295): per epoch within 1.6% of the base lr of timm's values.
# - RandomResizedCrop 224 (0.08-1, 3/4-4/3, bicubic), flip, RandAugment rand-m9-mstd0.5-inc1,
#   random erasing 0.25 (per-pixel normal noise), Mixup 0.8 / CutMix 1.0 switched with p 0.5,
#   label smoothing 0.1 (mixed as timm's Mixup does), repeated augmentation (3 repeats, DeiT's
#   RASampler); color jitter is off because RandAugment is on (timm).
# - test: resize the short side to 256 (224 / 0.875, bicubic), centre crop 224.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmtransnext'], allow_failed_imports=False)

# The pieces of the training pipeline that do not depend on the input size, for the 256 / 384
# configs (the same settings as mmpretrain's imagenet_bs64_swin_224.py).
rand_augment = dict(
    type='RandAugment',
    policies='timm_increasing',
    num_policies=2,
    total_level=10,
    magnitude_level=9,
    magnitude_std=0.5,
    hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic'))
random_erasing = dict(
    type='RandomErasing',
    erase_prob=0.25,
    mode='rand',
    min_area_ratio=0.02,
    max_area_ratio=1 / 3,
    fill_color=[103.53, 116.28, 123.675],
    fill_std=[57.375, 57.12, 58.395])

model = dict(
    type='OfficialImageClassifier',
    backbone=dict(
        type='TransNeXt',
        arch='tiny',
        img_size=224,
        pretrain_size=224,
        out_indices=(3, ),
        drop_path_rate=0.25),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=576,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        # official: trunc_normal(std=0.02), zero bias
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128, sampler=dict(type='RepeatAugSampler', shuffle=True))
val_dataloader = dict(batch_size=192)  # official: 1.5 x the training batch
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={
            '_delete_': True,
            'query_embedding': dict(decay_mult=0.0),
            'relative_pos_bias_local': dict(decay_mult=0.0),
            'cpb': dict(decay_mult=0.0),
            'temperature': dict(decay_mult=0.0),
        }),
)
param_scheduler = [
    # from 1e-6 = 1e-3 x lr
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=6),
    dict(type='CosineAnnealingLR', T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=300),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)
# official: the best checkpoint by top-1 (no EMA)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1, save_best='auto'))
