# Official: 52.2 mIoU single-scale (sliding window), 80M parameters. The ms configs evaluate
# the checkpoint trained with this config.
_base_ = './_base_/upernet_transnext_160k_ade20k-512x512.py'
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/transnext_small_224_1k.pth')))
