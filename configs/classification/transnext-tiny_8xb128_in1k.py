# TransNeXt-Tiny on ImageNet-1K at 224: official 28.2M parameters, top-1 84.0
# (classification/configs/transnext_tiny.py: drop_path 0.25). Official weights:
# huggingface.co/DaiShiResearch/transnext-tiny-224-1k, transnext_tiny_224_1k.pth; they load as
# they are (load_from, testing a checkpoint, the inferencers).
_base_ = './_base_/transnext_in1k.py'

model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.25),
    head=dict(in_channels=576))
