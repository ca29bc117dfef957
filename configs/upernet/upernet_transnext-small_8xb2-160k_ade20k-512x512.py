# Official: 52.2 mIoU single-scale (sliding window), 80M parameters. The ms configs evaluate
# the checkpoint trained with this config.
_base_ = './_base_/upernet_transnext_160k_ade20k-512x512.py'
checkpoint_file = 'https://huggingface.co/DaiShiResearch/transnext-small-224-1k/resolve/main/transnext_small_224_1k.pth?download=true'  # noqa: E501
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint=checkpoint_file)))
