# TransNeXt-Small on ImageNet-1K at 224: official 49.7M parameters, top-1 84.7
# (classification/configs/transnext_small.py: drop_path 0.45). Official weights:
# huggingface.co/DaiShiResearch/transnext-small-224-1k, transnext_small_224_1k.pth; they load as
# they are (load_from, testing a checkpoint, the inferencers).
_base_ = './_base_/transnext_in1k.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.45),
    head=dict(in_channels=576))
