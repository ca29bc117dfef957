# TransXNet-B on ImageNet-1K at 224: official 48.0M parameters, top-1 84.6
# (scripts/train_base.sh: drop_path 0.4, EMA decay 0.99985). Official weights: the v1.0 release
# of github.com/LMMMEng/TransXNet, transx-b.pth.tar; they load as they are (load_from,
# testing a checkpoint, the inferencers).
_base_ = './_base_/transxnet_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4),
    head=dict(in_channels=672))
custom_hooks = [
    dict(type='EMAHook', momentum=1.5e-4, update_buffers=True, priority='ABOVE_NORMAL')
]

# crop_pct 0.95: short side to floor(224 / 0.95) = 235
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=235, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
