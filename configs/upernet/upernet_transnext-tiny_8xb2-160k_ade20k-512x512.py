# Official: 51.1 mIoU single-scale (sliding window), 59M parameters. The ms configs evaluate
# the checkpoint trained with this config.
_base_ = './_base_/upernet_transnext_160k_ade20k-512x512.py'
