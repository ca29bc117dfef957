# Official: 54.1 mIoU (single scale), 69.0M parameters.
_base_ = './_base_/mask2former_transnext_160k_ade20k-512x512.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint=checkpoint_file)))
