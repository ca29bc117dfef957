# Official: 55.7 box mAP, 48.1M parameters. 8xb2: 8 GPUs x 1 image x 2 accumulated steps.
_base_ = './_base_/dino-5scale_transnext_12e_coco.py'
