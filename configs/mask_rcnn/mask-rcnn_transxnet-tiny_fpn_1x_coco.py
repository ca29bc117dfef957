# Official: box 44.5 / mask 40.7 mAP.
_base_ = './_base_/mask-rcnn_transxnet_fpn_1x_coco.py'
