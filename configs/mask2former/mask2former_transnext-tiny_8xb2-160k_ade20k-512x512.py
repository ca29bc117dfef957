# Official: 53.4 mIoU (single scale), 47.5M parameters.
_base_ = './_base_/mask2former_transnext_160k_ade20k-512x512.py'
