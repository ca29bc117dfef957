# Official: box 49.9 / mask 44.6 mAP, 47.9M parameters.
_base_ = './_base_/mask-rcnn_transnext_fpn_1x_coco.py'
