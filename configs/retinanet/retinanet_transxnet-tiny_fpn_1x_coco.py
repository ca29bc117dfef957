# Official: box 43.1 mAP.
_base_ = './_base_/retinanet_transxnet_fpn_1x_coco.py'
