# TransXNet-T on ImageNet-1K at 224: official 12.8M parameters, top-1 81.6
# (scripts/train_tiny.sh: drop_path 0.1, EMA decay 0.9998). Official weights: the v1.0 release
# of github.com/LMMMEng/TransXNet, transx-t.pth.tar; they load as they are (load_from,
# testing a checkpoint, the inferencers).
_base_ = './_base_/transxnet_in1k.py'

model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.1),
    head=dict(in_channels=448))
custom_hooks = [
    dict(type='EMAHook', momentum=2e-4, update_buffers=True, priority='ABOVE_NORMAL')
]
