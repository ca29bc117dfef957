# Official: 45.5 mIoU (single scale).
_base_ = './_base_/fpn_transxnet_80k_ade20k-512x512.py'
