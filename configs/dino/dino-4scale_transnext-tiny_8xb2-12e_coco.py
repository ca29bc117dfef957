# Official: 55.1 box mAP, 47.8M parameters. Stages 2-4 + one extra level.
# 8xb2: 8 GPUs x 1 image x 2 accumulated steps.
_base_ = './_base_/dino-5scale_transnext_12e_coco.py'
model = dict(
    num_feature_levels=4,
    backbone=dict(out_indices=(1, 2, 3)),
    neck=dict(in_channels=[144, 288, 576], num_outs=4),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=4))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=4))))
