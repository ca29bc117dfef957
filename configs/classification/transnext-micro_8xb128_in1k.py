# TransNeXt-Micro on ImageNet-1K at 224: official 12.8M parameters, top-1 82.5
# (classification/configs/transnext_micro.py: drop_path 0.15). Official weights:
# huggingface.co/DaiShiResearch/transnext-micro-224-1k, transnext_micro_224_1k.pth; they load as
# they are (load_from, testing a checkpoint, the inferencers).
_base_ = './_base_/transnext_in1k.py'

model = dict(
    backbone=dict(arch='micro', drop_path_rate=0.15),
    head=dict(in_channels=384))
