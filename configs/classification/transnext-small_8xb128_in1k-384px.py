# TransNeXt-Small fine-tuned on ImageNet-1K at 384 from its 224 weights: official 49.7M parameters,
# top-1 86.0 (classification/configs/finetune/transnext_small_384_ft.py). Official weights:
# huggingface.co/DaiShiResearch/transnext-small-384-1k-ft-1k, transnext_small_384_1k_ft_1k.pth.
_base_ = './_base_/transnext_in1k-384px.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.7),
    head=dict(in_channels=576))
# The official 224 weights: huggingface.co/DaiShiResearch/transnext-small-224-1k
load_from = 'https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth?download=true'  # noqa: E501
