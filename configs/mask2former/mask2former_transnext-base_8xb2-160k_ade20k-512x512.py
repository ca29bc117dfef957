# Official: 54.7 mIoU (single scale), 109M parameters.
_base_ = './_base_/mask2former_transnext_160k_ade20k-512x512.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-base-224-1k/resolve/main/transnext_base_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
