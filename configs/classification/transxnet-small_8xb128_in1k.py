# TransXNet-S on ImageNet-1K at 224: official 26.9M parameters, top-1 83.8
# (scripts/train_small.sh: drop_path 0.2, EMA decay 0.99985). Official weights: the v1.0 release
# of github.com/LMMMEng/TransXNet, transx-s.pth.tar; they load as they are (load_from,
# testing a checkpoint, the inferencers).
_base_ = './_base_/transxnet_in1k.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2),
    head=dict(in_channels=512))
custom_hooks = [
    dict(type='EMAHook', momentum=1.5e-4, update_buffers=True, priority='ABOVE_NORMAL')
]
