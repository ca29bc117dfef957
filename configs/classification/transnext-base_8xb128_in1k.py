# TransNeXt-Base on ImageNet-1K at 224: official 89.7M parameters, top-1 84.8
# (classification/configs/transnext_base.py: drop_path 0.60). Official weights:
# huggingface.co/DaiShiResearch/transnext-base-224-1k, transnext_base_224_1k.pth; they load as
# they are (load_from, testing a checkpoint, the inferencers).
_base_ = './_base_/transnext_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6),
    head=dict(in_channels=768))
